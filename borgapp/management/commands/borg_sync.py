from borgapp.management.commands._base import repository_command
from borgapp.models import Job

Command = repository_command(
    Job.Kind.SYNC,
    "Make the archive catalog equal to `borg list` and refresh repository statistics.",
)
