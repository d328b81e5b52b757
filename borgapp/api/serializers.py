"""API shapes. Secrets are write-only and never serialised back (SEC-03)."""

from datetime import datetime

from django.core.exceptions import ValidationError as DjangoValidationError
from rest_framework import serializers

from borgapp import params, scheduling, validation
from borgapp.models import (
    Alert,
    Archive,
    ArchiveDiffItem,
    ArchiveItem,
    AuditEvent,
    DatabaseSource,
    Host,
    Job,
    Repository,
    RetentionPolicy,
    Schedule,
)
from borgapp.roles import has_role


class FullCleanMixin:
    """Run the model's own validation (clean, field validators) so the API and the admin
    refuse the same things."""

    def validate(self, attrs):
        attrs = super().validate(attrs)
        instance = self.Meta.model(**{k: v for k, v in attrs.items() if not _is_m2m(self, k)})
        if self.instance is not None:
            for field in self.Meta.model._meta.concrete_fields:
                if field.name not in attrs:
                    setattr(instance, field.attname, getattr(self.instance, field.attname))
            instance._state.adding = False  # an update: its own row is not a duplicate
        try:
            instance.full_clean(exclude=self._clean_exclude())
        except DjangoValidationError as exc:
            raise serializers.ValidationError(exc.message_dict) from None
        return attrs

    def _clean_exclude(self):
        return []


def _is_m2m(serializer, name):
    field = serializer.Meta.model._meta.get_field(name)
    return field.many_to_many


class JobSerializer(serializers.ModelSerializer):
    url = serializers.HyperlinkedIdentityField(view_name="job-detail")
    duration = serializers.FloatField(read_only=True)
    requested_by = serializers.SlugRelatedField(slug_field="username", read_only=True)

    class Meta:
        model = Job
        fields = [
            "id",
            "url",
            "kind",
            "repository",
            "repository_name",
            "archive_name",
            "trigger",
            "requested_by",
            "schedule",
            "params",
            "status",
            "progress_percent",
            "progress_bytes",
            "progress_files",
            "progress_path",
            "progress_message",
            "created_at",
            "started_at",
            "finished_at",
            "duration",
            "result",
            "error_code",
            "error_message",
            "log_tail",
            "hook_log",
            "cancel_requested",
        ]
        read_only_fields = fields


class RepositorySerializer(serializers.ModelSerializer):
    passphrase = serializers.CharField(
        write_only=True,
        required=False,
        allow_blank=True,
        trim_whitespace=False,
        style={"input_type": "password"},
    )
    has_passphrase = serializers.BooleanField(read_only=True)
    deduplication_ratio = serializers.FloatField(read_only=True)
    archive_count = serializers.IntegerField(read_only=True)
    last_backup_at = serializers.DateTimeField(read_only=True)

    class Meta:
        model = Repository
        fields = [
            "id",
            "name",
            "location",
            "encryption",
            "append_only",
            "state",
            "borg_id",
            "passphrase",
            "has_passphrase",
            "total_size",
            "total_compressed_size",
            "unique_size",
            "unique_compressed_size",
            "total_chunks",
            "unique_chunks",
            "deduplication_ratio",
            "archive_count",
            "last_backup_at",
            "stats_updated_at",
            "catalog_synced_at",
            "created_at",
            "updated_at",
        ]
        read_only_fields = [
            "state",
            "borg_id",
            "total_size",
            "total_compressed_size",
            "unique_size",
            "unique_compressed_size",
            "total_chunks",
            "unique_chunks",
            "stats_updated_at",
            "catalog_synced_at",
            "created_at",
            "updated_at",
        ]


class RepositoryCreateSerializer(serializers.Serializer):
    name = serializers.CharField()
    location = serializers.CharField()
    passphrase = serializers.CharField(
        write_only=True, required=False, allow_blank=True, trim_whitespace=False
    )
    encryption = serializers.CharField(required=False, default="repokey-blake2")
    append_only = serializers.BooleanField(required=False, default=False)
    init = serializers.BooleanField(
        required=False, default=False, help_text="true: create it in borg; false: import it"
    )


class RepositoryUpdateSerializer(serializers.ModelSerializer):
    class Meta:
        model = Repository
        fields = ["name", "append_only"]


