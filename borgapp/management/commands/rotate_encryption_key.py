import json

from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from borgapp import vault
from borgapp.management.commands._base import EXIT_FAILED
from borgapp.models import Channel, Repository, Schedule

# Every encrypted column: a new one must be added here.
ENCRYPTED = [
    (Repository, ("passphrase_encrypted", "new_passphrase_encrypted")),
    (Channel, ("secret_encrypted", "target_encrypted")),
    (Schedule, ("ping_start_encrypted", "ping_success_encrypted", "ping_failure_encrypted")),
]


class Command(BaseCommand):
    help = (
        "Re-encrypt every stored secret (passphrases, channel secrets and URLs, ping URLs) "
        "under the first key of BORG_ENCRYPTION_KEY. "
        "Put the new key first, keep the old one after it, run this, then drop the old key."
    )
    requires_system_checks = []

    def add_arguments(self, parser):
        parser.add_argument("--json", action="store_true")

    def handle(self, *args, **options):
        counts = {}
        try:
            with transaction.atomic():
                for model, fields in ENCRYPTED:
                    counts[model] = 0
                    for pk, *tokens in model.objects.select_for_update().values_list("pk", *fields):
                        changed = {
                            field: vault.rotate(token)
                            for field, token in zip(fields, tokens, strict=True)
                            if token
                        }
                        if changed:
                            model.objects.filter(pk=pk).update(**changed)
                            counts[model] += 1
        except vault.VaultError as exc:
            raise CommandError(f"{exc} Nothing was changed.", returncode=EXIT_FAILED) from None
        if options["json"]:
            self.stdout.write(json.dumps({"rotated": sum(counts.values())}))  # rows
        else:
            self.stdout.write(
                f"Re-encrypted the secrets of {counts[Repository]} repositories, "
                f"{counts[Channel]} channels and {counts[Schedule]} schedules."
            )
