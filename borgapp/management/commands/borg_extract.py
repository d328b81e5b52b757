from borgapp.management.commands._base import JobCommand
from borgapp.models import Job


class Command(JobCommand):
    help = "Restore an archive (or some paths of it) into a new or empty directory."

    def add_arguments(self, parser):
        super().add_arguments(parser)
        parser.add_argument("name", help="repository name")
        parser.add_argument("archive")
        parser.add_argument("paths", nargs="*", help="paths inside the archive (default: all)")
        parser.add_argument("--target", required=True, help="under an allowed restore root")
        parser.add_argument("--strip-components", type=int, default=0)
        parser.add_argument(
            "--host", help="restore on that host of the fleet (its agent; TARGET is there)"
        )

    def start(self, options, echo):
        params = {
            "archive": options["archive"],
            "target": options["target"],
            "paths": options["paths"],
            "strip_components": options["strip_components"],
        }
        if options["host"]:
            return self.run_on_host(Job.Kind.EXTRACT, options["name"], params, options["host"])
        return self.run_kind(Job.Kind.EXTRACT, options["name"], params, echo)
