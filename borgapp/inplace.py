"""Restores in place: what `borg extract` wrote into a private staging folder is moved into the
target one entry at a time, by a policy for what already exists, and a preview says beforehand
what that will do.

Why staging: borg restores every piece of metadata (modes, owners, mtimes, xattrs, ACLs,
hardlinks) there; a rename then carries the inode, with all of it, into the target atomically,
so no half-written file is ever seen and two names of one inode stay linked.

Why file descriptors: every step is relative to a held directory opened with O_NOFOLLOW, and a
rename or unlink acts on the last name itself, never on what a symlink points to. A symlink
anywhere in the target, planted before or during the restore, is therefore replaced or reported,
never followed out of the target.

Why one decision function: `preview` (from `borg list --json-lines` entries, writing nothing)
and `apply` (from the staged tree) walk the same way and ask `decide` the same question with
the same facts, so the preview can only say what the restore then does.

Paths in reports are text as borg prints them: bytes that are not UTF-8 show as '?'.
"""

import errno
import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import NamedTuple

from borgapp.errors import InvalidInput, OperationError

POLICIES = ("keep", "replace", "if-different")
CATEGORIES = ("created", "replaced", "kept", "left_alone", "blocked")
# Where the operation stages what borg extracts (inside the in-place root, so on the target's
# filesystem): never listed as left alone, by a preview or a restore.
STAGING_PREFIX = b".opscenter-restore-"

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
ONE_US = timedelta(microseconds=1)


# --- what the archive holds ----------------------------------------------------------------------


@dataclass(frozen=True)
class Entry:
    """One item of the archive, as `borg list --json-lines` prints it."""

    path: str  # relative archive path, e.g. "srv/data/a.txt"
    type: str  # "d" dir, "-" file, "l" symlink, "p" fifo, "c"/"b" devices
    size: int | None
    mtime_us: int | None  # microseconds since the epoch
    linktarget: str = ""  # a symlink's target, or a secondary hardlink's first name
    hardlink: bool = False  # mode starts with "h": borg prints size 0 for these


def entry_from_listing(item: dict, tz) -> Entry:
    """One parsed JSON line of `borg list --json-lines`. Its "mtime" is naive local time of the
    borg process's zone `tz`; run borg with TZ=UTC and pass UTC to avoid the hour a clock
    turned back, which naive local time cannot tell apart."""
    mtime = item.get("mtime")
    return Entry(
        path=item["path"].strip("/"),
        type=item["type"],
        size=item.get("size"),
        mtime_us=listing_us(mtime, tz) if mtime else None,
        linktarget=item.get("linktarget") or item.get("source") or "",
        hardlink=(item.get("mode") or "").startswith("h"),
    )


def listing_us(value: str, tz) -> int:
    """borg's "2026-12-05T10:00:35.413328" in zone `tz` -> exact microseconds since the epoch
    (integer arithmetic: a float would lose the last microsecond)."""
    moment = datetime.fromisoformat(value)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=tz)
    return (moment - EPOCH) // ONE_US


def borg_us(ns: int) -> int:
    """An mtime in nanoseconds as borg lists it: borg divides by 1e9 as a float and lets
    datetime round to the microsecond, so a plain floor would differ by one microsecond for
    some files and the preview would disagree with the restore."""
    return (datetime.fromtimestamp(ns / 1e9, tz=UTC) - EPOCH) // ONE_US


def text(name: bytes) -> str:
    """A name as borg prints it in JSON: each byte that is not UTF-8 becomes '?'."""
    return os.fsdecode(name).encode("utf-8", "replace").decode("utf-8")


# --- the decision --------------------------------------------------------------------------------


class Meta(NamedTuple):
    """What a decision looks at, for an archive entry and for what is in the target."""

    type: str
    size: int | None = None  # None: not known (a hardlink whose first name was not listed)
    mtime_us: int | None = None
    linktarget: str = ""


