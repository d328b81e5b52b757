import json

from django.core.management.base import BaseCommand, CommandError

from borgapp.management.commands._base import EXIT_FAILED
from borgapp.models import Repository
from borgapp.units import human_bytes


def archive_row(archive) -> dict:
    return {
        "name": archive.name,
        "id": archive.borg_id,
        "time": archive.start.isoformat() if archive.start else None,
        "end": archive.end.isoformat() if archive.end else None,
        "hostname": archive.hostname,
        "username": archive.username,
        "original_size": archive.original_size,
        "compressed_size": archive.compressed_size,
        "deduplicated_size": archive.deduplicated_size,
        "nfiles": archive.nfiles,
        "checkpoint": archive.is_checkpoint,
    }


class Command(BaseCommand):
    help = "List a repository's archives from the catalog (no borg call; see borg_sync)."
    requires_system_checks = []

    def add_arguments(self, parser):
        parser.add_argument("name", help="repository name")
        parser.add_argument("--json", action="store_true")
        parser.add_argument("--prefix", default="", help="only archives starting with this")
        parser.add_argument("--checkpoints", action="store_true", help="include checkpoints")

    def handle(self, *args, **options):
        repo = Repository.objects.filter(name=options["name"]).first()
        if repo is None:
            raise CommandError(f"No repository named {options['name']!r}.", returncode=EXIT_FAILED)
        archives = repo.archives.order_by("start", "id")
        if not options["checkpoints"]:
            archives = archives.filter(is_checkpoint=False)
        if options["prefix"]:
            archives = archives.filter(name__startswith=options["prefix"])
        rows = [archive_row(a) for a in archives]
        if options["json"]:
            self.stdout.write(json.dumps(rows, indent=2))
            return
        for row in rows:
            size = human_bytes(row["original_size"])
            mark = " (checkpoint)" if row["checkpoint"] else ""
            self.stdout.write(f"{row['name']:<45} {row['time'] or '-':<33} {size}{mark}")
