from borgapp.management.commands._base import JobCommand
from borgapp.models import Job


class Command(JobCommand):
    help = "Delete one archive from a repository."

    def add_arguments(self, parser):
        super().add_arguments(parser)
        parser.add_argument("name", help="repository name")
        parser.add_argument("archive")

    def start(self, options, echo):
        return self.run_kind(
            Job.Kind.DELETE, options["name"], {"archive": options["archive"]}, echo
        )
