from borgapp.management.commands._base import JobCommand
from borgapp.models import Job


class Command(JobCommand):
    help = "Free the space of deleted archives (borg compact)."

    def add_arguments(self, parser):
        super().add_arguments(parser)
        parser.add_argument("name", help="repository name")

    def start(self, options, echo):
        return self.run_kind(Job.Kind.COMPACT, options["name"], {}, echo)
