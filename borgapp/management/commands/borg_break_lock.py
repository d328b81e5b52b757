from borgapp.management.commands._base import JobCommand
from borgapp.models import Job


class Command(JobCommand):
    help = (
        "Remove a stale borg lock. Runs only when no job of this app holds the repository; "
        "make sure no borg on any other machine uses it either."
    )

    def add_arguments(self, parser):
        super().add_arguments(parser)
        parser.add_argument("name", help="repository name")

    def start(self, options, echo):
        return self.run_kind(Job.Kind.BREAK_LOCK, options["name"], {}, echo)
