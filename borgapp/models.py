"""The catalog of record: repositories, archives, policies, schedules and job runs.

Every read (admin lists, API lists, dashboards, metrics) comes from these rows, never from
borg. Model methods carry the domain rules.
"""

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import models
from django.utils import timezone

from borgapp import borg, dumps, outbound, validation, vault

ENCRYPTION_MODES = [
    ("repokey-blake2", "repokey-blake2 (recommended)"),
    ("repokey", "repokey"),
    ("keyfile-blake2", "keyfile-blake2"),
    ("keyfile", "keyfile"),
    ("authenticated-blake2", "authenticated-blake2 (no encryption)"),
    ("authenticated", "authenticated (no encryption)"),
    ("none", "none"),
]


def _django_validator(func, *args):
    def validator(value):
        try:
            func(value, *args)
        except validation.InvalidInput as exc:
            raise ValidationError(str(exc)) from None

    validator.__name__ = func.__name__
    return validator


def validate_location_field(value):
    try:
        validation.validate_location(value, settings.REPOSITORY_ROOTS)
    except validation.InvalidInput as exc:
        raise ValidationError(str(exc)) from None


# Django's migration serializer needs importable names, so these wrap the pure rules once.
def validate_name_field(value):
    _django_validator(validation.validate_name)(value)


def validate_archive_part_field(value):
    _django_validator(validation.validate_archive_part)(value)


def validate_compression_field(value):
    _django_validator(validation.validate_compression)(value)


def validate_cron_field(value):
    _django_validator(validation.validate_cron)(value)


def validate_timezone_field(value):
    _django_validator(validation.validate_timezone)(value)


def validate_keep_within_field(value):
    _django_validator(validation.validate_keep_within)(value)


class Repository(models.Model):
    class State(models.TextChoices):
        PENDING = "pending", "Pending (being initialized or imported)"
        READY = "ready", "Ready"

    name = models.CharField(max_length=100, unique=True, validators=[validate_name_field])
    location = models.CharField(
        max_length=1024,
        unique=True,
        validators=[validate_location_field],
        help_text="Absolute path under an allowed root, or ssh://user@host[:port]/path",
    )
    encryption = models.CharField(max_length=32, choices=ENCRYPTION_MODES, default="repokey-blake2")
    passphrase_encrypted = models.TextField(blank=True, default="", editable=False)
    # A new passphrase waiting for a change-passphrase job (encrypted; cleared by the job).
    new_passphrase_encrypted = models.TextField(blank=True, default="", editable=False)
    # When the passphrase was last set (registration or a change): a recovery kit exported
    # before this no longer opens the repository (the dashboard reminds the admins).
    passphrase_changed_at = models.DateTimeField(null=True, blank=True, editable=False)
    append_only = models.BooleanField(default=False)
    state = models.CharField(max_length=16, choices=State.choices, default=State.PENDING)
    borg_id = models.CharField(max_length=64, blank=True, default="")

    # Repository statistics from the last `borg info` (cached; never read from borg on a page).
    total_size = models.BigIntegerField(null=True, blank=True)
    total_compressed_size = models.BigIntegerField(null=True, blank=True)
    unique_size = models.BigIntegerField(null=True, blank=True)
    unique_compressed_size = models.BigIntegerField(null=True, blank=True)
    total_chunks = models.BigIntegerField(null=True, blank=True)
    unique_chunks = models.BigIntegerField(null=True, blank=True)
    stats_updated_at = models.DateTimeField(null=True, blank=True)
    catalog_synced_at = models.DateTimeField(null=True, blank=True)
    # Set when a writing job ended early: the next backup resynchronises from `borg list`.
    catalog_stale = models.BooleanField(default=False, editable=False)

    # The lease (REL-03): which job may run borg on this repository right now.
    lease_job = models.ForeignKey(
        "Job", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    lease_since = models.DateTimeField(null=True, blank=True)
    # alert thresholds; empty uses the installation's default (settings)
    overdue_hours = models.PositiveIntegerField(
        null=True, blank=True, help_text="alert when the last backup is older (default 25)"
    )
    min_success_rate = models.FloatField(
        null=True, blank=True, help_text="percent of jobs over 30 days (default 99)"
    )
    min_deduplication = models.FloatField(
        null=True, blank=True, help_text="original over stored size (default 1.5)"
    )
    growth_factor = models.FloatField(
        null=True,
        blank=True,
        help_text="bytes/day of the last 7 days over the 30 before (default 2)",
    )
    growth_limit_bytes = models.BigIntegerField(
        null=True, blank=True, help_text="alert above this many stored bytes per day"
    )
    check_max_age_days = models.PositiveIntegerField(
        null=True, blank=True, help_text="alert when the last successful check is older (default 8)"
    )

    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]
        verbose_name_plural = "repositories"

    def __str__(self):
        return self.name

    def clean(self):
        super().clean()
        try:
            if self.location:
                self.location = validation.validate_location(
                    self.location, settings.REPOSITORY_ROOTS
                )
        except validation.InvalidInput:
            pass  # the field's own validator has said it (once), with the same words

    @property
    def has_passphrase(self) -> bool:
        return bool(self.passphrase_encrypted)

    def set_passphrase(self, passphrase: str) -> None:
        validation.validate_passphrase(passphrase)
        self.passphrase_encrypted = vault.encrypt(passphrase) if passphrase else ""
        self.passphrase_changed_at = timezone.now()

    def get_passphrase(self) -> str | None:
        """The stored passphrase, or None for a repository stored without one."""
        if not self.passphrase_encrypted:
            return None
        return vault.decrypt(self.passphrase_encrypted)

    @property
    def deduplication_ratio(self) -> float | None:
        """Original size of all archives over the space they take: higher is better."""
        if self.total_size and self.unique_compressed_size:
            return self.total_size / self.unique_compressed_size
        return None

    def last_successful_backup(self):
        return self.archives.filter(is_checkpoint=False).order_by("-start").only("start").first()


