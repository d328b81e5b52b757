"""manage.py borg_history REPOSITORY PATH: every version of one path in the archives."""

import json
import sys

from django.core.management.base import BaseCommand, CommandError

from borgapp import filesearch, validation
from borgapp.management.commands._base import EXIT_FAILED
from borgapp.management.commands.borg_find import lag_note, version_line
from borgapp.models import Repository


class Command(BaseCommand):
    help = (
        "Every version of one path in a repository's indexed archives, oldest first, with "
        "the archives holding each. Exit 0 when it has versions, 1 when none, 2 on an error."
    )
    requires_system_checks = []

    def add_arguments(self, parser):
        parser.add_argument("repository")
        parser.add_argument("path", help="as in the archive (no leading /)")
        parser.add_argument("--json", action="store_true")

    def handle(self, *args, **options):
        repository = Repository.objects.filter(name=options["repository"]).first()
        if repository is None:
            raise CommandError(f"No repository named {options['repository']!r}.",
                               returncode=EXIT_FAILED)  # fmt: skip
        try:
            found = filesearch.history(repository, options["path"])
        except validation.InvalidInput as exc:
            raise CommandError(str(exc), returncode=EXIT_FAILED) from None
        if options["json"]:
            self.stdout.write(json.dumps(found, indent=2))
        elif found["versions"]:
            self.stdout.write(f"{found['path']}: {len(found['versions'])} version(s)")
            for version in found["versions"]:
                self.stdout.write(version_line(version))
        else:
            self.stderr.write(f"{found['path']} is in no indexed archive of {repository.name}.")
        note = lag_note(found["index"])
        if note:
            self.stderr.write(note)
        sys.exit(0 if found["versions"] else 1)
