"""Each operation's parameters, declared once: fields, defaults and the rules they must meet.

`clean(kind, raw)` is what intake runs on every request (from the API, the admin, the CLI and
the schedules): it raises InvalidInput naming the problem, or returns the dict that is stored
on the Job (never a secret). `load(kind, stored)` gives an operation its parameters back as
the kind's dataclass, every default filled in, so no operation defaults a value of its own.
The doors take their defaults from here too (DEFAULTS, CHECK_SCOPES).

Rules that need the database (a retention policy exists, an archive is in the catalog) stay
in intake; the ones here look at the values alone.
"""

import os
from dataclasses import asdict, dataclass, field, fields

from django.conf import settings

from borgapp import inplace, naming, validation
from borgapp.borg import keep_flags
from borgapp.errors import InvalidInput
from borgapp.models import Job, Schedule

COMPRESSION = "lz4"
BACKUP_PREFIX = "backup"
SAMPLE_FILES = 20
SAMPLE_MAX_BYTES = 100 * 2**20
# What a check reads: both, the repository's segments only, or the archives only.
CHECK_SCOPES = tuple(Schedule.CheckScope.values)
DEFAULT_SCOPE = Schedule.CheckScope.BOTH


def whole_number(value, what: str, minimum: int = 0) -> int | None:
    if value in (None, ""):
        return None
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise InvalidInput(f"{what} must be a whole number.") from None
    if number < minimum:
        raise InvalidInput(f"{what} must be at least {minimum}.")
    return number


@dataclass
class Params:
    """Fields with defaults; `check` normalises and validates in place."""

    @classmethod
    def from_raw(cls, raw: dict):
        names = {f.name for f in fields(cls)}
        given = {k: v for k, v in raw.items() if k in names and v is not None}
        return cls(**given)

    def check(self) -> None:
        pass

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class Backup(Params):
    sources: list = field(default_factory=list)
    excludes: list = field(default_factory=list)
    archive: str = ""  # an exact name (the guide's routes); otherwise prefix + UTC time
    prefix: str = BACKUP_PREFIX
    compression: str = COMPRESSION
    one_file_system: bool = False
    checkpoint_interval: int | None = None
    comment: str = ""
    databases: list = field(default_factory=list)  # DatabaseSource names, dumped in too

    def check(self) -> None:
        if not isinstance(self.databases, list):
            raise InvalidInput("databases must be a list of database source names.")
        self.databases = [validation.validate_name(d, "Database source") for d in self.databases]
        if not self.sources and not self.databases:
            raise InvalidInput("At least one source path (or database source) is required.")
        self.sources = [validation.validate_source_path(s) for s in self.sources]
        self.excludes = [validation.validate_exclude_pattern(x) for x in self.excludes]
        self.prefix = self.prefix or BACKUP_PREFIX
        if self.archive:
            validation.validate_archive_part(self.archive, "Archive name")
        else:
            validation.validate_archive_part(self.prefix, "Archive prefix")
        self.compression = self.compression or COMPRESSION
        validation.validate_compression(self.compression)
        self.one_file_system = bool(self.one_file_system)
        self.checkpoint_interval = whole_number(self.checkpoint_interval, "Checkpoint interval", 1)
        self.comment = self.comment or ""
        if self.comment:
            validation.no_control_chars(self.comment, "Comment")


@dataclass
class Prune(Params):
    prefix: str = ""
    scope: str = ""  # "seed": every set of the integration guide's archive names
    policy: str = ""  # a RetentionPolicy's name, or the ad-hoc `keep` rules
    keep: dict = field(default_factory=dict)
    dry_run: bool = False
    compact: bool = True
    archive: str = ""

    def check(self) -> None:
        if self.scope != "seed":  # prune is always scoped to one backup set (REL-12)
            naming.prefix_glob(self.prefix or "")
        self.dry_run = bool(self.dry_run)
        self.compact = bool(self.compact)
        if not self.policy and not keep_flags(**(self.keep or {})):
            raise InvalidInput("Prune needs a policy or at least one keep rule.")


