"""The recovery passphrase of export_recovery_kit and import_recovery_kit: the first line of
--passphrase-file, or typed on a terminal (never an argument, never the environment)."""

import getpass
import sys

from django.core.management.base import CommandError

from borgapp.management.commands._base import EXIT_FAILED


def recovery_passphrase(options, *, confirm: bool) -> str:
    path = options.get("passphrase_file")
    if path:
        try:
            with open(path, encoding="utf-8") as handle:
                return handle.readline().removesuffix("\n").removesuffix("\r")
        except (OSError, UnicodeDecodeError) as exc:
            reason = getattr(exc, "strerror", None) or "it is not UTF-8 text"
            raise CommandError(
                f"Cannot read the recovery passphrase file: {reason}.", returncode=EXIT_FAILED
            ) from None
    if not sys.stdin.isatty():
        raise CommandError(
            "A recovery passphrase is needed: give --passphrase-file, or run on a terminal.",
            returncode=EXIT_FAILED,
        )
    passphrase = getpass.getpass("Recovery passphrase: ")
    if confirm and getpass.getpass("The same again: ") != passphrase:
        raise CommandError("The two recovery passphrases differ.", returncode=EXIT_FAILED)
    return passphrase
