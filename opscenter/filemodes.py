"""Files of the app that hold secrets are created private (issue 10, finding 14).

The secret key and the Fernet key are written with mode 0600 (opscenter.keyfiles). The SQLite
database (password hashes, API tokens, encrypted passphrases) would be created by SQLite itself
with the process umask, 0644 with the usual 022, readable by every local user whenever the
data directory already existed with a wider mode than the 0700 the app gives it: so it is
created here first, empty (which SQLite takes as an empty database) and 0600. SQLite gives
its -wal and -shm files the mode of the database file.

Not a process umask of 077: that would also make collectstatic's directories 0700 (the image
runs collectstatic as root and serves as another user), and it changes nothing for borg,
which sets its own umask (0077) and restores an archive's modes explicitly.
"""

import os


def create_private(path) -> None:
    """Create `path` as an empty file with mode 0600, unless it exists already."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return
    except OSError:  # no such directory, read-only: SQLite will say so when it opens it
        return
    os.close(fd)


def sqlite_path(database: dict) -> str | None:
    """The database file of a SQLite database settings entry, or None (another engine, an
    in-memory or URI database)."""
    name = str(database.get("NAME") or "")
    if database.get("ENGINE") != "django.db.backends.sqlite3":
        return None
    if not name or name == ":memory:" or name.startswith("file:") or "mode=memory" in name:
        return None
    return name
