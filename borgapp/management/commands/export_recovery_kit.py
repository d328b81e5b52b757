import json
import os
import tempfile
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from borgapp import recovery
from borgapp.management.commands._base import EXIT_FAILED
from borgapp.management.commands._kit import recovery_passphrase


class Command(BaseCommand):
    help = (
        "Write a recovery kit: every repository's name, location, encryption mode, passphrase "
        "and borg key, with a recovery sheet for bare borg, in one file (mode 0600) encrypted "
        "with a recovery passphrase. Keep it off this server."
    )
    requires_system_checks = []

    def add_arguments(self, parser):
        parser.add_argument("--output", required=True, help="the kit's file (not overwritten)")
        parser.add_argument("--force", action="store_true", help="overwrite an existing file")
        parser.add_argument(
            "--passphrase-file",
            help="read the recovery passphrase from this file's first line (else it is asked "
            "twice on the terminal)",
        )
        parser.add_argument("--json", action="store_true", help="print a JSON object")

    def handle(self, *args, **options):
        output = Path(options["output"])
        if not output.parent.is_dir():
            raise CommandError(f"{output.parent} is not a directory.", returncode=EXIT_FAILED)
        if output.exists() and not options["force"]:
            raise CommandError(
                f"{output} exists; not overwriting (--force to replace it).",
                returncode=EXIT_FAILED,
            )
        passphrase = recovery_passphrase(options, confirm=True)
        try:
            kit = recovery.export_kit(
                passphrase, deliver=lambda data: write_private(output, data, options["force"])
            )
        except recovery.KitError as exc:
            raise CommandError(str(exc), returncode=EXIT_FAILED) from None
        summary = {
            "output": str(output),
            "bytes": len(kit.data),
            "sha256": kit.sha256,
            "repositories": kit.repositories,
        }
        if options["json"]:
            self.stdout.write(json.dumps(summary, indent=2))
            return
        names = ", ".join(kit.repositories) or "none"
        self.stdout.write(
            f"Wrote the recovery kit {output} ({len(kit.data)} bytes, sha256 {kit.sha256}).\n"
            f"It holds {recovery.how_many(len(kit.repositories))}: {names}.\n"
            "Store it off this server, and the recovery passphrase apart from it."
        )


def write_private(path: Path, data: bytes, replace: bool) -> None:
    """Write the file with mode 0600 from its first byte: a new file, or (replace) a private
    temporary file in the same folder renamed over the old one."""
    try:
        if not replace:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            _write_all(fd, data, path)
            return
        fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=".ockit-")
        _write_all(fd, data, Path(temporary))
        os.replace(temporary, path)
    except OSError as exc:
        raise recovery.KitError(f"Cannot write {path}: {exc.strerror}.") from None


def _write_all(fd: int, data: bytes, path: Path) -> None:
    try:
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), 0o600)
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
    except BaseException:
        path.unlink(missing_ok=True)
        raise
