"""How the app names archives, and how a name tells which backup set it belongs to.

An archive the app makes is `<prefix>-<UTC time>` (`backup-2026-12-02T06:30:00Z`); the
integration guide's are `<set>_<YYYYmmdd_HHMMSS>`. Prune, verify-restore and the seed routes
select a set by these shapes, never by a bare prefix, so that no set touches another's
archives (REL-12: docs/requirements.md).
"""

import re
from datetime import UTC, datetime

from borgapp import validation

ARCHIVE_TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
ARCHIVE_TIME_GLOB = "[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]T[0-9][0-9]:[0-9][0-9]:[0-9][0-9]Z"
ARCHIVE_TIME_RE = r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z"
SEED_NAME_RE = re.compile(r"^(?P<set>.+)_[0-9]{8}_[0-9]{6}$")


def archive_name_for(prefix: str, when: datetime | None = None) -> str:
    validation.validate_archive_part(prefix, "Archive prefix")
    when = (when or datetime.now(UTC)).astimezone(UTC)
    return f"{prefix}-{when.strftime(ARCHIVE_TIME_FORMAT)}"


def prefix_glob(prefix: str) -> str:
    """Archives of exactly this backup set (and their checkpoints), never another set's."""
    validation.validate_archive_part(prefix, "Archive prefix")
    return f"{prefix}-{ARCHIVE_TIME_GLOB}*"


def in_set(name: str, prefix: str) -> bool:
    """Whether `name` is a complete archive of the set `prefix` (not a checkpoint)."""
    return re.fullmatch(re.escape(prefix) + "-" + ARCHIVE_TIME_RE, name) is not None


def set_of(name: str) -> str | None:
    """The backup set (prefix) of an archive the app named, or None for any other name."""
    match = re.fullmatch(r"(?P<set>.+)-" + ARCHIVE_TIME_RE, name)
    return match["set"] if match else None


def seed_glob(set_name: str) -> str:
    """The integration guide's archives of one set (and their checkpoints)."""
    return f"{set_name}_{'[0-9]' * 8}_{'[0-9]' * 6}*"
