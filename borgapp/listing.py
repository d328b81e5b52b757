"""Archive contents and diffs as stored rows: the queries the API, the admin and the CLI
serve them with (the rows were read from borg once by a `contents` or `diff` job), and the
bound on how many rows all stored listings may hold together (LISTING_MAX_ROWS): a listing
being loaded makes room by evicting older ones, which can be read again."""

import json
import posixpath

from django.conf import settings
from django.db.models import Q, Sum

from borgapp import catalog, validation
from borgapp.errors import OperationError
from borgapp.models import Archive, ArchiveDiff, ArchiveDiffItem, ArchiveItem
from borgapp.units import human_bytes


class ListingTooLarge(Exception):
    """One listing alone has more rows than every listing together may hold."""


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


def in_order(one: Archive, two: Archive) -> tuple[Archive, Archive]:
    """The two archives of a comparison as (older, newer): a diff always reads from the older
    to the newer, whichever archive it was opened from, so "added" means what it says, and
    either direction finds the one stored comparison."""

    def key(archive):
        return (archive.start is None, archive.start, archive.pk)

    return (one, two) if key(one) <= key(two) else (two, one)


def current_diff(archive: Archive, other: Archive) -> ArchiveDiff | None:
    older, newer = in_order(archive, other)
    found = ArchiveDiff.objects.filter(archive=older, other=newer).first()
    return found if found is not None and found.is_current else None


def describe(changes: list[dict]) -> list[str]:
    """borg's change records of one path (`borg diff --json-lines`) in words: size, mode,
    owner and times, old → new. ctime alone is left out (it moves with any change)."""
    words = []
    for change in changes:
        kind = str(change.get("type", ""))
        if kind == "modified" and "new_size" in change:  # from the file index: no chunks
            words.append(f"content: {human_bytes(change.get('old_size') or 0)} → "
                         f"{human_bytes(change.get('new_size') or 0)}")  # fmt: skip
        elif kind == "modified":
            words.append(f"content: +{human_bytes(change.get('added') or 0)} "
                         f"−{human_bytes(change.get('removed') or 0)}")  # fmt: skip
        elif kind in ("added", "removed") and change.get("size") is not None:
            words.append(f"{kind} {human_bytes(change['size'])}")
        elif kind == "mode":
            words.append(f"mode {change.get('old_mode')} → {change.get('new_mode')}")
        elif kind == "owner":
            old = f"{change.get('old_user')}:{change.get('old_group')}"
            new = f"{change.get('new_user')}:{change.get('new_group')}"
            words.append(f"owner {old} → {new}")
        elif kind == "mtime":
            words.append(f"modified {_moment(change.get('old_mtime'))} → "
                         f"{_moment(change.get('new_mtime'))}")  # fmt: skip
        elif kind != "ctime":
            words.append(kind.replace("_", " "))
    return words


def _moment(value) -> str:
    when = catalog.parse_time(value)
    return when.strftime("%Y-%m-%d %H:%M:%S UTC") if when else "?"


def diff_items(diff: ArchiveDiff, *, path: str = "", change: str = ""):
    items = under_path(diff.items.order_by("path"), path)
    if change:
        if change not in ArchiveDiffItem.Change.values:
            raise validation.InvalidInput(
                f"change must be one of: {', '.join(ArchiveDiffItem.Change.values)}."
            )
        items = items.filter(change=change)
    return items


# --- the storage bound ------------------------------------------------------------------------


def stored_rows(*, archive: Archive | None = None, diff: ArchiveDiff | None = None) -> int:
    """Rows all complete listings hold, but for the one being loaded (`archive` or `diff`)."""
    contents = Archive.objects.filter(contents_count__isnull=False)
    diffs = ArchiveDiff.objects.all()
    if archive is not None:
        contents = contents.exclude(pk=archive.pk)
    if diff is not None:
        diffs = diffs.exclude(pk=diff.pk)
    items = contents.aggregate(n=Sum("contents_count"))["n"] or 0
    return items + (diffs.aggregate(n=Sum("count"))["n"] or 0)


def forget_contents(archive_id: int) -> None:
    ArchiveItem.objects.filter(archive_id=archive_id).delete()
    Archive.objects.filter(pk=archive_id).update(
        contents_borg_id="", contents_count=None, contents_tops=[]
    )


def _evictable(archive, diff):
    """The stored listing to evict first, other than the one being loaded: diffs before
    contents (a diff serves one comparison, and pairs multiply), each the oldest first (the
    contents whose rows were written first hold the lowest ids)."""
    diffs = ArchiveDiff.objects.exclude(pk=diff.pk) if diff is not None else ArchiveDiff.objects
    oldest_diff = diffs.order_by("created_at", "pk").first()
    if oldest_diff is not None:
        return oldest_diff
    items = ArchiveItem.objects.all()
    if archive is not None:
        items = items.exclude(archive_id=archive.pk)
    archive_id = items.order_by("pk").values_list("archive_id", flat=True).first()
    return Archive.objects.filter(pk=archive_id).first() if archive_id is not None else None