class ArchiveSerializer(serializers.ModelSerializer):
    repository_name = serializers.CharField(source="repository.name", read_only=True)
    compression_ratio = serializers.FloatField(read_only=True)
    deduplication_ratio = serializers.FloatField(read_only=True)

    class Meta:
        model = Archive
        fields = [
            "id",
            "repository",
            "repository_name",
            "name",
            "borg_id",
            "start",
            "end",
            "duration",
            "hostname",
            "username",
            "comment",
            "original_size",
            "compressed_size",
            "deduplicated_size",
            "nfiles",
            "compression_ratio",
            "deduplication_ratio",
            "is_checkpoint",
            "created_by_app",
            "synced_at",
        ]
        read_only_fields = fields


ARCHIVE_ROW_FIELDS = [
    f
    for f in ArchiveSerializer.Meta.fields
    if f not in ("compression_ratio", "deduplication_ratio")
]


def _iso(value, tz) -> str:
    # What DRF's DateTimeField prints, without its per-value time-zone lookups.
    text = value.astimezone(tz).isoformat()
    return text[:-6] + "Z" if text.endswith("+00:00") else text


def archive_row(values: dict, tz) -> dict:
    """An ArchiveSerializer row built from `.values(*ARCHIVE_ROW_FIELDS)`: the same output
    (a test compares them) at a fraction of the cost, for 100-row pages (PERF-01)."""
    row = dict(values)
    row["repository_name"] = row.pop("repository__name")
    for key in ("start", "end", "synced_at"):
        if row[key] is not None:
            row[key] = _iso(row[key], tz)
    original = row["original_size"]
    compressed, deduplicated = row["compressed_size"], row["deduplicated_size"]
    row["compression_ratio"] = original / compressed if original and compressed else None
    row["deduplication_ratio"] = original / deduplicated if original and deduplicated else None
    return row


def archive_values(queryset):
    fields = ["repository__name" if f == "repository_name" else f for f in ARCHIVE_ROW_FIELDS]
    return queryset.values(*fields)


class ArchiveItemSerializer(serializers.ModelSerializer):
    class Meta:
        model = ArchiveItem
        fields = [
            "path",
            "parent",
            "type",
            "mode",
            "user",
            "group",
            "size",
            "mtime",
            "linktarget",
            "healthy",
        ]
        read_only_fields = fields


class ArchiveDiffItemSerializer(serializers.ModelSerializer):
    changes = serializers.ListField(child=serializers.DictField(), read_only=True)

    class Meta:
        model = ArchiveDiffItem
        fields = ["path", "change", "changes"]
        read_only_fields = fields


class _Page(serializers.Serializer):
    count = serializers.IntegerField()
    next = serializers.URLField(allow_null=True)
    previous = serializers.URLField(allow_null=True)


class ArchiveItemPageSerializer(_Page):
    results = ArchiveItemSerializer(many=True)


class ArchiveDiffPageSerializer(_Page):
    results = ArchiveDiffItemSerializer(many=True)


class DatabaseSourceSerializer(FullCleanMixin, serializers.ModelSerializer):
    password = serializers.CharField(
        write_only=True, required=False, allow_blank=True, trim_whitespace=False,
        help_text="Stored encrypted; never returned. Omit it on an update to keep the stored one.",
    )  # fmt: skip
    password_stored = serializers.SerializerMethodField()
    fleet_host = serializers.SlugRelatedField(
        source="agent_host", slug_field="name", queryset=Host.objects.all(), required=False,
        allow_null=True, help_text="the host whose agent dumps it; null: the ops center's own",
    )  # fmt: skip

    class Meta:
        model = DatabaseSource
        fields = ["id", "name", "kind", "host", "port", "username", "password",
                  "password_stored", "databases", "path", "fleet_host", "created_at",
                  "updated_at"]  # fmt: skip
        read_only_fields = ["created_at", "updated_at"]

    def get_password_stored(self, source) -> bool:
        return bool(source.password_encrypted)

    def validate(self, attrs):
        password = attrs.pop("password", None)
        attrs = super().validate(attrs)
        if password is not None:
            try:
                validation.validate_passphrase(password)
            except validation.InvalidInput as exc:
                raise serializers.ValidationError({"password": [str(exc)]}) from None
            attrs["password"] = password
        return attrs

    def _save_with_password(self, instance, password):
        if password is not None:
            instance.set_password(password)
            instance.save(update_fields=["password_encrypted"])
        return instance

    def create(self, validated_data):
        password = validated_data.pop("password", None)
        return self._save_with_password(super().create(validated_data), password)

    def update(self, instance, validated_data):
        password = validated_data.pop("password", None)
        return self._save_with_password(super().update(instance, validated_data), password)


