from borgapp.management.commands._base import repository_command
from borgapp.models import Job

Command = repository_command(
    Job.Kind.INFO,
    "Read the repository's statistics from borg and store them.",
)
