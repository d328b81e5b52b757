"""Reading the file index (borgapp.fileindex): find files by name, path fragment, glob or
folder across the archives of one repository or all of them, and the history of one path.
Every answer says how far the index is behind borg (archives not indexed yet), so that a
search that finds nothing in them never reads as "not there"."""

import fnmatch
import re
from dataclasses import dataclass
from datetime import UTC, datetime

from django.db.models import F, Q

from borgapp import filenames, validation
from borgapp.fileindex import micros, mode_text, moment
from borgapp.filenames import chunks, node_of, paths_of
from borgapp.models import Archive, IndexedArchive, IndexVersion, Repository

MAX_HITS = 100  # paths in one answer
MAX_ARCHIVES = 50  # archives named per version (the count says how many in all)
MAX_BELOW = 20_000  # paths under a folder looked at for one answer
GLOB_CHARS = re.compile(r"[*?\[]")
TYPES = {"-": "file", "d": "folder", "l": "link", "h": "hardlink", "b": "block device",
         "c": "character device", "p": "pipe", "s": "socket"}  # fmt: skip


@dataclass
class Filters:
    repository: Repository | None = None
    archive: Archive | None = None  # only what this one archive holds
    type: str = ""
    min_size: int | None = None
    max_size: int | None = None
    modified_after: datetime | None = None
    modified_before: datetime | None = None
    archived_after: datetime | None = None
    archived_before: datetime | None = None
    limit: int = MAX_HITS


TYPE_CODES = {"f": "-", "file": "-", "d": "d", "folder": "d", "dir": "d", "l": "l",
              "link": "l", "symlink": "l"}  # fmt: skip


def filters_from(query, repository: Repository | None = None) -> Filters:
    """Filters from a request's or a command line's values (strings), each checked: a bad
    one raises InvalidInput naming it."""
    kind = (query.get("type") or "").strip().lower()
    if kind and kind not in TYPE_CODES:
        raise validation.InvalidInput(f"type must be one of: {', '.join(sorted(TYPE_CODES))}.")
    limit = _number(query.get("limit"), "limit")
    limit = MAX_HITS if limit is None else limit
    if not 1 <= limit <= 1000:
        raise validation.InvalidInput("limit must be between 1 and 1000.")
    return Filters(
        repository=repository, type=TYPE_CODES.get(kind, ""),
        min_size=_number(query.get("min_size"), "min_size"),
        max_size=_number(query.get("max_size"), "max_size"),
        modified_after=_when(query.get("modified_after"), "modified_after"),
        modified_before=_when(query.get("modified_before"), "modified_before"),
        archived_after=_when(query.get("archived_after"), "archived_after"),
        archived_before=_when(query.get("archived_before"), "archived_before"),
        limit=limit,
    )  # fmt: skip


def _number(value, name: str) -> int | None:
    if value in (None, ""):
        return None
    try:
        number = int(str(value))
    except ValueError:
        raise validation.InvalidInput(f"{name} must be a whole number of bytes.") from None
    if not 0 <= number < 2**62:
        raise validation.InvalidInput(f"{name} is out of range.")
    return number


