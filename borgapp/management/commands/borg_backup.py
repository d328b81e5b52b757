import time

from django.core.management.base import CommandError

from borgapp import intake, jobs, params
from borgapp.management.commands._base import EXIT_FAILED, JobCommand
from borgapp.models import Host, Job


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
            return self.on_host(options["host"], options["name"], params)
        return self.run_kind(Job.Kind.BACKUP, options["name"], params, echo)

    def on_host(self, host_name: str, name: str, params: dict) -> Job:
        host = Host.objects.filter(name=host_name).first()
        if host is None:
            raise CommandError(f"No host named {host_name!r}.", returncode=EXIT_FAILED)
        job = intake.start(
            Job.Kind.BACKUP, self.repository(name), params, trigger=Job.Trigger.CLI, host=host
        )
        try:
            while not job.is_finished:
                time.sleep(0.5)
                job.refresh_from_db()
        except KeyboardInterrupt:
            jobs.cancel(job)
            raise
        return job
