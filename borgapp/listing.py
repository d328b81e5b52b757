"""Queries over archive contents and diffs, shared by the API, the admin and the CLI. The rows
were read from borg once by a `contents` or `diff` job; these only read the database."""

from django.db.models import Q

from borgapp import validation
from borgapp.models import Archive, ArchiveDiff, ArchiveDiffItem


def under_path(items, path: str):
    """Items at `path` or below it. A range on the path column, not LIKE: SQLite's LIKE
    ignores case, and a range uses the (archive, path) index."""
    path = (path or "").strip("/")
    if not path:
        return items
    path = validation.validate_archive_path(path)
    # '/' is followed by '0' in code-point order, so [p + '/', p + '0') is everything below p.
    return items.filter(Q(path=path) | Q(path__gte=path + "/", path__lt=path + "0"))


def contents(archive: Archive, *, path: str = "", parent: str | None = None, type: str = ""):
    items = under_path(archive.items.order_by("path"), path)
    if parent is not None:
        items = items.filter(parent=parent.strip("/"))
    if type:
        items = items.filter(type=type)
    return items


def current_diff(archive: Archive, other: Archive) -> ArchiveDiff | None:
    found = ArchiveDiff.objects.filter(archive=archive, other=other).first()
    return found if found is not None and found.is_current else None


def diff_items(diff: ArchiveDiff, *, path: str = "", change: str = ""):
    items = under_path(diff.items.order_by("path"), path)
    if change:
        if change not in ArchiveDiffItem.Change.values:
            raise validation.InvalidInput(
                f"change must be one of: {', '.join(ArchiveDiffItem.Change.values)}."
            )
        items = items.filter(change=change)
    return items