def decide(policy: str, source: Meta, dest: Meta | None) -> tuple[str, str]:
    """(category, reason) for a non-folder archive entry whose place holds `dest` (None: free).
    The one rule both preview and apply follow."""
    if dest is None:
        return "created", ""
    if dest.type == "d":
        return "blocked", "a folder is in the way"
    if policy == "keep":
        return "kept", ""
    if policy == "replace":
        return "replaced", ""
    difference = differs(source, dest)
    return ("replaced", difference) if difference else ("kept", "unchanged")


def differs(source: Meta, dest: Meta) -> str:
    """Why `dest` is not what the archive holds, or "" when it is the same. Symlinks compare
    by target; files by mtime (to the microsecond), then size; fifos and devices by mtime.
    The mtime comes first so that an unknown size (see `hardlink_sizes`) changes nothing when
    the mtime already differs."""
    if source.type != dest.type:
        return "the type differs"
    if source.type == "l":
        return "" if source.linktarget == dest.linktarget else "the link target differs"
    if source.mtime_us != dest.mtime_us:
        return "the modification time differs"
    if source.type == "-" and source.size is not None and source.size != dest.size:
        return "the size differs"
    return ""


def meta_of(dir_fd: int, name: bytes, info: os.stat_result) -> Meta:
    """The facts `decide` needs about a name in a held folder (staged or target), from lstat."""
    kind = stat.filemode(info.st_mode)[0]
    target = text(os.readlink(name, dir_fd=dir_fd)) if kind == "l" else ""
    return Meta(kind, info.st_size, borg_us(info.st_mtime_ns), target)


def lstat_at(dir_fd: int, name: bytes) -> os.stat_result:
    return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)


# --- the report ----------------------------------------------------------------------------------


@dataclass
class Listed:
    """One category: how many, and the first `limit` of them by path."""

    count: int = 0
    items: list[dict] = field(default_factory=list)


@dataclass
class Report:
    """What a restore in place creates, replaces, keeps, leaves alone and cannot write.
    Lists keep the `limit` smallest paths, so preview and apply list the same ones whatever
    order they walked in; counts are complete."""

    limit: int = 1000
    created: Listed = field(default_factory=Listed)
    replaced: Listed = field(default_factory=Listed)
    kept: Listed = field(default_factory=Listed)
    left_alone: Listed = field(default_factory=Listed)
    blocked: Listed = field(default_factory=Listed)

    def add(self, category: str, path: str, reason: str = "") -> None:
        listed = getattr(self, category)
        listed.count += 1
        listed.items.append({"path": path, "reason": reason} if reason else {"path": path})
        if len(listed.items) > 2 * self.limit + 64:
            self._trim(listed)

    def finish(self) -> "Report":
        for category in CATEGORIES:
            self._trim(getattr(self, category))
        return self

    def _trim(self, listed: Listed) -> None:
        listed.items.sort(key=lambda item: (item["path"], item.get("reason", "")))
        del listed.items[self.limit :]

    def as_dict(self) -> dict:
        self.finish()
        result = {"limit": self.limit}
        for category in CATEGORIES:
            listed = getattr(self, category)
            result[category] = {
                "count": listed.count,
                "items": [dict(item) for item in listed.items],
                "more": listed.count - len(listed.items),
            }
        return result


class ApplyFailed(OperationError):
    """A restore in place stopped midway: `report` holds what was already written."""

    def __init__(self, message: str, report: Report):
        self.report = report.finish()
        super().__init__(message, code="in_place_failed", result=report.as_dict())


# --- the selection -------------------------------------------------------------------------------


def clean_selection(selected: list[str]) -> list[str]:
    """Archive paths the user chose, without leading or trailing '/', each once, none inside
    another (the outer one covers it). The whole archive cannot be chosen: every extra thing
    under the target root would be walked and listed as left alone."""
    paths = set()
    for raw in selected:
        if not isinstance(raw, str):
            raise InvalidInput("Each selected path must be text.")
        path = raw.strip("/")
        parts = path.split("/")
        if not path or "\0" in path or any(part in ("", ".", "..") for part in parts):
            raise InvalidInput(f"Selected path {raw!r} is not a path inside the archive.")
        paths.add(path)
    if not paths:
        raise InvalidInput("Select at least one file or folder.")
    return sorted(p for p in paths if not any(inside(p, other) for other in paths if other != p))