@dataclass
class Check(Params):
    scope: str = Schedule.CheckScope.BOTH
    verify_data: bool = False
    last: int | None = None
    max_duration: int | None = None

    @classmethod
    def from_raw(cls, raw: dict):
        raw = dict(raw)
        if raw.get("repository_only") and raw.get("archives_only"):
            raise InvalidInput("Choose repository-only or archives-only, not both.")
        if raw.get("repository_only"):  # the two flags of borg's own options and the guide's
            raw["scope"] = "repository"
        elif raw.get("archives_only"):
            raw["scope"] = "archives"
        return super().from_raw(raw)

    def check(self) -> None:
        self.scope = self.scope or Schedule.CheckScope.BOTH
        if self.scope not in CHECK_SCOPES:
            raise InvalidInput(f"Check scope must be one of: {', '.join(CHECK_SCOPES)}.")
        self.verify_data = bool(self.verify_data)
        if self.verify_data and self.scope == "repository":
            raise InvalidInput("verify-data cannot be combined with repository-only.")
        self.last = whole_number(self.last, "last", 1)
        self.max_duration = whole_number(self.max_duration, "max_duration", 1)
        if self.max_duration and self.scope != "repository":
            raise InvalidInput("max-duration works only with a repository-only check.")


@dataclass
class OneArchive(Params):
    """Delete an archive, or read its file listing."""

    archive: str = ""


@dataclass
class Index(Params):
    """Index an archive's files (empty: the oldest complete archive not indexed yet)."""

    archive: str = ""

    def check(self) -> None:
        if self.archive:
            validation.validate_existing_archive_name(self.archive)


@dataclass
class Extract(Params):
    archive: str = ""
    target: str = ""
    paths: list = field(default_factory=list)
    strip_components: int = 0
    on_host: bool = False  # run by a host's agent: the target is there, under its own roots

    def check(self) -> None:
        if self.on_host:
            self.target = validation.absolute_path(self.target or "", "Target")
        else:
            validation.require_under_roots(self.target or "/", settings.RESTORE_ROOTS, "Target")
        self.paths = [validation.validate_archive_path(x) for x in self.paths]
        self.strip_components = whole_number(self.strip_components, "strip_components") or 0


DOWNLOAD_FORMATS = ("auto", "file", "tar", "tar.gz", "tar.zst")
MAX_DOWNLOAD_PATHS = 1000


@dataclass
class Download(Params):
    """auto: one regular file comes as itself, anything else as a plain tar."""

    archive: str = ""
    paths: list = field(default_factory=list)
    format: str = "auto"

    def check(self) -> None:
        if not isinstance(self.paths, list) or not self.paths:
            raise InvalidInput("Name at least one path of the archive to download.")
        if len(self.paths) > MAX_DOWNLOAD_PATHS:
            raise InvalidInput(f"At most {MAX_DOWNLOAD_PATHS} paths in one download.")
        self.paths = list(dict.fromkeys(validation.validate_archive_path(p) for p in self.paths))
        self.format = self.format or "auto"
        if self.format not in DOWNLOAD_FORMATS:
            raise InvalidInput(f"Format must be one of: {', '.join(DOWNLOAD_FORMATS)}.")
        if self.format == "file" and len(self.paths) != 1:
            raise InvalidInput("Format 'file' takes exactly one path; use a tar for several.")


@dataclass
class Restore(Params):
    """A restore in place: each path back where it was (target "/") or under another folder
    that stands for "/", by a policy for what exists; a preview unless `preview` is false."""

    archive: str = ""
    paths: list = field(default_factory=list)
    target: str = "/"
    policy: str = "keep"
    preview: bool = True
    on_host: bool = False  # run by a host's agent: its own in-place roots decide, there

    def check(self) -> None:
        if not settings.INPLACE_ROOTS and not self.on_host:
            raise InvalidInput(
                "Restores in place are off on this server: an admin lists the folders they "
                "may write in with OPSCENTER_INPLACE_ROOTS."
            )
        if not isinstance(self.paths, list):
            raise InvalidInput("paths must be a list of paths in the archive.")
        self.paths = inplace.clean_selection(
            [validation.validate_archive_path(p) for p in self.paths]
        )
        if self.policy not in inplace.POLICIES:
            raise InvalidInput(f"Policy must be one of: {', '.join(inplace.POLICIES)}.")
        self.target = validation.absolute_path(self.target or "/", "Target")
        self.preview = self.preview not in (False, "false", "0", 0)
        if self.on_host:
            return
        roots = {str(inplace_root(self.target, p)) for p in self.paths}
        if len(roots) > 1:
            raise InvalidInput(
                "Restore paths of one in-place root at a time (these fall under "
                f"{', '.join(sorted(roots))})."
            )


def destination(target: str, path: str) -> str:
    return os.path.join(target, path)