class RetentionPolicySerializer(FullCleanMixin, serializers.ModelSerializer):
    class Meta:
        model = RetentionPolicy
        fields = ["id", "name", "keep_within", *RetentionPolicy.KEEP_FIELDS, "is_recommended"]
        read_only_fields = ["is_recommended"]


class ScheduleSerializer(FullCleanMixin, serializers.ModelSerializer):
    repositories = serializers.SlugRelatedField(
        slug_field="name", many=True, queryset=Repository.objects.all()
    )
    databases = serializers.SlugRelatedField(
        slug_field="name", many=True, queryset=DatabaseSource.objects.all(), required=False
    )
    retention_policy = serializers.SlugRelatedField(
        slug_field="name",
        queryset=RetentionPolicy.objects.all(),
        required=False,
        allow_null=True,
    )

    class Meta:
        model = Schedule
        fields = [
            "id",
            "name",
            "repositories",
            "operation",
            "cron",
            "timezone",
            "enabled",
            "paused_until",
            "source_paths",
            "exclude_patterns",
            "compression",
            "one_file_system",
            "checkpoint_interval",
            "archive_prefix",
            "comment",
            "databases",
            "retention_policy",
            "compact_after_prune",
            "check_scope",
            "verify_data",
            "max_duration",
            "check_last",
            "sample_files",
            "sample_percent",
            "sample_max_bytes",
            "cron_description",
            "next_run",
            "hooks",
            "last_run_at",
            "last_outcome",
            "last_success_at",
            "created_at",
            "updated_at",
        ]
        read_only_fields = [
            "cron_description",
            "next_run",
            "last_run_at",
            "last_outcome",
            "last_success_at",
            "created_at",
            "updated_at",
        ]

    cron_description = serializers.CharField(read_only=True)
    next_run = serializers.SerializerMethodField()
    hooks = serializers.SerializerMethodField(
        help_text="Admins only (null for other roles), and read-only: hooks run commands on "
        "the server, so they are set in the admin or with `manage.py borg_schedule hooks`, "
        "never through the API. A write that includes hooks is refused with 400. Shape: "
        '{"before": [[argv...]], "after_success": [...], "after_failure": [...], '
        '"always_after": [...], "timeout": seconds}.'
    )

    def get_next_run(self, schedule) -> datetime | None:
        return scheduling.next_run(schedule)

    def get_hooks(self, schedule) -> dict | None:
        request = self.context.get("request")
        if request is None or not has_role(request.user, "admin"):
            return None
        shown = {stage: schedule.hooks(stage) for stage in validation.HOOK_STAGES}
        return {**shown, "timeout": schedule.hook_timeout}

    HOOK_KEYS = ("hooks", *(f"hooks_{stage}" for stage in validation.HOOK_STAGES), "hook_timeout")

    def to_internal_value(self, data):
        given = [key for key in self.HOOK_KEYS if hasattr(data, "keys") and key in data]
        if given:
            refusal = (
                "Hooks run commands on the server: set them in the admin or with "
                "`manage.py borg_schedule hooks`; the API does not write them."
            )
            raise serializers.ValidationError({key: [refusal] for key in given})
        return super().to_internal_value(data)

    def validate_repositories(self, value):
        if not value:
            raise serializers.ValidationError("Choose at least one repository.")
        return value


class AuditEventSerializer(serializers.ModelSerializer):
    class Meta:
        model = AuditEvent
        fields = [
            "id", "at", "actor", "user_id_ref", "source", "client_address", "action", "target",
            "params", "outcome", "count", "message", "job_id_ref",
        ]  # fmt: skip
        read_only_fields = fields


class AlertSerializer(serializers.ModelSerializer):
    kind_display = serializers.CharField(source="get_kind_display", read_only=True)
    repository_name = serializers.CharField(
        source="repository.name", read_only=True, allow_null=True, default=None
    )

    class Meta:
        model = Alert
        fields = [
            "id", "kind", "kind_display", "repository", "repository_name", "state", "reason",
            "first_seen", "last_seen", "resolved_at",
        ]  # fmt: skip
        read_only_fields = fields


class JobListSerializer(serializers.Serializer):
    jobs = JobSerializer(many=True)


