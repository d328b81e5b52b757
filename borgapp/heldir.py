"""Directories held open while borg writes in them (restores, in place and not), checked to
be private all the way from /, and what borg left in them. No Django: the agent uses these on
its host as the center does on its own."""

import os
import stat
from pathlib import Path

from borgapp.errors import OperationError
from borgapp.validation import InvalidInput

# A restore target (and the verify-restore sandbox) is held open from its check to borg's
# end: borg starts in the directory that was checked, by descriptor (borg.Command.cwd_fd).
# That is not enough alone: borg joins os.getcwd() with every item's path and walks that
# path again for each file it writes, so whoever can rename an entry in a directory on the
# way could still swap the target for a symbolic link while borg runs. Every directory from
# / to the target must therefore be changeable by root or this app's user only.

HELD_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def require_private_path(path: Path, what: str) -> None:
    """Every directory on the resolved `path`, and `path` itself, is a directory only root
    or this user can change: owned by one of them and not writable by group or others, or
    sticky (like /tmp) with the next entry owned by one of them."""
    trusted = {0, os.geteuid()}
    hint = "restore into a directory no other user can write in (chmod go-w, owner this user)"
    parent, parent_stat = Path("/"), os.lstat("/")
    for name in path.parts[1:]:
        here = parent / name
        here_stat = os.lstat(here)
        if not stat.S_ISDIR(here_stat.st_mode):
            raise InvalidInput(f"{what} {str(path)!r}: {here} is not a directory.")
        private = parent_stat.st_uid in trusted and not parent_stat.st_mode & 0o022
        sticky = parent_stat.st_mode & stat.S_ISVTX and here_stat.st_uid in trusted
        if not (private or (sticky and parent_stat.st_uid in trusted)):
            raise InvalidInput(
                f"{what} {str(path)!r}: other users can rename entries in {parent}, and so "
                f"redirect what borg writes; {hint}."
            )
        parent, parent_stat = here, here_stat
    if parent_stat.st_uid not in trusted or parent_stat.st_mode & 0o022:
        raise InvalidInput(f"{what} {str(path)!r} can be written in by other users; {hint}.")


def hold_empty_dir(path: Path, what: str, *, dir_fd: int | None = None) -> int:
    """Open the checked directory (no symbolic link followed) and check it through the
    descriptor: empty, private all the way, and still what `path` names. The caller closes
    the descriptor."""
    fd = os.open(path, HELD_DIR_FLAGS, dir_fd=dir_fd)
    try:
        if dir_fd is None:
            require_private_path(path, what)
            if not same_dir(path, fd):
                raise InvalidInput(f"{what} {str(path)!r} changed while checked.")
        if os.listdir(fd):
            raise InvalidInput(f"{what} {str(path)!r} is not empty.")
    except BaseException:
        os.close(fd)
        raise
    return fd


def same_dir(path: Path, fd: int) -> bool:
    try:
        now = os.lstat(path)
    except OSError:
        return False
    held = os.fstat(fd)
    return (now.st_dev, now.st_ino) == (held.st_dev, held.st_ino)


def open_dir_nofollow(path: str, what: str) -> int:
    """Open an existing directory walking from / one name at a time, no link followed."""
    fd = os.open("/", HELD_DIR_FLAGS)
    try:
        for name in Path(path).parts[1:]:
            try:
                child = os.open(name, HELD_DIR_FLAGS, dir_fd=fd)
            except OSError as exc:
                raise InvalidInput(
                    f"{what} {path!r}: {name!r} cannot be entered ({exc.strerror}; a link is "
                    "never followed)."
                ) from None
            os.close(fd)
            fd = child
    except BaseException:
        os.close(fd)
        raise
    return fd


def require_listed(archive_name: str, paths: list[str], found: set[str]) -> None:
    """Refuse, before anything is written, a selection with a path the archive lacks."""
    # a folder borg stored no item for (above a source) is there when something below is
    missing = [p for p in paths if p not in found and not any(f.startswith(p + "/") for f in found)]
    if missing:
        raise OperationError(
            f"Not in archive {archive_name}: {', '.join(missing)}. Nothing was written.",
            "path_not_found",
        )


def staged_paths(fd: int) -> set[str]:
    """Every path below a held folder, relative to it."""
    found = set()
    for folder, dirs, files, _ in os.fwalk(".", dir_fd=fd):
        for name in dirs + files:
            found.add(os.path.normpath(os.path.join(folder, name)))
    return found