def inplace_root(target: str, path: str):
    """The in-place root a restored path lands under; refused when there is none, or when it
    would write into the app's own data, borg's base folder or a repository."""
    where = destination(target, path)
    # By names alone: what lies below may be links, which the restore never follows
    # (borgapp.inplace), and a selected path that is now a link is still a place to restore.
    root = next((r for r in settings.INPLACE_ROOTS if validation.is_within(where, r)), None)
    if root is None:
        allowed = ", ".join(str(r) for r in settings.INPLACE_ROOTS)
        raise InvalidInput(
            f"Restore destination {where} is not under an in-place root ({allowed})."
        )
    protected = [settings.DATA_DIR, settings.BORG_BASE_DIR, *settings.REPOSITORY_ROOTS]
    for folder in protected:
        folder = os.path.realpath(folder)
        if validation.is_within(where, folder) or validation.is_within(folder, where):
            raise InvalidInput(
                f"Restore destination {where} overlaps {folder}, which this app keeps its "
                "own data or repositories in; restore elsewhere."
            )
    return root


@dataclass
class VerifyRestore(Params):
    prefix: str = ""
    sample_files: int = SAMPLE_FILES
    sample_percent: int | None = None
    sample_max_bytes: int = SAMPLE_MAX_BYTES

    def check(self) -> None:
        validation.validate_archive_part(self.prefix or "", "Archive prefix")
        self.sample_files = whole_number(self.sample_files, "sample_files", 1) or SAMPLE_FILES
        self.sample_percent = whole_number(self.sample_percent, "sample_percent", 1)
        if self.sample_percent and self.sample_percent > 100:
            raise InvalidInput("sample_percent must be between 1 and 100.")
        self.sample_max_bytes = (
            whole_number(self.sample_max_bytes, "sample_max_bytes", 1) or SAMPLE_MAX_BYTES
        )


@dataclass
class Diff(Params):
    archive: str = ""
    other: str = ""

    def check(self) -> None:
        validation.validate_existing_archive_name(self.other or "")
        if self.other == self.archive:
            raise InvalidInput("Compare an archive with a different archive.")


@dataclass
class Mount(Params):
    archive: str = ""
    mountpoint: str = ""

    def check(self) -> None:
        validation.require_under_roots(self.mountpoint or "/", settings.MOUNT_ROOTS, "Mount point")


@dataclass
class RestoreDatabase(Params):
    archive: str = ""
    database: str = ""  # SOURCE/DATABASE as listed in the backup's result
    into: str = ""  # another database name (an SQLite file's path); empty: the original
    force: bool = False  # restore over a database that is not empty

    def check(self) -> None:
        parts = (self.database or "").split("/")
        if len(parts) != 2:
            raise InvalidInput("database must be SOURCE/DATABASE (e.g. app-db/shop).")
        validation.validate_name(parts[0], "Database source")
        validation.validate_database_name(parts[1])
        if self.into and not self.into.startswith("/"):
            validation.validate_database_name(self.into)
        elif self.into:
            validation.validate_source_path(self.into)
        self.force = bool(self.force)


SPECS = {
    Job.Kind.RESTORE_DATABASE: RestoreDatabase,
    Job.Kind.BACKUP: Backup,
    Job.Kind.PRUNE: Prune,
    Job.Kind.CHECK: Check,
    Job.Kind.EXTRACT: Extract,
    Job.Kind.DOWNLOAD: Download,
    Job.Kind.RESTORE: Restore,
    Job.Kind.VERIFY_RESTORE: VerifyRestore,
    Job.Kind.DIFF: Diff,
    Job.Kind.MOUNT: Mount,
    Job.Kind.DELETE: OneArchive,
    Job.Kind.CONTENTS: OneArchive,
    Job.Kind.INDEX: Index,
}


def clean(kind: str, raw: dict | None) -> dict:
    """Validate and normalise a request's parameters; the dict stored on its Job."""
    raw = dict(raw or {})
    spec = SPECS.get(kind)
    if spec is None:  # the other kinds' few values are checked by their doors and intake
        return raw
    params = spec.from_raw(raw)
    params.check()
    return params.as_dict()


def load(kind: str, stored: dict):
    """A job's stored parameters as its kind's dataclass, defaults filled in (no check: they
    were checked when the job was made)."""
    spec = SPECS.get(kind)
    return spec.from_raw(stored or {}) if spec else dict(stored or {})