class BackupRequestSerializer(serializers.Serializer):
    host = serializers.CharField(
        required=False, help_text="run it on this host's agent (its files are there)"
    )
    sources = serializers.ListField(child=serializers.CharField(), required=False, default=list)
    databases = serializers.ListField(
        child=serializers.CharField(), required=False, default=list,
        help_text="database sources (their names) dumped into the archive beside the sources",
    )  # fmt: skip
    excludes = serializers.ListField(child=serializers.CharField(), required=False, default=list)
    prefix = serializers.CharField(required=False, default=params.BACKUP_PREFIX)
    compression = serializers.CharField(required=False, default=params.COMPRESSION)
    comment = serializers.CharField(required=False, allow_blank=True, default="")
    one_file_system = serializers.BooleanField(required=False, default=False)
    checkpoint_interval = serializers.IntegerField(required=False, allow_null=True, min_value=1)


class PruneRequestSerializer(serializers.Serializer):
    prefix = serializers.CharField()
    policy = serializers.CharField(required=False, allow_blank=True)
    keep_within = serializers.CharField(required=False, allow_blank=True)
    keep_last = serializers.IntegerField(required=False, min_value=0)
    keep_hourly = serializers.IntegerField(required=False, min_value=0)
    keep_daily = serializers.IntegerField(required=False, min_value=0)
    keep_weekly = serializers.IntegerField(required=False, min_value=0)
    keep_monthly = serializers.IntegerField(required=False, min_value=0)
    keep_yearly = serializers.IntegerField(required=False, min_value=0)
    dry_run = serializers.BooleanField(required=False, default=False)
    compact = serializers.BooleanField(required=False, default=params.Prune.compact)


class CheckRequestSerializer(serializers.Serializer):
    scope = serializers.ChoiceField(
        choices=params.CHECK_SCOPES,
        required=False,
        help_text="What to read: both (the default), the repository only, or the archives "
        "only. repository_only / archives_only say the same as two flags.",
    )
    verify_data = serializers.BooleanField(required=False, default=False)
    repository_only = serializers.BooleanField(required=False, default=False)
    archives_only = serializers.BooleanField(required=False, default=False)
    last = serializers.IntegerField(required=False, allow_null=True, min_value=1)
    max_duration = serializers.IntegerField(required=False, allow_null=True, min_value=1)


class VerifyRestoreRequestSerializer(serializers.Serializer):
    host = serializers.CharField(
        required=False, help_text="run it on this host's agent (the backup set's files are there)"
    )
    prefix = serializers.CharField(help_text="the backup set: its newest archive is verified")
    sample_files = serializers.IntegerField(required=False, default=params.SAMPLE_FILES,
                                            min_value=1, max_value=100_000)  # fmt: skip
    sample_percent = serializers.IntegerField(required=False, allow_null=True, min_value=1,
                                              max_value=100)  # fmt: skip
    sample_max_bytes = serializers.IntegerField(required=False, min_value=1,
                                                default=params.SAMPLE_MAX_BYTES)  # fmt: skip


class ExtractRequestSerializer(serializers.Serializer):
    host = serializers.CharField(
        required=False, help_text="run it on this host's agent (its files are there)"
    )
    target = serializers.CharField()
    paths = serializers.ListField(child=serializers.CharField(), required=False, default=list)
    strip_components = serializers.IntegerField(required=False, default=0, min_value=0)


class RestoreRequestSerializer(serializers.Serializer):
    host = serializers.CharField(
        required=False, help_text="run it on this host's agent (its files are there)"
    )
    paths = serializers.ListField(
        child=serializers.CharField(trim_whitespace=False), min_length=1,
        help_text="paths inside the archive (files or folders)",
    )  # fmt: skip
    target = serializers.CharField(
        required=False, default="/",
        help_text='the folder that stands for "/": "/" puts each path back where it was',
    )  # fmt: skip
    policy = serializers.ChoiceField(
        choices=["keep", "replace", "if-different"], default="keep",
        help_text="for files that exist: keep them, replace them, or replace those whose "
        "type, size, modification time or link target differ",
    )  # fmt: skip
    preview = serializers.BooleanField(
        default=True, help_text="true (default): only list what would happen; false: restore"
    )


class RestoreDatabaseRequestSerializer(serializers.Serializer):
    database = serializers.CharField(help_text="SOURCE/DATABASE, as the backup's result lists it")
    into = serializers.CharField(
        required=False, allow_blank=True, default="",
        help_text="another database name (an SQLite file's path); empty: the original",
    )  # fmt: skip
    force = serializers.BooleanField(
        required=False, default=False, help_text="replace what a non-empty target holds"
    )


class MountRequestSerializer(serializers.Serializer):
    mountpoint = serializers.CharField()


class PassphraseSerializer(serializers.Serializer):
    passphrase = serializers.CharField(write_only=True, trim_whitespace=False)