class Archive(models.Model):
    repository = models.ForeignKey(Repository, on_delete=models.CASCADE, related_name="archives")
    name = models.CharField(max_length=255)
    borg_id = models.CharField(max_length=64, blank=True, default="")
    start = models.DateTimeField(null=True, blank=True)
    end = models.DateTimeField(null=True, blank=True)
    duration = models.FloatField(null=True, blank=True, help_text="seconds")
    hostname = models.CharField(max_length=255, blank=True, default="")
    username = models.CharField(max_length=255, blank=True, default="")
    comment = models.TextField(blank=True, default="")
    original_size = models.BigIntegerField(null=True, blank=True)
    compressed_size = models.BigIntegerField(null=True, blank=True)
    deduplicated_size = models.BigIntegerField(null=True, blank=True)
    nfiles = models.BigIntegerField(null=True, blank=True)
    is_checkpoint = models.BooleanField(default=False)
    created_by_app = models.BooleanField(default=False)
    synced_at = models.DateTimeField(default=timezone.now)
    # The file listing (ArchiveItem rows) is loaded once by a `contents` job; it belongs to
    # the borg archive id it was read from, so a re-used name never shows stale files.
    contents_borg_id = models.CharField(max_length=64, blank=True, default="", editable=False)
    contents_count = models.BigIntegerField(null=True, blank=True, editable=False)
    # The stored items whose folder borg did not store (a source `/usr/share/doc` stores no
    # `usr` or `usr/share`): the folder tree synthesizes the folders above them.
    contents_tops = models.JSONField(default=list, blank=True, editable=False)

    class Meta:
        ordering = ["-start", "-id"]
        constraints = [
            models.UniqueConstraint(fields=["repository", "name"], name="archive_unique_name")
        ]
        indexes = [
            # the archive list's order (newest first, id breaks ties) straight from the index
            models.Index(fields=["repository", "-start", "-id"], name="archive_repo_start_id"),
            # covers the per-repository count and newest start of complete archives
            models.Index(fields=["repository", "is_checkpoint", "start"], name="archive_complete"),
        ]

    def __str__(self):
        return self.name

    @property
    def compression_ratio(self) -> float | None:
        """Original over compressed size: higher is better."""
        if self.original_size and self.compressed_size:
            return self.original_size / self.compressed_size
        return None

    @property
    def deduplication_ratio(self) -> float | None:
        """Original over the new space this archive added: higher is better."""
        if self.original_size and self.deduplicated_size:
            return self.original_size / self.deduplicated_size
        return None

    @property
    def contents_ready(self) -> bool:
        return bool(self.contents_borg_id) and self.contents_borg_id == self.borg_id


class ArchiveItem(models.Model):
    """One file, directory or link of an archive, as `borg list --json-lines` printed it.
    Archives never change, so this is read from borg once and served from here."""

    archive = models.ForeignKey(Archive, on_delete=models.CASCADE, related_name="items")
    path = models.TextField()
    parent = models.TextField(help_text="the directory holding this item ('' at the top)")
    type = models.CharField(max_length=1)
    mode = models.CharField(max_length=10, blank=True, default="")
    user = models.CharField(max_length=255, blank=True, default="")
    group = models.CharField(max_length=255, blank=True, default="")
    size = models.BigIntegerField(null=True, blank=True)
    mtime = models.DateTimeField(null=True, blank=True)
    linktarget = models.TextField(blank=True, default="")
    healthy = models.BooleanField(default=True)

    class Meta:
        indexes = [
            models.Index(fields=["archive", "path"], name="item_archive_path"),
            models.Index(fields=["archive", "parent", "path"], name="item_archive_parent"),
        ]

    def __str__(self):
        return self.path


class ArchiveDiff(models.Model):
    """`borg diff` of two archives of one repository, read once by a `diff` job."""

    archive = models.ForeignKey(Archive, on_delete=models.CASCADE, related_name="diffs")
    other = models.ForeignKey(Archive, on_delete=models.CASCADE, related_name="+")
    archive_borg_id = models.CharField(max_length=64)
    other_borg_id = models.CharField(max_length=64)
    count = models.BigIntegerField(default=0)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["archive", "other"], name="diff_unique_pair")
        ]

    @property
    def is_current(self) -> bool:
        return (
            self.archive_borg_id == self.archive.borg_id
            and self.other_borg_id == self.other.borg_id
        )


class ArchiveDiffItem(models.Model):
    class Change(models.TextChoices):
        ADDED = "added", "Added"
        REMOVED = "removed", "Removed"
        MODIFIED = "modified", "Content changed"
        METADATA = "metadata", "Metadata changed"

    diff = models.ForeignKey(ArchiveDiff, on_delete=models.CASCADE, related_name="items")
    path = models.TextField()
    change = models.CharField(max_length=10, choices=Change.choices)
    changes = models.JSONField(default=list)

    class Meta:
        indexes = [models.Index(fields=["diff", "path"], name="diffitem_diff_path")]


# --- the file index (issue 16, borgapp.fileindex) ---------------------------------------------


class IndexSpan(models.Model):
    """Paths, packed: the entries numbered `start` to `start + count - 1` are the items named
    in `names` (borgapp.filenames.pack: the names joined by NUL, deflated) of the folder
    whose own entry is numbered `folder` (0: the top). An entry's number is its node: the
    versions of a path (IndexVersion.node_id) and the search of names use it. No path is
    stored whole, none twice; a folder's names are added as new spans, never rewritten, so
    a number always means the same path. 8 bytes an entry where a row per name and per
    path took 104 (bench/index_layout_probe.py)."""

    start = models.BigIntegerField(primary_key=True)
    folder = models.BigIntegerField()
    count = models.IntegerField()
    names = models.BinaryField()

    class Meta:
        indexes = [models.Index(fields=["folder", "start"], name="indexspan_folder")]