def inside(path: str, folder: str) -> bool:
    return path.startswith(folder + "/")


def selection_tree(paths: list[str]) -> dict:
    """{"srv": {"data": None}}: dicts are folders on the way, None marks a selected path."""
    tree: dict = {}
    for path in paths:
        *folders, last = path.split("/")
        node = tree
        for part in folders:
            node = node.setdefault(part, {})
        node[last] = None
    return tree


def paths_below(tree: dict | None, path: str) -> list[str]:
    """The selected paths at or under a node of the selection tree."""
    if tree is None:
        return [path]
    return [p for name, sub in tree.items() for p in paths_below(sub, join(path, name))]


def join(path: str, name: str) -> str:
    return f"{path}/{name}" if path else name


# --- the source side: listed entries (preview) or the staged tree (apply) ------------------------


class ListedNode:
    """An archive entry from the listing; folders on the way that borg did not list (a
    selected path's parents) stand in as plain folders, as `borg extract` creates them."""

    def __init__(self, name: str, entry: Entry | None = None):
        self.name = name
        self.key = os.fsencode(name)
        self.entry = entry
        self.kids: dict[str, ListedNode] = {}
        self.size: int | None = entry.size if entry else None

    @property
    def meta(self) -> Meta:
        if self.entry is None:
            return Meta("d")
        entry = self.entry
        return Meta(entry.type, self.size, entry.mtime_us, entry.linktarget)

    def children(self) -> list["ListedNode"]:
        return list(self.kids.values())

    def hold(self) -> None:
        """Nothing to hold: a listing is in memory."""

    def release(self) -> None:
        """Nothing to release."""


class StagedNode:
    """A name in the staging folder, read through its held parent folder."""

    def __init__(self, parent_fd: int, key: bytes, info: os.stat_result, fd: int | None = None):
        self.parent_fd = parent_fd
        self.key = key
        self.name = text(key)
        self.info = info
        self.fd = fd
        self.meta = meta_of(parent_fd, key, info)

    def hold(self) -> None:
        """Open the folder before it is moved: its entries are then read through the
        descriptor wherever the folder went."""
        if self.fd is None:
            self.fd = os.open(self.key, DIR_FLAGS, dir_fd=self.parent_fd)

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def children(self) -> list["StagedNode"]:
        if self.meta.type != "d":
            return []
        self.hold()
        with os.scandir(self.fd) as found:
            return [
                StagedNode(self.fd, os.fsencode(e.name), e.stat(follow_symlinks=False))
                for e in found
            ]


def listed_tree(entries: Iterable[Entry], paths: list[str]) -> ListedNode:
    """The listing as a tree of the selected paths. Entries outside the selection only lend
    their size to hardlinks (`hardlink_sizes`)."""
    by_path = {entry.path.strip("/"): entry for entry in entries}
    chosen = set(paths)
    root = ListedNode("")
    for path, entry in by_path.items():
        parts = path.split("/")
        if not any("/".join(parts[:n]) in chosen for n in range(1, len(parts) + 1)):
            continue
        node = root
        for part in parts:
            node = node.kids.setdefault(part, ListedNode(part))
        node.entry = entry
        node.size = entry.size
        hardlink_sizes(node, by_path)
    return root


def hardlink_sizes(node: ListedNode, by_path: dict[str, Entry]) -> None:
    """borg lists the second and later names of a hardlinked file with size 0 and the first
    name as linktarget: such a name takes the first name's size. When the first name was not
    listed (pass its entry in too: entries outside the selection are used for this only), the
    size stays unknown and the comparison uses the type and mtime alone."""
    entry = node.entry
    if entry is None or not entry.hardlink:
        return
    first = by_path.get(entry.linktarget.strip("/"))
    node.size = first.size if first is not None and not first.hardlink else None


