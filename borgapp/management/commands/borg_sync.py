from borgapp.management.commands._base import JobCommand
from borgapp.models import Job


class Command(JobCommand):
    help = "Make the archive catalog equal to `borg list` and refresh repository statistics."

    def add_arguments(self, parser):
        super().add_arguments(parser)
        parser.add_argument("name", help="repository name")

    def start(self, options, echo):
        return self.run_kind(Job.Kind.SYNC, options["name"], {}, echo)