class IndexSearchName(models.Model):
    """PostgreSQL: each entry's name by its number, for the trigram index (pg_trgm, GIN) that
    a name search reads. SQLite keeps no such rows: its FTS5 trigram index holds the names'
    trigrams only (borgapp.filenames)."""

    num = models.BigIntegerField(primary_key=True)
    name = models.TextField()


class IndexOwner(models.Model):
    """Each user:group pair once (a handful per installation)."""

    user = models.CharField(max_length=64, blank=True, default="")
    group = models.CharField(max_length=64, blank=True, default="")

    class Meta:
        constraints = [models.UniqueConstraint(fields=["user", "group"], name="indexowner_pair")]


class IndexChain(models.Model):
    """Archives of one backup set of a repository, indexed one after the other: an entry
    that stays the same from one archive to the next is stored once for the whole run."""

    repository = models.ForeignKey(Repository, on_delete=models.CASCADE,
                                   related_name="index_chains")  # fmt: skip
    key = models.CharField(max_length=255)
    last_seq = models.IntegerField(default=0)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["repository", "key"], name="indexchain_unique")
        ]


class IndexedArchive(models.Model):
    """An archive whose entries are in the index: its place (`seq`) in its chain."""

    archive = models.OneToOneField(Archive, on_delete=models.CASCADE, related_name="indexed")
    chain = models.ForeignKey(IndexChain, on_delete=models.CASCADE, related_name="archives")
    seq = models.IntegerField()
    borg_id = models.CharField(max_length=64)
    entries = models.BigIntegerField(default=0)
    changed = models.BigIntegerField(default=0, help_text="versions new in this archive")
    reused = models.BigIntegerField(
        default=0, help_text="entries found equal to the previous archive's by their prints"
    )
    # items whose folder borg did not store (a source /srv/www stores no srv): the tree
    # shows the folders above them so that every item can be reached from the top
    tops = models.JSONField(default=list, blank=True)
    seconds = models.FloatField(default=0)
    indexed_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["chain", "seq"], name="indexedarchive_seq")]


class IndexVersion(models.Model):
    """One version of a path (type, size, time, mode, owner, link) as the archives `first` to
    `last` of its chain hold it; `last` None: up to the chain's newest archive. Times are
    microseconds since the epoch (UTC), modes the permission bits. `content`: a regular
    file's content identity (borgapp.itemlist), None where borg gave none.

    Keyed by (node, chain, first), with no id of its own: the versions of a path are then
    found without a second index, and on SQLite the table is that key's tree alone
    (WITHOUT ROWID, migrations 0029 and 0030), 58 bytes a version down to 45. A later
    migration that remakes this table on SQLite must keep WITHOUT ROWID (Django's remake
    drops it). `node_id`: the path's number (IndexSpan)."""

    pk = models.CompositePrimaryKey("node_id", "chain", "first")
    node_id = models.BigIntegerField()
    chain = models.ForeignKey(IndexChain, on_delete=models.CASCADE, db_index=False,
                              related_name="+")  # fmt: skip
    first = models.IntegerField()
    last = models.IntegerField(null=True)
    type = models.CharField(max_length=1)
    mode = models.IntegerField(default=0)
    owner = models.ForeignKey(IndexOwner, on_delete=models.PROTECT, db_index=False,
                              related_name="+")  # fmt: skip
    size = models.BigIntegerField(null=True)
    mtime = models.BigIntegerField(null=True)
    target = models.TextField(blank=True, default="")
    healthy = models.BooleanField(default=True)
    content = models.BigIntegerField(null=True)


class RetentionPolicy(models.Model):
    KEEP_FIELDS = list(borg.KEEP_COUNTS)

    name = models.CharField(max_length=100, unique=True, validators=[validate_name_field])
    keep_within = models.CharField(
        max_length=16,
        blank=True,
        default="",
        validators=[validate_keep_within_field],
        help_text="Keep everything within this interval, e.g. 7d, 12H, 2w, 1m, 1y.",
    )
    keep_last = models.PositiveIntegerField(null=True, blank=True)
    keep_hourly = models.PositiveIntegerField(null=True, blank=True)
    keep_daily = models.PositiveIntegerField(null=True, blank=True)
    keep_weekly = models.PositiveIntegerField(null=True, blank=True)
    keep_monthly = models.PositiveIntegerField(null=True, blank=True)
    keep_yearly = models.PositiveIntegerField(null=True, blank=True)
    is_recommended = models.BooleanField(default=False, editable=False)

    class Meta:
        ordering = ["name"]
        verbose_name_plural = "retention policies"

    def __str__(self):
        return self.name

    def clean(self):
        super().clean()
        if not self.keep_within and not any(getattr(self, f) for f in self.KEEP_FIELDS):
            raise ValidationError("Set at least one keep rule (keep_within or a keep_* count).")

    def borg_options(self) -> list[str]:
        return borg.keep_flags(
            keep_within=self.keep_within, **{f: getattr(self, f) for f in self.KEEP_FIELDS}
        )


