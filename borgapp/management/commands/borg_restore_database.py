from borgapp.management.commands._base import JobCommand
from borgapp.models import DatabaseSource, Job


class Command(JobCommand):
    help = (
        "Restore a database from an archive into its server (streamed from borg, no copy on "
        "disk). Refuses a database that holds tables unless --force."
    )

    def add_arguments(self, parser):
        super().add_arguments(parser)
        parser.add_argument("name", help="repository name")
        parser.add_argument("archive")
        parser.add_argument("database", help="SOURCE/DATABASE, as the backup's result lists it")
        parser.add_argument(
            "--into", default="", help="another database name (for SQLite: a file's path)"
        )
        parser.add_argument(
            "--force", action="store_true", help="replace what the target database holds"
        )

    def start(self, options, echo):
        params = {key: options[key] for key in ("archive", "database", "into", "force")}
        name = str(options["database"]).split("/")[0]
        source = DatabaseSource.objects.filter(name=name).select_related("agent_host").first()
        if source is not None and source.agent_host is not None:  # its host's agent restores it
            return self.run_on_host(Job.Kind.RESTORE_DATABASE, options["name"], params,
                                    source.agent_host.name)  # fmt: skip
        return self.run_kind(Job.Kind.RESTORE_DATABASE, options["name"], params, echo)
