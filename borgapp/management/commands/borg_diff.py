from borgapp import audit, filediff, listing
from borgapp.management.commands._listing import ListingCommand
from borgapp.models import Job


class Command(ListingCommand):
    help = "Show what changed between two archives of one repository."
    kind = Job.Kind.DIFF

    def add_arguments(self, parser):
        super().add_arguments(parser)
        parser.add_argument(
            "other", help="the archive to compare with; it always reads from the older to the newer"
        )
        parser.add_argument("--change", default="", help="added, removed, modified or metadata")

    def start(self, options, echo):
        archive, other = self.archive(options), self.archive(options, "other")
        indexed = filediff.compare(archive, other) is not None
        if not indexed and listing.current_diff(archive, other) is None:
            self.load(options, {"archive": archive.name, "other": other.name}, echo)
        return None

    def rows(self, options):
        archive, other = self.archive(options), self.archive(options, "other")
        found = filediff.compare(archive, other, path=options["path"], change=options["change"])
        if found is not None:  # both in the file index
            return [{"path": row.path, "change": row.change, "changes": row.changes}
                    for row in found]  # fmt: skip
        diff = listing.current_diff(archive, other)
        items = listing.diff_items(diff, path=options["path"], change=options["change"])
        return list(items.values("path", "change", "changes"))

    def audit(self, options) -> None:
        other = self.archive(options, "other")
        audit.browsed(self.archive(options), other=other, path=options["path"])

    def line(self, row) -> str:
        return f"{row['change']:<9} {row['path']}"
