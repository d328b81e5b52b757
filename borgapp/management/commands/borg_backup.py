from borgapp import params
from borgapp.management.commands._base import JobCommand
from borgapp.models import Job


class Command(JobCommand):
    help = "Back up source paths into a new archive named PREFIX-<UTC time>."

    def add_arguments(self, parser):
        super().add_arguments(parser)
        parser.add_argument("name", help="repository name")
        parser.add_argument("--source", action="append", default=[], dest="sources")
        parser.add_argument(
            "--database", action="append", default=[], dest="databases", metavar="SOURCE",
            help="a database source to dump into the archive (see borg_database); repeatable",
        )  # fmt: skip
        parser.add_argument("--exclude", action="append", default=[], dest="excludes")
        parser.add_argument("--prefix", default="backup")
        parser.add_argument("--compression", default=params.COMPRESSION)
        parser.add_argument("--comment", default="")
        parser.add_argument("--one-file-system", action="store_true")
        parser.add_argument("--checkpoint-interval", type=int)
        parser.add_argument(
            "--host", help="a host of the fleet: its agent backs up the sources there (this "
            "command waits for it)",
        )  # fmt: skip

    def start(self, options, echo):
        params = {
            key: options[key]
            for key in (
                "sources",
                "excludes",
                "prefix",
                "compression",
                "comment",
                "one_file_system",
                "checkpoint_interval",
                "databases",
            )
        }
        if options["host"]:
            return self.run_on_host(Job.Kind.BACKUP, options["name"], params, options["host"])
        return self.run_kind(Job.Kind.BACKUP, options["name"], params, echo)
