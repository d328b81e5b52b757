"""Secrets that live in files under the data directory: created once, mode 0600, never logged."""

import os
from pathlib import Path


def read_or_create(path: Path, make) -> str:
    """Return the secret stored at `path`, creating it with `make()` the first time.

    The file is created with O_EXCL and mode 0600 so that two processes starting at once
    agree on one value, and an existing file is never regenerated.
    """
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        pass
    value = make()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_text().strip()
    with os.fdopen(fd, "w") as handle:
        handle.write(value + "\n")
    return value
