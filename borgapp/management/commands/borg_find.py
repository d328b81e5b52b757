"""manage.py borg_find [REPOSITORY] PATTERN: find files in every indexed archive."""

import json
import sys

from django.core.management.base import BaseCommand, CommandError

from borgapp import filesearch, validation
from borgapp.management.commands._base import EXIT_FAILED
from borgapp.models import Repository
from borgapp.units import human_bytes


def lag_note(index: dict) -> str | None:
    """What a lagging index means for the answer, or None when it is complete."""
    if index["behind"]:
        return (f"note: {index['behind']} of {index['archives']} archives are not indexed yet; "
                "what they hold is not in this answer.")  # fmt: skip
    return None


def version_line(version: dict) -> str:
    size = human_bytes(version["size"]) if version["size"] is not None else "–"
    names = [a["name"] for a in version["archives"]]
    more = version["archive_count"] - len(names)
    held = ", ".join(names) + (f" and {more} more" if more > 0 else "")
    when = (version["modified"] or "?")[:19].replace("T", " ")
    return (f"  {version['type']:<6} {size:>10}  modified {when} UTC  in "
            f"{version['archive_count']} archive(s): {held}")  # fmt: skip


class Command(BaseCommand):
    help = (
        "Find files in the archives' file index: a name or path fragment, a glob (quote it) or "
        "a folder ending in /. Exit 0 when something was found, 1 when nothing, 2 on an error."
    )
    requires_system_checks = []

    def add_arguments(self, parser):
        parser.add_argument("words", nargs="+", metavar="[REPOSITORY] PATTERN")
        parser.add_argument("--type", help="file, folder or link")
        for name in ("min-size", "max-size"):
            parser.add_argument(f"--{name}", help="bytes")
        for name in ("modified-after", "modified-before", "archived-after", "archived-before"):
            parser.add_argument(f"--{name}", help="a date or time, e.g. 2026-03-01")
        parser.add_argument("--limit", help="paths shown (1-1000, default 100)")
        parser.add_argument("--json", action="store_true")

    def handle(self, *args, **options):
        words = options["words"]
        if len(words) > 2:
            raise CommandError("Give at most a repository and a pattern (quote a glob).",
                               returncode=EXIT_FAILED)  # fmt: skip
        repository = None
        if len(words) == 2:
            repository = Repository.objects.filter(name=words[0]).first()
            if repository is None:
                raise CommandError(f"No repository named {words[0]!r}.", returncode=EXIT_FAILED)
        query = {key.replace("-", "_"): options[key.replace("-", "_")] for key in (
            "type", "min_size", "max_size", "modified_after", "modified_before",
            "archived_after", "archived_before", "limit")}  # fmt: skip
        try:
            found = filesearch.search(words[-1], filesearch.filters_from(query, repository))
        except validation.InvalidInput as exc:
            raise CommandError(str(exc), returncode=EXIT_FAILED) from None
        if options["json"]:
            self.stdout.write(json.dumps(found, indent=2))
        else:
            for hit in found["hits"]:
                self.stdout.write(hit["path"])
                for version in hit["versions"]:
                    self.stdout.write(version_line(version))
            if found["truncated"]:
                self.stderr.write(f"(the first {len(found['hits'])} paths; narrow the search "
                                  "or raise --limit)")  # fmt: skip
        note = lag_note(found["index"])
        if note:
            self.stderr.write(note)
        sys.exit(0 if found["hits"] else 1)