class DatabaseSource(models.Model):
    """A database a backup can dump into its archive (streamed, no temporary copy on disk):
    where it is, how to sign in (the password stored encrypted, like a passphrase), and which
    of its databases to dump (none listed: all of them)."""

    class Kind(models.TextChoices):
        POSTGRESQL = "postgresql", "PostgreSQL"
        MARIADB = "mariadb", "MariaDB / MySQL"
        SQLITE = "sqlite", "SQLite"

    name = models.CharField(max_length=100, unique=True, validators=[validate_name_field])
    kind = models.CharField(max_length=12, choices=Kind.choices)
    host = models.CharField(max_length=255, blank=True, default="127.0.0.1",
                            help_text="server host (PostgreSQL, MariaDB)")  # fmt: skip
    port = models.PositiveIntegerField(null=True, blank=True, help_text="empty: the default")
    username = models.CharField(max_length=100, blank=True, default="")
    password_encrypted = models.TextField(blank=True, default="", editable=False)
    databases = models.JSONField(
        default=list, blank=True,
        help_text="names to dump, one per line; none: every database of the server",
    )  # fmt: skip
    path = models.CharField(max_length=4096, blank=True, default="",
                            help_text="SQLite: the database file (absolute path)")  # fmt: skip
    agent_host = models.ForeignKey(
        "Host", null=True, blank=True, on_delete=models.PROTECT, related_name="database_sources",
        verbose_name="fleet host",
        help_text="the machine whose agent dumps it (the server and file are as that machine "
        "sees them); empty: this ops center's own",
    )  # fmt: skip
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    ENGINES = {
        "django.db.backends.sqlite3": Kind.SQLITE,
        "django.db.backends.postgresql": Kind.POSTGRESQL,
        "django.db.backends.mysql": Kind.MARIADB,
    }

    class Meta:
        ordering = ["name"]

    def __str__(self):
        return self.name

    @classmethod
    def for_connection(cls, settings_dict: dict, name: str) -> "DatabaseSource":
        """A source (not saved) for a Django connection's settings: so the ops center can
        back up its own database to one of its repositories like any other."""
        kind = cls.ENGINES.get(settings_dict.get("ENGINE", ""))
        if kind is None:
            raise validation.InvalidInput(f"The database engine {settings_dict.get('ENGINE')!r} "
                                          "cannot be dumped here.")  # fmt: skip
        if kind == cls.Kind.SQLITE:
            return cls(name=name, kind=kind, path=str(settings_dict["NAME"]), host="")
        source = cls(
            name=name, kind=kind, host=settings_dict.get("HOST") or "127.0.0.1",
            port=int(settings_dict["PORT"]) if settings_dict.get("PORT") else None,
            username=settings_dict.get("USER") or "", databases=[settings_dict["NAME"]],
        )  # fmt: skip
        source.set_password(settings_dict.get("PASSWORD") or "")
        return source

    def spec(self) -> dumps.Source:
        """What the dump tools need, the password decrypted (borgapp.dumps)."""
        return dumps.Source(
            name=self.name, kind=self.kind, host=self.host, port=self.port,
            username=self.username, databases=tuple(self.databases or ()), path=self.path,
            password=self.get_password(),
        )  # fmt: skip

    def set_password(self, password: str) -> None:
        validation.validate_passphrase(password or "")  # no newline or NUL, bounded
        self.password_encrypted = vault.encrypt(password) if password else ""

    def get_password(self) -> str:
        return vault.decrypt(self.password_encrypted) if self.password_encrypted else ""

    def clean(self):
        super().clean()
        errors = {}
        if self.kind == self.Kind.SQLITE:
            if not self.path:
                errors["path"] = "An SQLite source needs the database file's absolute path."
            else:
                try:
                    validation.validate_source_path(self.path)
                except validation.InvalidInput as exc:
                    errors["path"] = str(exc)
        elif not self.host:
            errors["host"] = "A server source needs a host."
        if self.port is not None and not 1 <= self.port <= 65535:
            errors["port"] = "A port between 1 and 65535."
        if not isinstance(self.databases, list):
            errors["databases"] = "Give a list of database names."
        else:
            for name in self.databases:
                try:
                    validation.validate_database_name(name)
                except validation.InvalidInput as exc:
                    errors["databases"] = str(exc)
        for field_name in ("host", "username"):
            try:
                validation.no_control_chars(getattr(self, field_name), field_name.capitalize())
            except validation.InvalidInput as exc:
                errors[field_name] = str(exc)
        if errors:
            raise ValidationError(errors)


class Host(models.Model):
    """A machine whose data is backed up by its own agent (issue 15). The agent connects out
    to the center, takes the jobs of its host and runs borg there. Jobs and schedules without
    a host run on the center itself (the built-in local host)."""

    class State(models.TextChoices):
        PENDING = "pending", "Waiting for its agent to enroll"
        ACTIVE = "active", "Active"
        REVOKED = "revoked", "Revoked"

    name = models.CharField(max_length=100, unique=True, validators=[validate_name_field])
    state = models.CharField(max_length=10, choices=State.choices, default=State.PENDING)
    # Only hashes are kept: the one-time enrollment token (shown once, expires) and the
    # agent's own credential, which the agent keeps (0600) on its host.
    token_hash = models.CharField(max_length=64, blank=True, default="", editable=False)
    token_expires = models.DateTimeField(null=True, blank=True, editable=False)
    credential_hash = models.CharField(max_length=64, blank=True, default="", editable=False)
    last_seen = models.DateTimeField(null=True, blank=True, editable=False)
    address = models.CharField(max_length=64, blank=True, default="", editable=False)
    agent_version = models.CharField(max_length=40, blank=True, default="", editable=False)
    borg_version = models.CharField(max_length=40, blank=True, default="", editable=False)
    # The agent's own ssh key (made at enrollment): the center writes the authorized_keys line
    # that limits it to appending to one repository (borgapp.fleet.authorized_keys_line).
    ssh_public_key = models.TextField(blank=True, default="", editable=False)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]

    def __str__(self):
        return self.name


