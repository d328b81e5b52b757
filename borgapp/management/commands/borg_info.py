from borgapp.management.commands._base import JobCommand
from borgapp.models import Job


class Command(JobCommand):
    help = "Read the repository's statistics from borg and store them."

    def add_arguments(self, parser):
        super().add_arguments(parser)
        parser.add_argument("name", help="repository name")

    def start(self, options, echo):
        return self.run_kind(Job.Kind.INFO, options["name"], {}, echo)