# --- the walk both share -------------------------------------------------------------------------


class Walk:
    """One walk of the selection over the target. With `write` off it only decides (preview);
    with it on, each decision is carried out before it is reported (apply), so a report taken
    after a failure lists exactly what was written."""

    def __init__(self, policy: str, root_fd: int, limit: int, write: bool):
        if policy not in POLICIES:
            raise InvalidInput(f"Policy {policy!r} is not one of {', '.join(POLICIES)}.")
        self.policy = policy
        self.write = write
        self.report = Report(limit=limit)
        self.root_dev = os.fstat(root_fd).st_dev

    def run(self, source, root_fd: int, tree: dict) -> Report:
        self.merge(source, root_fd, "", tree)
        return self.report.finish()

    # -- folders

    def merge(self, node, dir_fd: int, path: str, tree: dict | None) -> None:
        """Put `node`'s children into the held target folder `dir_fd`. `tree` is the part of
        the selection below (None: inside a selected folder, where extra things are listed as
        left alone)."""
        names = set(os.fsencode(n) for n in os.listdir(dir_fd))
        kids = node.children()
        if tree is not None:
            kids = [kid for kid in kids if kid.name in tree]
            found = {kid.name for kid in kids}
            for name, sub in tree.items():
                if name not in found:
                    for missing in paths_below(sub, join(path, name)):
                        self.report.add("blocked", missing, "not in the archive")
        foreign = os.fstat(dir_fd).st_dev != self.root_dev
        matched: set[bytes] = set()
        for kid in sorted(kids, key=lambda k: k.key):
            kid_path = join(path, kid.name)
            target = self.match(kid, names, matched)
            sub = None if tree is None else tree[kid.name]
            if foreign:
                self.block_tree(kid, kid_path, "on another filesystem")
            else:
                self.place(kid, dir_fd, target, kid_path, sub)
        if tree is None:
            for name in sorted(names - matched):
                if not name.startswith(STAGING_PREFIX):  # a restore's own staging folder
                    self.left_alone(dir_fd, name, join(path, text(name)))

    def match(self, kid, names: set[bytes], matched: set[bytes]) -> bytes | None:
        """The target name that stands where `kid` goes, or None when the place is free. A
        listed name with '?' may stand for bytes that are not UTF-8: the preview takes the one
        undecodable target name that prints the same (apply has the real bytes)."""
        if kid.key in names and kid.key not in matched:
            matched.add(kid.key)
            return kid.key
        if self.write or "?" not in kid.name:
            return None
        candidates = [
            name
            for name in names - matched
            if text(name) == kid.name and text(name) != os.fsdecode(name)
        ]
        if len(candidates) != 1:
            return None
        matched.add(candidates[0])
        return candidates[0]

    def place(self, kid, dir_fd: int, target: bytes | None, path: str, sub) -> None:
        """One archive entry at one place of the target: the decision, then the deed."""
        dest = None if target is None else meta_of(dir_fd, target, lstat_at(dir_fd, target))
        if kid.meta.type != "d":
            category, reason = decide(self.policy, kid.meta, dest)
            if category in ("created", "replaced") and not self.move(kid, dir_fd, target, path):
                return
            self.report.add(category, path, reason)
        elif dest is None:
            self.move_tree(kid, dir_fd, kid.key, path, "created", "")
        elif dest.type == "d":
            held = os.open(target, DIR_FLAGS, dir_fd=dir_fd)
            try:
                self.merge(kid, held, path, sub)
            finally:
                os.close(held)
                kid.release()
        else:
            thing = "a symbolic link" if dest.type == "l" else "a file"
            if self.policy != "replace":
                self.block_tree(kid, path, f"{thing} is in the way at {path}")
                return
            if self.write:
                os.unlink(target, dir_fd=dir_fd)  # the link or file itself, never followed
            self.move_tree(kid, dir_fd, target, path, "replaced", f"{thing} was in the way")

    def move_tree(self, kid, dir_fd: int, target: bytes, path: str, category, reason) -> None:
        """A whole folder that is not in the target moves in at once, keeping its metadata;
        everything in it is then listed as created."""
        kid.hold()
        try:
            if not self.move(kid, dir_fd, target, path, tree=True):
                return
            self.report.add(category, path, reason)
            for child in kid.children():
                self.report_tree(child, join(path, child.name), "created", "")
        finally:
            kid.release()

    def move(self, kid, dir_fd: int, target: bytes | None, path: str, tree=False) -> bool:
        """Rename the staged entry onto its place: atomic, and the last name is replaced, not
        followed. A move across filesystems cannot be atomic: that entry is blocked."""
        if not self.write:
            return True
        try:
            os.rename(kid.key, target or kid.key, src_dir_fd=kid.parent_fd, dst_dir_fd=dir_fd)
        except OSError as exc:
            if exc.errno != errno.EXDEV:
                raise ApplyFailed(f"Stopped at {path}: {exc.strerror}.", self.report) from exc
            if tree:
                self.block_tree(kid, path, "on another filesystem")
            else:
                self.report.add("blocked", path, "on another filesystem")
            return False
        return True

    # -- listing only

    def report_tree(self, node, path: str, category: str, reason: str) -> None:
        self.report.add(category, path, reason)
        if node.meta.type == "d":
            try:
                for child in node.children():
                    self.report_tree(child, join(path, child.name), category, reason)
            finally:
                node.release()

    def block_tree(self, node, path: str, reason: str) -> None:
        self.report_tree(node, path, "blocked", reason)

    def left_alone(self, dir_fd: int, name: bytes, path: str) -> None:
        """Something in the target that the archive does not have: never deleted, listed.
        A real folder on the same filesystem is listed through; a symlink is not followed."""
        self.report.add("left_alone", path)
        info = lstat_at(dir_fd, name)
        if not stat.S_ISDIR(info.st_mode) or info.st_dev != self.root_dev:
            return
        held = os.open(name, DIR_FLAGS, dir_fd=dir_fd)
        try:
            for child in sorted(os.fsencode(n) for n in os.listdir(held)):
                self.left_alone(held, child, join(path, text(child)))
        finally:
            os.close(held)


