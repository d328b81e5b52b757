from borgapp import params
from borgapp.management.commands._base import JobCommand
from borgapp.models import Job


class Command(JobCommand):
    help = (
        "Restore a sample of the newest archive of a backup set into a sandbox and compare it "
        "with the archive's checksums and with the source as it is now."
    )

    def add_arguments(self, parser):
        super().add_arguments(parser)
        parser.add_argument("name", help="repository name")
        parser.add_argument("--prefix", required=True, help="the backup set")
        parser.add_argument("--sample-files", type=int, default=20)
        parser.add_argument("--sample-percent", type=int)
        parser.add_argument("--sample-max-bytes", type=int, default=params.SAMPLE_MAX_BYTES)
        parser.add_argument(
            "--host", help="a host of the fleet: its agent verifies against the files there "
            "(this command waits for it)",
        )  # fmt: skip

    def start(self, options, echo):
        params = {
            "prefix": options["prefix"],
            "sample_files": options["sample_files"],
            "sample_percent": options["sample_percent"],
            "sample_max_bytes": options["sample_max_bytes"],
        }
        if options["host"]:
            return self.run_on_host(Job.Kind.VERIFY_RESTORE, options["name"], params,
                                    options["host"])  # fmt: skip
        return self.run_kind(Job.Kind.VERIFY_RESTORE, options["name"], params, echo)