def _when(value, name: str) -> datetime | None:
    """A date (2026-03-01) or a time (2026-03-01T10:00, UTC unless it says otherwise)."""
    if value in (None, ""):
        return None
    text = str(value).strip()
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise validation.InvalidInput(
            f"{name} must be a date or time such as 2026-03-01 or 2026-03-01T10:00."
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    if not 1 <= moment.year <= 9998:
        raise validation.InvalidInput(f"{name} is out of range.")
    return moment


def check_pattern(pattern: str) -> str:
    """A search pattern: a name fragment (`invoice`), a path fragment (`2025/invoice`), a
    glob on names or paths (`invoice-*.pdf`, `srv/*/index.html`), or a folder prefix
    ending in `/` (`srv/www/`)."""
    if not isinstance(pattern, str) or not pattern.strip():
        raise validation.InvalidInput("Give a name, path fragment, glob or folder to search.")
    pattern = pattern.strip()
    if len(pattern) > 1000 or "\x00" in pattern:
        raise validation.InvalidInput("A search pattern is at most 1000 characters, no NUL.")
    depth = 0
    for char in pattern:
        if char == "[":
            depth += 1
        elif char == "]" and depth:
            depth -= 1
    if depth:
        raise validation.InvalidInput(f"The glob {pattern!r} opens a [ it never closes.")
    if pattern.strip("/*?") == "":
        raise validation.InvalidInput(f"The pattern {pattern!r} would match every file.")
    return pattern


def _name_test(pattern: str):
    """What the names a pattern's last part may match hold (a literal part, any case), and
    the test each such name passes (the path is checked after)."""
    tail = pattern.rstrip("/").rsplit("/", 1)[-1]
    if pattern.endswith("/"):  # a folder: its own name
        return tail, lambda name: name == tail
    if GLOB_CHARS.search(tail):
        literal = max(re.split(r"[*?]|\[[^\]]*\]", tail), key=len)
        regex = re.compile(fnmatch.translate(tail), re.DOTALL)
        return literal, lambda name: regex.match(name) is not None
    if "/" in pattern:  # a path fragment: its last part begins a name
        return tail, lambda name: name.startswith(tail)
    folded = tail.lower()
    return tail, lambda name: folded in name.lower()


def _candidates(pattern: str):
    """Numbers of the entries whose name may match, a chunk at a time, read lazily: a broad
    pattern stops being read as soon as the answer has its paths."""
    literal, test = _name_test(pattern)
    for batch in filenames.named(literal, test):
        yield [num for num, _ in batch]


def _path_matches(pattern: str, path: str) -> bool:
    if pattern.endswith("/"):
        return path == pattern.strip("/") or f"/{path}/".endswith(f"/{pattern.strip('/')}/")
    if GLOB_CHARS.search(pattern):
        if "/" not in pattern:
            return True  # a name glob: the name matched already
        return fnmatch.fnmatchcase(path, pattern.strip("/")) or fnmatch.fnmatchcase(
            path, "*/" + pattern.strip("/")
        )
    return "/" not in pattern or pattern in path


def _versions(filters: Filters):
    versions = IndexVersion.objects.all()
    if filters.repository is not None:
        versions = versions.filter(chain__repository=filters.repository)
    if filters.archive is not None:
        indexed = IndexedArchive.objects.filter(archive=filters.archive).first()
        versions = versions.filter(chain_id=indexed.chain_id if indexed else None)
    if filters.type:
        versions = versions.filter(type=filters.type)
    if filters.min_size is not None:
        versions = versions.filter(size__gte=filters.min_size)
    if filters.max_size is not None:
        versions = versions.filter(size__lte=filters.max_size)
    if filters.modified_after is not None:
        versions = versions.filter(mtime__gte=micros(filters.modified_after.isoformat()))
    if filters.modified_before is not None:
        versions = versions.filter(mtime__lt=micros(filters.modified_before.isoformat()))
    return versions


def search(pattern: str, filters: Filters) -> dict:
    """Paths whose name (or path) matches, each with its versions and the archives that
    hold each version; folders (`pattern` ending in `/`) give what is under them. At most
    `filters.limit` paths (`truncated` says there were more)."""
    pattern = check_pattern(pattern)
    versions = _versions(filters)
    hits, chains = [], {}
    for candidates in _candidates(pattern):
        if pattern.endswith("/"):
            candidates = _below(candidates)
        for chunk in chunks(candidates, 2 * filters.limit):
            paths = paths_of(chunk)
            chunk = [pk for pk in chunk if pk in paths and _path_matches(pattern, paths[pk])]
            by_node = _grouped(versions.filter(node_id__in=chunk), filters, chains)
            hits += [{"path": paths[pk], "versions": by_node[pk]} for pk in by_node]
            if len(hits) > filters.limit:
                break
        if len(hits) > filters.limit:
            break
    hits.sort(key=lambda hit: hit["path"])
    return {"pattern": pattern, "hits": hits[: filters.limit],
            "truncated": len(hits) > filters.limit,
            "index": status(filters.repository, filters.archive)}  # fmt: skip


def _below(folders: list[int]) -> list[int]:
    """Every entry under these folders (breadth first, bounded)."""
    return filenames.below(folders, MAX_BELOW)


def _grouped(versions, filters: Filters, in_chain: dict | None = None) -> dict[int, list[dict]]:
    """Versions by node, each with the archives that hold it (within the archive-time
    filter); versions no archive holds (any more, or in that time) are left out.
    `in_chain`: the archives of each chain read so far (kept by the caller across calls)."""
    rows = list(versions.select_related("chain", "owner").order_by("chain_id", "first"))
    in_chain = {} if in_chain is None else in_chain
    wanted = {row.chain_id for row in rows} - in_chain.keys()
    if wanted:
        archives = (
            IndexedArchive.objects.filter(chain_id__in=wanted)
            .select_related("archive", "archive__repository")
            .order_by("chain_id", "seq")
        )
        if filters.archive is not None:
            archives = archives.filter(archive=filters.archive)
        if filters.archived_after is not None:
            archives = archives.filter(archive__start__gte=filters.archived_after)
        if filters.archived_before is not None:
            archives = archives.filter(archive__start__lt=filters.archived_before)
        for chain in wanted:
            in_chain[chain] = []
        for indexed in archives:
            in_chain[indexed.chain_id].append(indexed)
    grouped: dict[int, list[dict]] = {}
    for version in rows:
        last = version.last if version.last is not None else version.chain.last_seq
        held = [a for a in in_chain.get(version.chain_id, []) if version.first <= a.seq <= last]
        if held:
            grouped.setdefault(version.node_id, []).append(describe(version, held))
    for found in grouped.values():
        found.sort(key=lambda v: v["archives"][0]["start"] or "")
    return grouped


def describe(version: IndexVersion, held: list[IndexedArchive]) -> dict:
    when = moment(version.mtime)
    return {
        "type": TYPES.get(version.type, version.type),
        "size": version.size,
        "modified": when.isoformat() if when else None,
        "mode": mode_text(version.type, version.mode),
        "user": version.owner.user,
        "group": version.owner.group,
        **({"target": version.target} if version.target else {}),
        **({"healthy": False} if not version.healthy else {}),
        "archive_count": len(held),
        "archives": [_archive(a.archive) for a in held[:MAX_ARCHIVES]],
    }


def _archive(archive: Archive) -> dict:
    return {"id": archive.pk, "name": archive.name, "repository": archive.repository.name,
            "start": archive.start.isoformat() if archive.start else None}  # fmt: skip


@dataclass
class Entry:
    """One item of a folder of an archive, as the tree shows it."""

    path: str
    name: str
    type: str
    size: int | None = None
    mtime: datetime | None = None
    mode: str = ""
    linktarget: str = ""


def in_archive(indexed: IndexedArchive):
    """The versions one indexed archive holds."""
    return IndexVersion.objects.filter(chain_id=indexed.chain_id, first__lte=indexed.seq).filter(
        Q(last__isnull=True) | Q(last__gte=indexed.seq)
    )


def _in_folder(versions, folder: int):
    """Those of the versions that are of the entries directly in a folder (0: the top)."""
    return filenames.in_spans(versions, filenames.folder_spans(folder))


def folder_entries(archive: Archive, folder: str) -> list[tuple]:
    """The items directly in `folder` of an indexed archive, by name: rows of (name, type,
    size, mtime, mode, target) for a paginator (`entry()` makes each an Entry). An unknown
    folder is empty."""
    indexed = IndexedArchive.objects.get(archive=archive)
    folder = folder.strip("/")
    node = node_of(validation.validate_archive_path(folder)) if folder else 0
    if node is None:
        return []
    names = filenames.children([node])[node]
    by_num = {num: name for name, num in names.items()}
    rows = _in_folder(in_archive(indexed), node).values_list(
        "node_id", "type", "size", "mtime", "mode", "target"
    )
    found = [(by_num[num], *rest) for num, *rest in rows if num in by_num]
    found.sort(key=lambda row: row[0])
    return found


def archive_items(archive: Archive, *, path: str = "", parent: str | None = None,
                  type: str = ""):  # fmt: skip
    """The API's view of an indexed archive's items: the children of `parent`, or
    everything at and below `path` (the whole archive when empty), optionally of one type.
    A query of versions (for a paginator), in the order borg listed them; `item_rows()`
    turns a page of it into rows with paths."""
    indexed = IndexedArchive.objects.get(archive=archive)
    versions = in_archive(indexed).select_related("owner")
    if type:
        versions = versions.filter(type=type)
    if parent is not None:
        folder = parent.strip("/")
        node = node_of(validation.validate_archive_path(folder)) if folder else 0
        if node is None:
            return versions.none()
        return _in_folder(versions, node)
    if path.strip("/"):
        node = node_of(validation.validate_archive_path(path.strip("/")))
        if node is None:
            return versions.none()
        starts, only = filenames.subtree_spans(node)
        return filenames.in_spans(versions, starts, only)
    return versions.order_by("node_id")


def item_rows(versions) -> list[dict]:
    """A page of `archive_items` as the API's item rows (path, parent, type, mode, ...)."""
    versions = list(versions)
    paths = paths_of({v.node_id for v in versions})
    rows = []
    for version in versions:
        path = paths[version.node_id]
        rows.append({
            "path": path, "parent": path.rpartition("/")[0], "type": version.type,
            "mode": mode_text(version.type, version.mode), "user": version.owner.user,
            "group": version.owner.group, "size": version.size,
            "mtime": moment(version.mtime), "linktarget": version.target,
            "healthy": version.healthy,
        })  # fmt: skip
    return rows


def entry(folder: str, row: tuple) -> Entry:
    name, kind, size, mtime, mode, target = row
    return Entry(path=f"{folder}/{name}" if folder else name, name=name, type=kind, size=size,
                 mtime=moment(mtime), mode=mode_text(kind, mode), linktarget=target)  # fmt: skip


def implied_folders(archive: Archive, folder: str) -> list[Entry]:
    """Folders directly in `folder` that only the tops imply (borg stored no item for
    them), so that the tree opens at the archive's real top."""
    indexed = IndexedArchive.objects.get(archive=archive)
    prefix = f"{folder}/" if folder else ""
    names = {top[len(prefix) :].split("/", 1)[0] for top in indexed.tops
             if top.startswith(prefix) and "/" in top[len(prefix) :]}  # fmt: skip
    if not names:
        return []
    stored = {row[0] for row in folder_entries(archive, folder) if row[0] in names}
    return [Entry(path=f"{prefix}{name}", name=name, type="d")
            for name in sorted(names - stored)]  # fmt: skip


def entries_in(archive: Archive):
    """(path, version) of every entry the index holds for one archive, in path order
    within each batch of BATCH versions (what `borg list` says of it, from the index)."""
    indexed = IndexedArchive.objects.get(archive=archive)
    versions = in_archive(indexed).order_by("pk")
    batch = []
    for version in versions.iterator(chunk_size=5000):
        batch.append(version)
        if len(batch) >= 5000:
            yield from _with_paths(batch)
            batch = []
    yield from _with_paths(batch)


def _with_paths(versions: list) -> list[tuple[str, IndexVersion]]:
    paths = paths_of({v.node_id for v in versions})
    return sorted(((paths[v.node_id], v) for v in versions), key=lambda pair: pair[0])


def history(repository: Repository, path: str) -> dict:
    """Every version of one path in the repository's indexed archives, oldest first."""
    path = validation.validate_archive_path(path.strip("/"))
    node = node_of(path)
    versions = []
    if node is not None:
        found = IndexVersion.objects.filter(node_id=node, chain__repository=repository)
        versions = _grouped(found, Filters(repository=repository)).get(node, [])
    return {"repository": repository.name, "path": path, "versions": versions,
            "index": status(repository)}  # fmt: skip


def status(repository: Repository | None, archive: Archive | None = None) -> dict:
    """How far the index is behind the catalog: complete archives not indexed yet."""
    archives = Archive.objects.filter(is_checkpoint=False)
    if archive is not None:
        archives = archives.filter(pk=archive.pk)
    elif repository is not None:
        archives = archives.filter(repository=repository)
    total = archives.count()
    indexed = archives.filter(indexed__borg_id=F("borg_id")).count()
    return {"archives": total, "indexed": indexed, "behind": total - indexed,
            "complete": total == indexed}  # fmt: skip