class Schedule(models.Model):
    """What to run, on which repositories, and when. Each row is mirrored into exactly one
    django-q2 schedule (`scheduling.mirror`); every run makes one Job per repository."""

    class Operation(models.TextChoices):
        BACKUP = "backup", "Backup"
        PRUNE = "prune", "Prune"
        COMPACT = "compact", "Compact"
        CHECK = "check", "Check"
        VERIFY_RESTORE = "verify_restore", "Verify restore"

    class CheckScope(models.TextChoices):
        BOTH = "both", "Repository and archives"
        REPOSITORY = "repository", "Repository only"
        ARCHIVES = "archives", "Archives only"

    name = models.CharField(max_length=100, unique=True, validators=[validate_name_field])
    repositories = models.ManyToManyField(Repository, related_name="schedules")
    host = models.ForeignKey(
        Host, null=True, blank=True, on_delete=models.PROTECT, related_name="schedules",
        help_text="the machine whose data this backs up (empty: this ops center's own)",
    )  # fmt: skip
    operation = models.CharField(max_length=20, choices=Operation.choices)
    cron = models.CharField(
        max_length=100,
        validators=[validate_cron_field],
        help_text="Five-field cron expression (minute hour day month weekday), e.g. 0 2 * * *",
    )
    timezone = models.CharField(max_length=64, default="UTC", validators=[validate_timezone_field])
    enabled = models.BooleanField(default=True)
    paused_until = models.DateTimeField(
        null=True, blank=True, help_text="No runs before this time (a pause that ends by itself)."
    )
    # backup
    source_paths = models.JSONField(default=list, blank=True)
    exclude_patterns = models.JSONField(default=list, blank=True)
    compression = models.CharField(
        max_length=32, default="lz4", validators=[validate_compression_field]
    )
    one_file_system = models.BooleanField(default=False)
    checkpoint_interval = models.PositiveIntegerField(null=True, blank=True, help_text="seconds")
    archive_prefix = models.CharField(
        max_length=100,
        default="backup",
        validators=[validate_archive_part_field],
        help_text="Archives are named PREFIX-TIME in UTC (backup-2026-12-02T02:00:00Z); prune and "
        "verify-restore only ever look at archives with this prefix.",
    )
    comment = models.CharField(max_length=500, blank=True, default="")
    # prune
    retention_policy = models.ForeignKey(
        RetentionPolicy, null=True, blank=True, on_delete=models.PROTECT
    )
    compact_after_prune = models.BooleanField(default=True)
    # check
    check_scope = models.CharField(
        max_length=12, choices=CheckScope.choices, default=CheckScope.BOTH
    )
    verify_data = models.BooleanField(default=False)
    max_duration = models.PositiveIntegerField(
        null=True, blank=True, help_text="seconds; a partial repository check for big repositories"
    )
    check_last = models.PositiveIntegerField(
        null=True, blank=True, help_text="check only the last N archives"
    )
    # verify-restore
    sample_files = models.PositiveIntegerField(
        default=20, help_text="how many files of the newest archive to restore and compare"
    )
    sample_percent = models.PositiveSmallIntegerField(
        null=True, blank=True, help_text="or this share of its files (1-100), if set"
    )
    sample_max_bytes = models.BigIntegerField(
        default=100 * 1024 * 1024, help_text="upper bound of the bytes restored per run"
    )
    databases = models.ManyToManyField(
        DatabaseSource, blank=True, related_name="schedules",
        help_text="dumped into each archive beside the source paths",
    )  # fmt: skip
    # hooks: commands run by the worker before and after each job of this schedule (argv
    # lists, no shell). Configuration only admins write (admin, CLI); the API never writes them.
    hooks_before = models.JSONField(
        default=list, blank=True,
        help_text="Run before borg, in order; one that fails stops the job (borg never runs).",
    )  # fmt: skip
    hooks_after_success = models.JSONField(
        default=list, blank=True,
        help_text="Run when the job succeeded; one that fails makes it a warning.",
    )  # fmt: skip
    hooks_after_failure = models.JSONField(
        default=list, blank=True,
        help_text="Run when the job failed, was cancelled or was stopped by a failing hook.",
    )  # fmt: skip
    hooks_always_after = models.JSONField(
        default=list, blank=True,
        help_text="Run last, whatever happened (restart what a before-hook stopped).",
    )  # fmt: skip
    hook_timeout = models.PositiveIntegerField(
        default=300, help_text="seconds each hook may run before it is stopped (and fails)"
    )
    # dead-man pings (healthchecks.io, Uptime Kuma): GET on start, success and failure. A ping
    # URL is a secret (whoever has it can silence the dead-man switch): stored encrypted, read
    # with get_ping or the ping_*_url properties, shown masked (shown_ping).
    ping_start_encrypted = models.TextField(blank=True, default="", editable=False)
    ping_success_encrypted = models.TextField(blank=True, default="", editable=False)
    ping_failure_encrypted = models.TextField(blank=True, default="", editable=False)
    # derived, kept current by the jobs (read by lists without scanning jobs)
    last_run_at = models.DateTimeField(null=True, blank=True, editable=False)
    last_outcome = models.CharField(max_length=16, blank=True, default="", editable=False)
    last_success_at = models.DateTimeField(null=True, blank=True, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]

    def __str__(self):
        return self.name

    PINGS = ("start", "success", "failure")

    def set_ping(self, which: str, url: str) -> None:
        url = (url or "").strip()
        setattr(self, f"ping_{which}_encrypted", vault.encrypt(url) if url else "")

    def get_ping(self, which: str) -> str:
        """The ping URL; raises vault.VaultError if it cannot be decrypted."""
        token = getattr(self, f"ping_{which}_encrypted")
        return vault.decrypt(token) if token else ""

    def shown_ping(self, which: str) -> str:
        """Scheme and host only: what anyone but an admin sees of a ping URL."""
        try:
            return outbound.mask(self.get_ping(which))
        except vault.VaultError:
            return "(stored, but cannot be decrypted with the configured key)"

    def _ping_or_nothing(self, which: str) -> str:
        try:
            return self.get_ping(which)
        except vault.VaultError as exc:  # a ping never breaks a job: no ping, and a warning
            import logging

            logging.getLogger(__name__).warning("Schedule %s: ping %s: %s", self, which, exc)
            return ""

    # The URLs as properties (also accepted as Schedule(ping_start_url=...)): reading never
    # raises, a URL that cannot be decrypted reads as none.
    @property
    def ping_start_url(self) -> str:
        return self._ping_or_nothing("start")

    @ping_start_url.setter
    def ping_start_url(self, url: str) -> None:
        self.set_ping("start", url)

    @property
    def ping_success_url(self) -> str:
        return self._ping_or_nothing("success")

    @ping_success_url.setter
    def ping_success_url(self, url: str) -> None:
        self.set_ping("success", url)

    @property
    def ping_failure_url(self) -> str:
        return self._ping_or_nothing("failure")

    @ping_failure_url.setter
    def ping_failure_url(self, url: str) -> None:
        self.set_ping("failure", url)

    def clean(self):
        super().clean()
        errors = {}
        if self.operation == self.Operation.BACKUP:
            if not self.source_paths:
                errors["source_paths"] = "A backup schedule needs at least one source path."
            for key, check in (
                ("source_paths", validation.validate_source_path),
                ("exclude_patterns", validation.validate_exclude_pattern),
            ):
                values = getattr(self, key)
                if not isinstance(values, list):
                    errors[key] = "Give a list."
                    continue
                for value in values:
                    try:
                        check(value)
                    except validation.InvalidInput as exc:
                        errors[key] = str(exc)
        if self.operation == self.Operation.PRUNE and self.retention_policy_id is None:
            errors["retention_policy"] = "A prune schedule needs a retention policy."
        if self.operation == self.Operation.CHECK:
            if self.verify_data and self.check_scope == self.CheckScope.REPOSITORY:
                errors["verify_data"] = "verify-data checks archives; not with repository only."
            if self.max_duration and self.check_scope != self.CheckScope.REPOSITORY:
                errors["max_duration"] = "max-duration works only with a repository-only check."
        for stage in validation.HOOK_STAGES:
            try:
                setattr(self, f"hooks_{stage}", validation.hook_list(self.hooks(stage), stage))
            except validation.InvalidInput as exc:
                errors[f"hooks_{stage}"] = str(exc)
        try:
            validation.hook_timeout(self.hook_timeout)
        except validation.InvalidInput as exc:
            errors["hook_timeout"] = str(exc)
        if self.sample_percent is not None and not 1 <= self.sample_percent <= 100:
            errors["sample_percent"] = "A share between 1 and 100."
        if self.sample_max_bytes is not None and self.sample_max_bytes < 1:
            errors["sample_max_bytes"] = "Must be at least 1 byte."
        if errors:
            raise ValidationError(errors)

    def hooks(self, stage: str) -> list:
        return getattr(self, f"hooks_{stage}") or []

    @property
    def has_hooks(self) -> bool:
        return any(self.hooks(stage) for stage in validation.HOOK_STAGES)

    @property
    def cron_description(self) -> str:
        return validation.describe_cron(self.cron)

    def timing_key(self) -> tuple:
        """What decides when it runs: a change here recomputes the next run."""
        return (" ".join(self.cron.split()), self.timezone, self.enabled, self.paused_until)

    @classmethod
    def from_db(cls, db, field_names, values):
        instance = super().from_db(db, field_names, values)
        if "cron" in instance.__dict__ and "paused_until" in instance.__dict__:
            instance._loaded_timing = instance.timing_key()
        return instance