def make_room(total: int, *, archive: Archive | None = None, diff=None) -> int:
    """Let the listing being loaded hold `total` rows: evict other listings (`_evictable`)
    until it fits under LISTING_MAX_ROWS. Returns the rows it may then hold in all."""
    bound = settings.LISTING_MAX_ROWS
    if total > bound:
        raise ListingTooLarge(
            f"This listing has more than {bound:,} entries, the most all stored file listings "
            "may hold together (OPSCENTER_LISTING_MAX_ROWS): an admin can raise that bound."
        )
    used = stored_rows(archive=archive, diff=diff)
    while used + total > bound:
        oldest = _evictable(archive, diff)
        if oldest is None:
            break
        if isinstance(oldest, ArchiveDiff):
            used -= oldest.count
            oldest.delete()
        else:
            used -= oldest.contents_count or 0
            forget_contents(oldest.pk)
    return bound - used


def usage() -> dict:
    """How full the listings' store is, for the dashboard and /metrics."""
    return {"rows": stored_rows(), "max_rows": settings.LISTING_MAX_ROWS}


# --- loading a listing from borg's lines ---------------------------------------------------

ITEM_BATCH = 2000


class Loader:
    """Collects parsed rows from a streamed borg listing and writes them in bulk, so an
    archive of millions of files never sits in memory. `make_room(total)` keeps the rows
    of every stored listing under their bound (it evicts old listings, or raises)."""

    def __init__(self, progress, model, parse, make_room):
        self.progress, self.model, self.parse = progress, model, parse
        self.rows: list = []
        self.count = 0
        self.make_room = make_room
        self.room = make_room(0)

    def __call__(self, raw: bytes) -> None:
        line = raw.strip()
        if not line:
            return
        try:
            data = json.loads(line)
        except json.JSONDecodeError:
            raise OperationError("borg printed a line that is not JSON.") from None
        self.rows.append(self.parse(data))
        if len(self.rows) >= ITEM_BATCH:
            self.flush()

    def flush(self) -> None:
        if self.rows:
            if self.count + len(self.rows) > self.room:
                self.room = self.make_room(self.count + len(self.rows))
                if self.count + len(self.rows) > self.room:
                    raise ListingTooLarge(
                        "The file listings stored already fill the bound "
                        f"(OPSCENTER_LISTING_MAX_ROWS, {settings.LISTING_MAX_ROWS:,} entries) "
                        "and none can be evicted now: try again later, or raise the bound."
                    )
            self.model.objects.bulk_create(self.rows, batch_size=ITEM_BATCH)
            self.count += len(self.rows)
            self.rows = []
            if self.progress:
                self.progress.fields["progress_files"] = self.count
                self.progress.flush()


TOPS_MAX = 1000  # more loose items than this: not a list of sources, stop collecting


class ItemRows:
    """Parses `borg list --json-lines` lines into ArchiveItem rows and notes the tops: items
    whose folder borg did not store. borg lists a folder before what it holds, depth first,
    so the chain of open folders is a stack and the check costs nothing per item."""

    def __init__(self, archive: Archive):
        self.archive = archive
        self.open: list[str] = []  # the stored folders that contain the current item
        self.tops: list[str] = []

    def __call__(self, data: dict) -> ArchiveItem:
        path = str(data.get("path", ""))
        parent = posixpath.dirname(path)
        while self.open and not path.startswith(self.open[-1] + "/"):
            self.open.pop()
        if parent and (not self.open or self.open[-1] != parent) and len(self.tops) < TOPS_MAX:
            self.tops.append(path)
        if data.get("type") == "d":
            self.open.append(path)
        return ArchiveItem(
            archive=self.archive,
            path=path,
            parent=parent,
            type=str(data.get("type", ""))[:1],
            mode=str(data.get("mode", ""))[:10],
            user=str(data.get("user") or data.get("uid") or "")[:255],
            group=str(data.get("group") or data.get("gid") or "")[:255],
            size=data.get("size"),
            mtime=catalog.parse_time(data.get("mtime")),
            linktarget=str(data.get("linktarget") or data.get("source") or ""),
            healthy=bool(data.get("healthy", True)),
        )


def folder_children(archive: Archive, folder: str) -> list[str]:
    """The folders directly in `folder` that only the tops imply (borg stored no item for
    them): what the tree shows so that every stored item can be reached from the root."""
    prefix = f"{folder}/" if folder else ""
    names = {
        top[len(prefix) :].split("/", 1)[0]
        for top in archive.contents_tops
        if top.startswith(prefix) and "/" in top[len(prefix) :]
    }
    paths = [f"{prefix}{name}" for name in sorted(names)]
    stored = set(archive.items.filter(path__in=paths).values_list("path", flat=True))
    return [path for path in paths if path not in stored]
