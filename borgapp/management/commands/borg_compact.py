from borgapp.management.commands._base import repository_command
from borgapp.models import Job

Command = repository_command(
    Job.Kind.COMPACT,
    "Free the space of deleted archives (borg compact).",
)