class Job(models.Model):
    """One row per operation run: what, where, who, how it went."""

    class Kind(models.TextChoices):
        INIT = "init", "Initialize"
        IMPORT = "import", "Import"
        BACKUP = "backup", "Backup"
        SYNC = "sync", "Sync catalog"
        INFO = "info", "Info"
        PRUNE = "prune", "Prune"
        COMPACT = "compact", "Compact"
        CHECK = "check", "Check"
        EXTRACT = "extract", "Extract"
        DELETE = "delete", "Delete archive"
        MOUNT = "mount", "Mount"
        UMOUNT = "umount", "Unmount"
        KEY_EXPORT = "key_export", "Export key"
        CHANGE_PASSPHRASE = "change_passphrase", "Change passphrase"
        BREAK_LOCK = "break_lock", "Break lock"
        CONTENTS = "contents", "Load archive contents"
        INDEX = "index", "Index archive files"
        DIFF = "diff", "Compare archives"
        VERIFY_RESTORE = "verify_restore", "Verify restore"
        RESTORE_DATABASE = "restore_database", "Restore a database"
        DOWNLOAD = "download", "Download"
        RESTORE = "restore", "Restore in place"

    class Trigger(models.TextChoices):
        ADMIN = "admin", "Admin"
        API = "api", "API"
        SCHEDULE = "schedule", "Schedule"
        CLI = "cli", "Command line"
        SYSTEM = "system", "Ops center"  # what follows another job (the file index)

    class Status(models.TextChoices):
        QUEUED = "queued", "Queued"
        RUNNING = "running", "Running"
        SUCCEEDED = "succeeded", "Succeeded"
        WARNING = "warning", "Warning"
        FAILED = "failed", "Failed"
        INTERRUPTED = "interrupted", "Interrupted"
        CANCELLED = "cancelled", "Cancelled"
        SKIPPED = "skipped", "Skipped"

    FINISHED = {"succeeded", "warning", "failed", "interrupted", "cancelled", "skipped"}
    OK = ("succeeded", "warning")  # finished and did its work (a warning says what to look at)

    kind = models.CharField(max_length=24, choices=Kind.choices)
    repository = models.ForeignKey(
        Repository, null=True, blank=True, on_delete=models.SET_NULL, related_name="jobs"
    )
    repository_name = models.CharField(max_length=100, blank=True, default="")
    archive_name = models.CharField(max_length=255, blank=True, default="")
    trigger = models.CharField(max_length=16, choices=Trigger.choices)
    requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL
    )
    schedule = models.ForeignKey(Schedule, null=True, blank=True, on_delete=models.SET_NULL)
    # A job of a host runs on that host's agent only; without a host, on the center.
    host = models.ForeignKey(
        Host, null=True, blank=True, on_delete=models.PROTECT, related_name="jobs"
    )
    params = models.JSONField(default=dict, blank=True)
    inline = models.BooleanField(
        default=False, help_text="Run in the requesting process (CLI), not by a worker."
    )
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.QUEUED)

    progress_percent = models.FloatField(null=True, blank=True)
    progress_bytes = models.BigIntegerField(null=True, blank=True)
    progress_files = models.BigIntegerField(null=True, blank=True)
    progress_path = models.TextField(blank=True, default="")
    progress_message = models.CharField(max_length=500, blank=True, default="")

    created_at = models.DateTimeField(default=timezone.now)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)

    result = models.JSONField(default=dict, blank=True)
    error_code = models.CharField(max_length=40, blank=True, default="")
    error_message = models.TextField(blank=True, default="")
    log_tail = models.TextField(blank=True, default="")
    # what the schedule's hooks did: [{name, stage, exit, seconds, timed_out, output}]
    hook_log = models.JSONField(default=list, blank=True)

    # An exported key waiting for its one download (encrypted; cleared when fetched).
    secret_payload = models.TextField(blank=True, default="", editable=False)
    cancel_requested = models.BooleanField(default=False)
    # retries of transient failures (scheduled jobs): a retry waits until `not_before`
    attempt = models.PositiveSmallIntegerField(default=1)
    retry_of = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.SET_NULL, related_name="retries"
    )
    not_before = models.DateTimeField(null=True, blank=True)
    client_address = models.GenericIPAddressField(null=True, blank=True)
    worker_host = models.CharField(max_length=255, blank=True, default="")
    worker_pid = models.IntegerField(null=True, blank=True)
    worker_started = models.BigIntegerField(null=True, blank=True)
    borg_pid = models.IntegerField(null=True, blank=True)
    borg_started = models.BigIntegerField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [
            models.Index(fields=["repository", "status"], name="job_repo_status"),
            models.Index(fields=["status", "created_at"], name="job_status_created"),
            # the last finished job of a repository, and of a kind (dashboard, metrics)
            models.Index(fields=["repository", "finished_at"], name="job_repo_finished"),
            models.Index(fields=["kind", "finished_at"], name="job_kind_finished"),
            models.Index(fields=["kind", "status"], name="job_kind_status"),  # jobs_total
        ]

    def __str__(self):
        return f"{self.get_kind_display()} #{self.pk} ({self.status})"

    @property
    def duration(self) -> float | None:
        if self.started_at and self.finished_at:
            return (self.finished_at - self.started_at).total_seconds()
        return None

    @property
    def is_finished(self) -> bool:
        return self.status in self.FINISHED


