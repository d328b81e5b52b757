from borgapp import audit, fileindex, filesearch, listing
from borgapp.management.commands._listing import ListingCommand
from borgapp.models import Job


class Command(ListingCommand):
    help = "List the files in an archive (read from borg once, then from the database)."
    kind = Job.Kind.CONTENTS

    def add_arguments(self, parser):
        super().add_arguments(parser)
        parser.add_argument("--children", action="store_true", help="only the direct children")

    def start(self, options, echo):
        archive = self.archive(options)
        if not archive.contents_ready and not fileindex.is_indexed(archive):
            self.load(options, {"archive": archive.name}, echo)
        return None

    def rows(self, options):
        archive = self.archive(options)
        parent = options["path"].strip("/") if options["children"] else None
        path = "" if options["children"] else options["path"]
        if fileindex.is_indexed(archive):  # from the file index, in the order borg listed
            found = filesearch.archive_items(archive, path=path, parent=parent)
            return [row for chunk in _pages(found) for row in filesearch.item_rows(chunk)]
        items = listing.contents(archive, path=path, parent=parent)
        return list(
            items.values("path", "type", "mode", "user", "group", "size", "mtime", "linktarget")
        )

    def audit(self, options) -> None:
        where = {"path": options["path"], "children": options["children"]}
        audit.browsed(self.archive(options), **where)

    def line(self, row) -> str:
        size = "" if row["size"] is None else str(row["size"])
        link = f" -> {row['linktarget']}" if row["linktarget"] else ""
        return f"{row['mode']:<10} {row['user']:<8} {size:>12}  {row['path']}{link}"


def _pages(versions, size: int = 5000):
    """The versions a page at a time (paths are looked up per page)."""
    start = 0
    while page := list(versions[start : start + size]):
        yield page
        start += size
