"""A folder on this server read for a page (what an extract restored): one directory's
entries, reached from a root one name at a time without following a symbolic link, so a
link planted inside the folder never shows anything outside it."""

import errno
import os
import stat
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import PurePosixPath

from borgapp.validation import InvalidInput

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


@dataclass
class Entry:
    name: str  # for display: bytes that are not UTF-8 shown as U+FFFD
    path: str  # relative to the root, for links ("" when the name cannot travel in a URL)
    is_dir: bool
    is_link: bool
    size: int
    mtime: datetime
    mode: str


def parts_of(relative: str) -> list[str]:
    """The names of a relative path; `..`, `.` and NUL are refused, not resolved."""
    if "\0" in relative:
        raise InvalidInput("The path contains a NUL byte.")
    parts = [part for part in PurePosixPath(relative).parts if part != "/"]
    if any(part in (".", "..") for part in parts):
        raise InvalidInput(f"The path {relative!r} must not contain '.' or '..'.")
    return parts


def read_folder(root: str, relative: str = "") -> list[Entry]:
    """The entries of `root/relative`, folders first, then by name."""
    parts = parts_of(relative)
    try:
        fd = os.open(root, DIR_FLAGS)
    except OSError as exc:
        raise InvalidInput(f"{root} cannot be read: {_reason(exc)}.") from None
    try:
        for part in parts:
            try:
                inner = os.open(part, DIR_FLAGS, dir_fd=fd)
            except OSError as exc:
                reason = "a symbolic link, not followed" if _is_link(part, fd) else _reason(exc)
                raise InvalidInput(f"{'/'.join(parts)}: {reason}.") from None
            os.close(fd)
            fd = inner
        with os.scandir(fd) as found:
            entries = [_entry(item, parts) for item in found]
    finally:
        os.close(fd)
    return sorted(entries, key=lambda e: (not e.is_dir, e.name))


def _entry(item: os.DirEntry, parts: list[str]) -> Entry:
    info = item.stat(follow_symlinks=False)
    raw = os.fsencode(item.name)
    shown = raw.decode("utf-8", "replace")
    travels = shown == item.name  # a name that is not UTF-8 cannot be sent back in a URL
    return Entry(
        name=shown,
        path="/".join([*parts, item.name]) if travels else "",
        is_dir=stat.S_ISDIR(info.st_mode),
        is_link=stat.S_ISLNK(info.st_mode),
        size=info.st_size,
        mtime=datetime.fromtimestamp(info.st_mtime, UTC),
        mode=stat.filemode(info.st_mode),
    )


def _is_link(name: str, dir_fd: int) -> bool:
    try:
        return stat.S_ISLNK(os.lstat(name, dir_fd=dir_fd).st_mode)
    except OSError:
        return False


def _reason(exc: OSError) -> str:
    if exc.errno == errno.ELOOP:
        return "a symbolic link, not followed"
    if exc.errno == errno.ENOTDIR:
        return "not a folder"
    if exc.errno == errno.ENOENT:
        return "no longer exists"
    return exc.strerror or "unreadable"