class Mount(models.Model):
    """A FUSE mount the app made, so a restart knows what is mounted."""

    repository = models.ForeignKey(Repository, on_delete=models.CASCADE, related_name="mounts")
    archive_name = models.CharField(max_length=255, blank=True, default="")
    mountpoint = models.CharField(max_length=1024, unique=True)
    job = models.ForeignKey(Job, null=True, blank=True, on_delete=models.SET_NULL)
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self):
        return self.mountpoint


class WorkerHeartbeat(models.Model):
    """Written when the worker starts and by its maintenance task every minute; a stale value
    means no worker."""

    seen_at = models.DateTimeField()

    @classmethod
    def beat(cls) -> None:
        cls.objects.update_or_create(pk=1, defaults={"seen_at": timezone.now()})


class AuditQuerySet(models.QuerySet):
    def update(self, **kwargs):
        raise PermissionError("The audit trail is append-only.")

    def delete(self):
        raise PermissionError("The audit trail is append-only.")


class AuditEvent(models.Model):
    """One sensitive action, written after its outcome (SEC-09). Append-only: rows are never
    changed or deleted, not even by a superuser."""

    class Outcome(models.TextChoices):
        SUCCESS = "success", "Success"
        FAILURE = "failure", "Failure"
        REFUSED = "refused", "Refused"

    at = models.DateTimeField(default=timezone.now, db_index=True)
    actor = models.CharField(max_length=255, help_text="user name, with '(token)' for API tokens")
    # Plain ids, not foreign keys: deleting a user or a job must not touch the trail.
    user_id_ref = models.IntegerField(null=True, blank=True, verbose_name="user id")
    source = models.CharField(max_length=16, help_text="admin, api, cli, schedule or system")
    client_address = models.GenericIPAddressField(null=True, blank=True)
    action = models.CharField(max_length=40, db_index=True)
    target = models.CharField(max_length=255, blank=True, default="")
    params = models.JSONField(default=dict, blank=True)
    outcome = models.CharField(max_length=10, choices=Outcome.choices)
    message = models.TextField(blank=True, default="")
    job_id_ref = models.IntegerField(null=True, blank=True, verbose_name="job id")
    count = models.PositiveIntegerField(
        default=1,
        help_text="identical failed or refused sign-ins this row stands for, from the same "
        "address within five minutes of its time (audit.record_attempt)",
    )

    objects = AuditQuerySet.as_manager()

    class Meta:
        ordering = ["-at", "-id"]

    def __str__(self):
        return f"{self.at:%Y-%m-%d %H:%M:%S} {self.actor} {self.action} {self.target}"

    def save(self, *args, **kwargs):
        if self.pk is not None:
            raise PermissionError("The audit trail is append-only.")
        super().save(*args, **kwargs)

    def delete(self, *args, **kwargs):
        raise PermissionError("The audit trail is append-only.")