# --- the two doors -------------------------------------------------------------------------------


def preview(
    entries: Iterable[Entry], root_fd: int, policy: str, selected: list[str], limit: int = 1000
) -> Report:
    """What `apply` would do, from the archive's listing, writing nothing. `root_fd` is the held
    folder (O_RDONLY|O_DIRECTORY|O_NOFOLLOW) standing for "/" of the archive's paths."""
    paths = clean_selection(selected)
    walk = Walk(policy, root_fd, limit, write=False)
    try:
        return walk.run(listed_tree(entries, paths), root_fd, selection_tree(paths))
    except OSError as exc:
        raise OperationError(
            f"Cannot read the target: {exc.strerror}.", code="in_place_failed"
        ) from exc


def apply(
    staged_fd: int, root_fd: int, policy: str, selected: list[str], limit: int = 1000
) -> Report:
    """Move what borg extracted into `staged_fd` (same layout, same filesystem) into the target
    by `policy`. What is kept or blocked stays in staging, for the caller to remove. Raises
    ApplyFailed with the report of what was written when an error stops it midway."""
    paths = clean_selection(selected)
    walk = Walk(policy, root_fd, limit, write=True)
    staged = os.fstat(staged_fd)
    if staged.st_dev != walk.root_dev:
        raise OperationError(
            "The staging folder is not on the target's filesystem.", code="in_place_failed"
        )
    source = StagedNode(staged_fd, b".", staged, fd=staged_fd)
    try:
        return walk.run(source, root_fd, selection_tree(paths))
    except OSError as exc:
        where = exc.filename if isinstance(exc.filename, str) else text(exc.filename or b"")
        raise ApplyFailed(
            f"Stopped at {where or 'the target'}: {exc.strerror}.", walk.report
        ) from exc
