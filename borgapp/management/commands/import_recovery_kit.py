import json
import sys

from django.core.management.base import BaseCommand, CommandError

from borgapp import recovery
from borgapp.management.commands._base import EXIT_FAILED, EXIT_WARNING
from borgapp.management.commands._kit import recovery_passphrase


class Command(BaseCommand):
    help = (
        "Register every repository of a recovery kit again (a fresh install after a disaster), "
        "with its passphrase and, for keyfile mode, its key. A repository already registered "
        "at the same location is skipped; a name or location taken otherwise is refused."
    )
    requires_system_checks = []

    def add_arguments(self, parser):
        parser.add_argument("kit", help="the recovery kit's file")
        parser.add_argument(
            "--passphrase-file",
            help="read the recovery passphrase from this file's first line (else it is asked "
            "on the terminal)",
        )
        parser.add_argument("--json", action="store_true", help="print a JSON object")

    def handle(self, *args, **options):
        data = read_kit(options["kit"])
        passphrase = recovery_passphrase(options, confirm=False)
        try:
            done = recovery.import_kit(data, passphrase)
        except recovery.KitError as exc:
            raise CommandError(f"{exc} Nothing was changed.", returncode=EXIT_FAILED) from None
        counts = {status: len(recovery.names_with(done, status)) for status in recovery.STATUSES}
        if options["json"]:
            summary = {**counts, "repositories": [item.as_dict() for item in done]}
            self.stdout.write(json.dumps(summary, indent=2))
        else:
            for item in done:
                self.stdout.write(
                    f"{item.status:<10} {item.name} ({item.location}): {item.message}"
                )
            self.stdout.write(", ".join(f"{count} {status}" for status, count in counts.items()))
        if counts["refused"] or counts["failed"]:
            raise CommandError(
                f"{counts['refused'] + counts['failed']} of {len(done)} repositories were not "
                "registered (see above).",
                returncode=EXIT_FAILED,
            )
        if any(item.warning for item in done):
            sys.exit(EXIT_WARNING)


def read_kit(path: str) -> bytes:
    try:
        with open(path, "rb") as handle:
            data = handle.read(recovery.MAX_KIT_BYTES + 1)
    except OSError as exc:
        raise CommandError(
            f"Cannot read the recovery kit: {exc.strerror}.", returncode=EXIT_FAILED
        ) from None
    if len(data) > recovery.MAX_KIT_BYTES:
        raise CommandError("This file is too large to be a recovery kit.", returncode=EXIT_FAILED)
    return data