class Alert(models.Model):
    """A condition that needs a person: it fires once, stays firing while the condition holds
    (last_seen moves on), and resolves once; notifications go out on those two changes only."""

    class State(models.TextChoices):
        FIRING = "firing", "Firing"
        RESOLVED = "resolved", "Resolved"

    class Kind(models.TextChoices):
        OVERDUE = "overdue", "Last successful backup too old"
        SUCCESS_RATE = "success_rate", "Success rate too low"
        DEDUPLICATION = "deduplication", "Deduplication ratio too low"
        GROWTH = "growth", "Repository grows too fast"
        CHECK_AGE = "check_age", "Last successful check too old"
        JOB_OVERRUN = "job_overrun", "A job runs far longer than usual"
        WORKER = "worker", "Worker heartbeat stale"
        HOST_SILENT = "host_silent", "A host's agent is silent"

    kind = models.CharField(max_length=20, choices=Kind.choices)
    repository = models.ForeignKey(
        Repository, null=True, blank=True, on_delete=models.CASCADE, related_name="alerts"
    )
    state = models.CharField(max_length=10, choices=State.choices, default=State.FIRING)
    reason = models.TextField()
    first_seen = models.DateTimeField(default=timezone.now)
    last_seen = models.DateTimeField(default=timezone.now)
    resolved_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-last_seen"]
        indexes = [models.Index(fields=["state", "kind"], name="alert_state_kind")]
        # One firing alert per condition, even when several processes evaluate at once.
        constraints = [
            models.UniqueConstraint(
                fields=["kind", "repository"],
                condition=models.Q(state="firing", repository__isnull=False),
                name="alert_one_firing_per_repository",
            ),
            models.UniqueConstraint(
                fields=["kind"],
                condition=models.Q(state="firing", repository__isnull=True),
                name="alert_one_firing_per_installation",
            ),
        ]

    def __str__(self):
        where = f" on {self.repository.name}" if self.repository_id else ""
        return f"{self.get_kind_display()}{where} ({self.state})"


class Channel(models.Model):
    """Where notifications go: email, a signed webhook, or any Apprise URL."""

    class Kind(models.TextChoices):
        EMAIL = "email", "Email"
        WEBHOOK = "webhook", "Webhook (JSON POST, HMAC-SHA256 signed)"
        APPRISE = "apprise", "Apprise URL (ntfy, Slack, Discord, Telegram, Gotify, ...)"

    EVENTS = ["alert_firing", "alert_resolved", "job_failed", "job_warning", "job_succeeded",
              "daily_digest"]  # fmt: skip

    name = models.CharField(max_length=100, unique=True, validators=[validate_name_field])
    kind = models.CharField(max_length=10, choices=Kind.choices)
    # What anyone may see: an email channel's addresses as they are; of a webhook or Apprise
    # URL (tokens, passwords) only its scheme and host, the URL itself is target_encrypted.
    target = models.TextField(
        help_text="email: addresses separated by commas; webhook: https URL; apprise: its URL "
        "(URLs are stored encrypted, and shown as scheme and host only)"
    )
    target_encrypted = models.TextField(blank=True, default="", editable=False)
    secret_encrypted = models.TextField(blank=True, default="", editable=False)
    events = models.JSONField(default=list, help_text=f"any of: {', '.join(EVENTS)}")
    enabled = models.BooleanField(default=True)
    last_sent_at = models.DateTimeField(null=True, blank=True, editable=False)
    last_error = models.TextField(blank=True, default="", editable=False)
    last_error_at = models.DateTimeField(null=True, blank=True, editable=False)

    class Meta:
        ordering = ["name"]

    def __str__(self):
        return self.name

    def clean(self):
        super().clean()
        unknown = [e for e in self.events or [] if e not in self.EVENTS]
        if not isinstance(self.events, list) or unknown:
            raise ValidationError({"events": f"Choose from: {', '.join(self.EVENTS)}."})

    def save(self, *args, **kwargs):
        # Whatever way a URL was assigned to `target` (the admin form, Channel(target=...)),
        # it is stored encrypted, and `target` keeps only its masked form.
        if self.kind == self.Kind.EMAIL:
            self.target_encrypted = ""
        elif self.target and not self._target_sealed():
            self.set_target(self.target)
        super().save(*args, **kwargs)

    def _target_sealed(self) -> bool:
        if not self.target_encrypted:
            return False
        try:
            return self.target == outbound.mask(self.get_target())
        except vault.VaultError:
            return True  # cannot tell: leave the stored URL alone

    def set_target(self, target: str) -> None:
        target = (target or "").strip()
        if self.kind == self.Kind.EMAIL:
            self.target, self.target_encrypted = target, ""
        else:
            self.target_encrypted = vault.encrypt(target) if target else ""
            self.target = outbound.mask(target)

    def get_target(self) -> str:
        """Email addresses, or the webhook or Apprise URL (raises vault.VaultError if it
        cannot be decrypted). A URL channel never sends to its masked `target`."""
        if self.kind == self.Kind.EMAIL:
            return self.target
        return vault.decrypt(self.target_encrypted) if self.target_encrypted else ""

    def set_secret(self, secret: str) -> None:
        self.secret_encrypted = vault.encrypt(secret) if secret else ""

    def get_secret(self) -> str:
        return vault.decrypt(self.secret_encrypted) if self.secret_encrypted else ""


class RecoveryKitExport(models.Model):
    """That a recovery kit was exported (the kit itself is never stored): when, by whom,
    and which repositories it held, so the dashboard can say when a newer one is due."""

    created_at = models.DateTimeField(default=timezone.now)
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL
    )
    repositories = models.JSONField(default=list)
    sha256 = models.CharField(max_length=64, blank=True, default="")

    class Meta:
        ordering = ["-created_at"]

    def __str__(self):
        return f"recovery kit of {self.created_at:%Y-%m-%d %H:%M}"
