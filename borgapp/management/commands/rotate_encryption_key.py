import json

from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from borgapp import vault
from borgapp.management.commands._base import EXIT_FAILED
from borgapp.models import Repository


class Command(BaseCommand):
    help = (
        "Re-encrypt every stored passphrase under the first key of BORG_ENCRYPTION_KEY. "
        "Put the new key first, keep the old one after it, run this, then drop the old key."
    )
    requires_system_checks = []

    def add_arguments(self, parser):
        parser.add_argument("--json", action="store_true")

    def handle(self, *args, **options):
        rotated = 0
        try:
            with transaction.atomic():
                for repo in Repository.objects.select_for_update():
                    changed = {}
                    for field in ("passphrase_encrypted", "new_passphrase_encrypted"):
                        token = getattr(repo, field)
                        if token:
                            changed[field] = vault.rotate(token)
                    if changed:
                        Repository.objects.filter(pk=repo.pk).update(**changed)
                        rotated += 1
        except vault.VaultError as exc:
            raise CommandError(f"{exc} Nothing was changed.", returncode=EXIT_FAILED) from None
        if options["json"]:
            self.stdout.write(json.dumps({"rotated": rotated}))
        else:
            self.stdout.write(f"Re-encrypted the passphrases of {rotated} repositories.")
