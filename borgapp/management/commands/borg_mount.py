from borgapp.management.commands._base import JobCommand
from borgapp.models import Job


class Command(JobCommand):
    help = "Mount a repository or one archive (FUSE) under an allowed mount root."

    def add_arguments(self, parser):
        super().add_arguments(parser)
        parser.add_argument("name", help="repository name")
        parser.add_argument("archive", nargs="?", default="")
        parser.add_argument("--mountpoint", required=True)

    def start(self, options, echo):
        params = {"archive": options["archive"], "mountpoint": options["mountpoint"]}
        return self.run_kind(Job.Kind.MOUNT, options["name"], params, echo)
