from borgapp.management.commands._base import repository_command
from borgapp.models import Job

Command = repository_command(
    Job.Kind.BREAK_LOCK,
    "Remove a stale borg lock. Runs only when no job of this app holds the repository; "
    "make sure no borg on any other machine uses it either.",
)
