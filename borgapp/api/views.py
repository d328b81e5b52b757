"""The resource API (`/api/v1/`). Reads come from the database only (PERF-01); every
operation goes through `intake` and runs as a Job on a worker: the answer is 202 with the Job
and a Location header. No request runs borg, but one: a download streams what borg reads to
its client (borgapp.downloads), as a job of its own that holds the repository's lease."""

from django.conf import settings
from django.db.models import Count, Max, Q
from django.utils import timezone
from django_filters import rest_framework as filters
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema, inline_serializer
from rest_framework import mixins, status, viewsets
from rest_framework import serializers as drf_serializers
from rest_framework.decorators import action
from rest_framework.negotiation import DefaultContentNegotiation
from rest_framework.response import Response

from borgapp import (
    audit,
    downloads,
    filediff,
    fileindex,
    filesearch,
    intake,
    jobs,
    listing,
    scheduling,
    validation,
)
from borgapp.api import serializers as s
from borgapp.api.errors import ApiError, body, status_for_job_error
from borgapp.errors import OperationError
from borgapp.models import (
    Alert,
    Archive,
    ArchiveDiffItem,
    AuditEvent,
    DatabaseSource,
    Host,
    Job,
    Repository,
    RetentionPolicy,
    Schedule,
)
from borgapp.params import DOWNLOAD_FORMATS


def accepted(request, job: Job) -> Response:
    """202 with the Job and where to watch it."""
    data = s.JobSerializer(job, context={"request": request}).data
    return Response(data, status=status.HTTP_202_ACCEPTED, headers={"Location": data["url"]})


def _start(request, kind, repository, params):
    host = _host(params.pop("host", None))
    job = intake.start(
        kind, repository, params, trigger=Job.Trigger.API, user=request.user, host=host
    )
    return accepted(request, job)


def named(model, name: str | None, what: str):
    """The row of `model` with this name (None for none given); an unknown name is a 400."""
    if not name:
        return None
    found = model.objects.filter(name=name).first()
    if found is None:
        raise ApiError("invalid_input", f"No {what} of that name.", 400)
    return found


def _host(name: str | None):
    """The host a job is to run on (its agent), by name; None: the center."""
    return named(Host, name, "host")


class JobFilter(filters.FilterSet):
    repository = filters.CharFilter(field_name="repository_name")
    created_after = filters.IsoDateTimeFilter(field_name="created_at", lookup_expr="gte")
    created_before = filters.IsoDateTimeFilter(field_name="created_at", lookup_expr="lt")

    class Meta:
        model = Job
        fields = ["repository", "kind", "status", "trigger"]


class JobViewSet(viewsets.ReadOnlyModelViewSet):
    queryset = Job.objects.select_related("requested_by").order_by("-created_at", "-id")
    serializer_class = s.JobSerializer
    filterset_class = JobFilter
    ordering_fields = ["created_at", "started_at", "finished_at", "id"]
    action_roles = {"cancel": "operator", "key": "admin"}

    @extend_schema(request=None, responses=s.JobSerializer)
    @action(detail=True, methods=["post"])
    def cancel(self, request, pk=None):
        job = jobs.cancel(self.get_object())
        return Response(s.JobSerializer(job, context={"request": request}).data)

    @extend_schema(
        request=None,
        responses=inline_serializer("ExportedKey", {"key": drf_serializers.CharField()}),
    )
    @action(detail=True, methods=["post"])
    def key(self, request, pk=None):
        """The key a key-export job exported, once, to the admin who started the export and
        within OPSCENTER_KEY_DOWNLOAD_TTL seconds: it is deleted when fetched. A POST, since
        it consumes the key."""
        job = self.get_object()
        key = jobs.take_exported_key(job, request.user)
        if key is None:
            raise ApiError(
                "not_found",
                "No exported key waits here for you: a key is offered once, to the admin who "
                "exported it, for a limited time. Export it again.",
                404,
            )
        return Response({"key": key})


class AuditedWrites:
    """Configuration written through the API is audited like the admin's."""

    def _audit(self, verb: str, obj, params=None) -> None:
        name = obj._meta.model_name
        audit.record(f"{name}.{verb}", str(obj), outcome="success", params=params)

    def perform_create(self, serializer):
        super().perform_create(serializer)
        self._audit("created", serializer.instance, self.request.data)

    def perform_update(self, serializer):
        super().perform_update(serializer)
        self._audit("changed", serializer.instance, self.request.data)

    def perform_destroy(self, instance):
        label = str(instance)
        super().perform_destroy(instance)
        audit.record(f"{instance._meta.model_name}.deleted", label, outcome="success")


class RepositoryViewSet(AuditedWrites, viewsets.ModelViewSet):
    serializer_class = s.RepositorySerializer
    lookup_field = "name"
    lookup_value_regex = r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}"
    action_roles = {
        "backup": "operator",
        "prune": "operator",
        "compact": "operator",
        "check": "operator",
        "sync": "operator",
        "info": "operator",
        "verify_restore": "operator",
        "key_export": "admin",
        "change_passphrase": "admin",
    }

    def get_queryset(self):
        return Repository.objects.annotate(
            archive_count=Count("archives", filter=Q(archives__is_checkpoint=False)),
            last_backup_at=Max("archives__start", filter=Q(archives__is_checkpoint=False)),
        ).order_by("name")

    def get_serializer_class(self):
        if self.action == "create":
            return s.RepositoryCreateSerializer
        if self.action in ("update", "partial_update"):
            return s.RepositoryUpdateSerializer
        return super().get_serializer_class()

    @extend_schema(responses={202: s.JobSerializer})
    def create(self, request, *args, **kwargs):
        """Register a repository: `init: true` creates it in borg, otherwise it is imported.
        The passphrase is checked by borg and stored encrypted only if it opens it."""
        data = self.get_serializer(data=request.data)
        data.is_valid(raise_exception=True)
        v = data.validated_data
        job = intake.register(
            v["name"],
            v["location"],
            v.get("passphrase") or None,
            create=v["init"],
            encryption=v["encryption"],
            append_only=v["append_only"],
            trigger=Job.Trigger.API,
            user=request.user,
        )
        return accepted(request, job)

    def perform_destroy(self, instance):
        # Forgets the registration only; the borg repository and its data stay.
        if instance.lease_job_id:
            raise intake.Conflict(f"Repository {instance.name} is busy; try again later.")
        super().perform_destroy(instance)

    def _run(self, request, kind, serializer_class=None):
        params = {}
        if serializer_class is not None:
            data = serializer_class(data=request.data)
            data.is_valid(raise_exception=True)
            params = dict(data.validated_data)
        if kind == Job.Kind.PRUNE:
            keep = {k: params.pop(k) for k in list(params) if k.startswith("keep_")}
            params["keep"] = {k: v for k, v in keep.items() if v not in (None, "")}
        return _start(request, kind, self.get_object(), params)

    @extend_schema(request=s.BackupRequestSerializer, responses={202: s.JobSerializer})
    @action(detail=True, methods=["post"])
    def backup(self, request, name=None):
        return self._run(request, Job.Kind.BACKUP, s.BackupRequestSerializer)

    @extend_schema(request=s.PruneRequestSerializer, responses={202: s.JobSerializer})
    @action(detail=True, methods=["post"])
    def prune(self, request, name=None):
        return self._run(request, Job.Kind.PRUNE, s.PruneRequestSerializer)

    @extend_schema(request=None, responses={202: s.JobSerializer})
    @action(detail=True, methods=["post"])
    def compact(self, request, name=None):
        return self._run(request, Job.Kind.COMPACT)

    @extend_schema(request=s.CheckRequestSerializer, responses={202: s.JobSerializer})
    @action(detail=True, methods=["post"])
    def check(self, request, name=None):
        return self._run(request, Job.Kind.CHECK, s.CheckRequestSerializer)

    @extend_schema(request=s.VerifyRestoreRequestSerializer, responses={202: s.JobSerializer})
    @action(detail=True, methods=["post"], url_path="verify-restore")
    def verify_restore(self, request, name=None):
        """Restore a sample of a backup set's newest archive and compare it with the archive
        and with the source as it is now (on the set's host with `host`)."""
        return self._run(request, Job.Kind.VERIFY_RESTORE, s.VerifyRestoreRequestSerializer)

    @extend_schema(request=None, responses={202: s.JobSerializer})
    @action(detail=True, methods=["post"])
    def sync(self, request, name=None):
        return self._run(request, Job.Kind.SYNC)

    @extend_schema(request=None, responses={202: s.JobSerializer})
    @action(detail=True, methods=["post"])
    def info(self, request, name=None):
        return self._run(request, Job.Kind.INFO)

    @extend_schema(request=None, responses={202: s.JobSerializer})
    @action(detail=True, methods=["post"], url_path="key-export")
    def key_export(self, request, name=None):
        """Export the repository key; fetch it once from the job's `key/` URL."""
        return self._run(request, Job.Kind.KEY_EXPORT)

    @extend_schema(request=s.PassphraseSerializer, responses={202: s.JobSerializer})
    @action(detail=True, methods=["post"], url_path="change-passphrase")
    def change_passphrase(self, request, name=None):
        data = s.PassphraseSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        job = intake.change_passphrase(
            self.get_object(),
            data.validated_data["passphrase"],
            trigger=Job.Trigger.API,
            user=request.user,
        )
        return accepted(request, job)

    @extend_schema(request=None, responses={202: s.JobSerializer})
    @action(detail=True, methods=["post"], url_path="break-lock")
    def break_lock(self, request, name=None):
        return self._run(request, Job.Kind.BREAK_LOCK)


CONTENTS_PARAMS = [
    OpenApiParameter("path", str, description="only this path and what is below it"),
    OpenApiParameter("parent", str, description="only the direct children of this directory"),
    OpenApiParameter("type", str, description="borg item type: d, -, l, ..."),
    OpenApiParameter("page", int),
]
LOADING = (
    "GET serves a listing read before; until then it answers 409 `listing_not_loaded` "
    "(with the job reading it, if one runs). POST asks for it to be read from borg: 202 with "
    "the Job (429 when too many listings wait), or 200 when it is there already."
)


def _listing_answer(request, archive, other=None) -> Response:
    """POST: read the listing (or return the job already reading it). GET: say it is not
    there yet; a GET never starts work."""
    if request.method == "POST":
        job = intake.load_listing(archive, other, trigger=Job.Trigger.API, user=request.user)
        return accepted(request, job)
    kind = Job.Kind.DIFF if other is not None else Job.Kind.CONTENTS
    first, second = listing.in_order(archive, other) if other is not None else (archive, None)
    indexing = {a.name for a in intake.unindexed(first, second)} if settings.FILE_INDEX else ()

    def reads_it(job) -> bool:
        if job.kind == Job.Kind.INDEX:
            return job.archive_name in indexing
        return job.archive_name == first.name and (
            second is None or job.params.get("other") == second.name
        )

    active = Job.objects.filter(
        kind__in=[kind, Job.Kind.INDEX],
        repository=archive.repository,
        status__in=[Job.Status.QUEUED, Job.Status.RUNNING],
    )
    running = [job for job in active.order_by("pk") if reads_it(job)]
    message = "This listing has not been read from borg yet: POST to this URL to read it."
    extra = {}
    if running:
        message = "This listing is being read from borg: ask again when its job has ended."
        extra["job"] = s.JobSerializer(running[0], context={"request": request}).data
    return Response(body("listing_not_loaded", message, **extra), status=status.HTTP_409_CONFLICT)


LOADED = {"success": True, "message": "The listing is there: GET this URL to read it."}


class ArchiveContentsMixin:
    """`contents` and `diff`: read from borg once by a job into the database (archives never
    change), then served page by page from there like every other list (PERF-01)."""

    @extend_schema(
        parameters=CONTENTS_PARAMS,
        responses={200: s.ArchiveItemPageSerializer, 202: s.JobSerializer},
        description="A paged listing of the archive's files. " + LOADING,
    )
    @action(detail=True, methods=["get", "post"])
    def contents(self, request, pk=None):
        archive = self.get_object()
        query = request.query_params
        if fileindex.is_indexed(archive):  # served from the file index at once
            if request.method == "POST":
                return Response(LOADED)
            items = filesearch.archive_items(archive, path=query.get("path", ""),
                                             parent=query.get("parent"),
                                             type=query.get("type", ""))  # fmt: skip
            page = self.paginate_queryset(items)
            audit.browsed(archive, path=query.get("path", ""), parent=query.get("parent"))
            rows = s.ArchiveItemSerializer(filesearch.item_rows(page), many=True).data
            return self.get_paginated_response(rows)
        if not archive.contents_ready:
            return _listing_answer(request, archive)
        if request.method == "POST":
            return Response(LOADED)
        items = listing.contents(
            archive,
            path=query.get("path", ""),
            parent=query.get("parent"),
            type=query.get("type", ""),
        )
        page = self.paginate_queryset(items)
        audit.browsed(archive, path=query.get("path", ""), parent=query.get("parent"))
        return self.get_paginated_response(s.ArchiveItemSerializer(page, many=True).data)

    @extend_schema(
        parameters=[
            OpenApiParameter("other", int, required=True, description="id of the newer archive"),
            OpenApiParameter("path", str, description="only this path and what is below it"),
            OpenApiParameter("change", str, enum=list(ArchiveDiffItem.Change.values)),
            OpenApiParameter("page", int),
        ],
        responses={200: s.ArchiveDiffPageSerializer, 202: s.JobSerializer},
        description="What changed between this archive and `other` (same repository), always "
        "read from the older of the two to the newer: `added` is in the newer only. Either "
        "direction serves the one stored comparison. When both archives are in the file index "
        "the answer comes from it at once: a regular file is `modified` when its content "
        "(the ids of its chunks) changed, and a file only touched is a `metadata` change, as "
        "borg says; where the index has no content identity for it (a hardlink, or an archive "
        "indexed by the borg binary) a file whose size or time moved is `modified`. A change "
        "of ctime alone is none. " + LOADING,
    )
    @action(detail=True, methods=["get", "post"])
    def diff(self, request, pk=None):
        archive = self.get_object()
        sent = request.data if isinstance(request.data, dict) else {}
        raw = str(request.query_params.get("other") or sent.get("other") or "")
        if not raw.isdigit():
            raise validation.InvalidInput("Give the other archive's id as `other`.")
        other = Archive.objects.filter(pk=int(raw)).select_related("repository").first()
        if other is None:
            raise ApiError("not_found", f"No archive with id {raw}.", 404)
        if other.repository_id != archive.repository_id:
            raise validation.InvalidInput("Both archives must be in the same repository.")
        if other.pk == archive.pk:
            raise validation.InvalidInput("Compare an archive with a different archive.")
        query = request.query_params
        compared = filediff.compare(archive, other, path=query.get("path", ""),
                                    change=query.get("change", ""))  # fmt: skip
        if compared is not None:  # both in the file index: answered from it at once
            if request.method == "POST":
                return Response(LOADED)
            page = self.paginate_queryset(compared)
            audit.browsed(archive, other=other, path=query.get("path", ""))
            return self.get_paginated_response(s.ArchiveDiffItemSerializer(page, many=True).data)
        found = listing.current_diff(archive, other)
        if found is None:
            return _listing_answer(request, archive, other)
        if request.method == "POST":
            return Response(LOADED)
        items = listing.diff_items(
            found, path=query.get("path", ""), change=query.get("change", "")
        )
        page = self.paginate_queryset(items)
        audit.browsed(archive, other=other, path=query.get("path", ""))
        return self.get_paginated_response(s.ArchiveDiffItemSerializer(page, many=True).data)


class ArchiveFilter(filters.FilterSet):
    repository = filters.CharFilter(field_name="repository__name")
    prefix = filters.CharFilter(field_name="name", lookup_expr="startswith")
    after = filters.IsoDateTimeFilter(field_name="start", lookup_expr="gte")
    before = filters.IsoDateTimeFilter(field_name="start", lookup_expr="lt")
    checkpoint = filters.BooleanFilter(field_name="is_checkpoint")

    class Meta:
        model = Archive
        fields = ["repository", "prefix", "after", "before", "checkpoint"]


class DownloadNegotiation(DefaultContentNegotiation):
    """A download's `format` is the file's (tar.gz, ...), not DRF's renderer override; its
    errors are JSON like every other answer."""

    def select_renderer(self, request, renderers, format_suffix=None):
        json = next(r for r in renderers if r.format == "json")
        return json, json.media_type


class ArchiveViewSet(ArchiveContentsMixin, mixins.DestroyModelMixin, viewsets.ReadOnlyModelViewSet):
    queryset = Archive.objects.select_related("repository").order_by("-start", "-id")
    serializer_class = s.ArchiveSerializer
    filterset_class = ArchiveFilter

    def list(self, request, *args, **kwargs):
        # Rows from `.values()`, not model instances through the serializer (PERF-01).
        queryset = s.archive_values(self.filter_queryset(self.get_queryset()))
        page = self.paginate_queryset(queryset)
        tz = timezone.get_current_timezone()
        return self.get_paginated_response([s.archive_row(values, tz) for values in page])

    ordering_fields = ["start", "name", "original_size", "deduplicated_size", "nfiles"]
    # reading a listing is looking: viewers may ask for it (bounded per user and repository)
    action_roles = {
        "extract": "operator",
        "mount": "operator",
        "umount": "operator",
        "contents": "viewer",
        "diff": "viewer",
        "restore_database": "admin",  # it writes into a database server
        "download": "operator",
        "restore": "admin",  # it writes over live folders
    }

    @extend_schema(
        parameters=[
            OpenApiParameter("path", str, many=True, required=True,
                             description="a path in the archive; repeat for a selection"),
            OpenApiParameter("format", str, enum=[*DOWNLOAD_FORMATS],
                             description="auto (default): one file as itself, else a tar"),
            OpenApiParameter("host", str, description="run borg on this host's agent (its "
                             "repository may be reachable only from there)"),
        ],
        responses={(200, "application/octet-stream"): OpenApiTypes.BINARY},
    )  # fmt: skip
    @action(detail=True, methods=["get"], content_negotiation_class=DownloadNegotiation)
    def download(self, request, pk=None):
        """Stream files of this archive as borg reads them: one file as itself, a folder or a
        selection as a tar (plain, gzip or zstd). Operators and admins."""
        archive = self.get_object()
        host = _host(request.query_params.get("host"))
        try:
            download = downloads.begin(
                archive,
                request.query_params.getlist("path"),
                request.query_params.get("format") or "auto",
                trigger=Job.Trigger.API,
                user=request.user,
                lease_wait=settings.DOWNLOAD_LEASE_WAIT,
                client_gone=request.META.get("opscenter.client_gone"),
                host=host,
            )
        except downloads.NotInArchive as exc:
            raise ApiError("path_not_found", str(exc), 404) from None
        except OperationError as exc:
            raise ApiError(exc.code, str(exc), status_for_job_error(exc.code)) from None
        return downloads.http_response(download)

    @extend_schema(request=s.RestoreRequestSerializer, responses={202: s.JobSerializer})
    @action(detail=True, methods=["post"])
    def restore(self, request, pk=None):
        """Restore paths in place (admins): first with `preview` true (the default), whose job
        lists what would be created, replaced, kept, left alone and blocked; then the same
        request with `preview` false."""
        archive = self.get_object()
        data = s.RestoreRequestSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        params = {"archive": archive.name, **data.validated_data}
        return _start(request, Job.Kind.RESTORE, archive.repository, params)

    @extend_schema(request=s.RestoreDatabaseRequestSerializer, responses={202: s.JobSerializer})
    @action(detail=True, methods=["post"], url_path="restore-database")
    def restore_database(self, request, pk=None):
        """Restore one database dump of this archive into its server (admins only)."""
        archive = self.get_object()
        data = s.RestoreDatabaseRequestSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        params = {"archive": archive.name, **data.validated_data}
        return _start(request, Job.Kind.RESTORE_DATABASE, archive.repository, params)

    @extend_schema(responses={202: s.JobSerializer})
    def destroy(self, request, *args, **kwargs):
        archive = self.get_object()
        return _start(request, Job.Kind.DELETE, archive.repository, {"archive": archive.name})

    @extend_schema(request=s.ExtractRequestSerializer, responses={202: s.JobSerializer})
    @action(detail=True, methods=["post"])
    def extract(self, request, pk=None):
        archive = self.get_object()
        data = s.ExtractRequestSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        params = {"archive": archive.name, **data.validated_data}
        return _start(request, Job.Kind.EXTRACT, archive.repository, params)

    @extend_schema(request=s.MountRequestSerializer, responses={202: s.JobSerializer})
    @action(detail=True, methods=["post"])
    def mount(self, request, pk=None):
        archive = self.get_object()
        data = s.MountRequestSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        params = {"archive": archive.name, "mountpoint": data.validated_data["mountpoint"]}
        return _start(request, Job.Kind.MOUNT, archive.repository, params)

    @extend_schema(request=None, responses={202: s.JobSerializer})
    @action(detail=True, methods=["post"])
    def umount(self, request, pk=None):
        archive = self.get_object()
        mount = archive.repository.mounts.filter(archive_name=archive.name).first()
        if mount is None:
            raise ApiError("not_mounted", f"Archive {archive.name} is not mounted.", 404)
        job = intake.umount(mount.mountpoint, trigger=Job.Trigger.API, user=request.user)
        return accepted(request, job)


class DatabaseSourceViewSet(AuditedWrites, viewsets.ModelViewSet):
    """Database sources: viewers read them (never a password), admins write them."""

    queryset = DatabaseSource.objects.order_by("name")
    serializer_class = s.DatabaseSourceSerializer

    def perform_destroy(self, instance):
        if instance.schedules.exists():
            names = ", ".join(instance.schedules.values_list("name", flat=True))
            raise ApiError("in_use", f"{instance.name} is dumped by schedule(s) {names}.", 409)
        super().perform_destroy(instance)


class RetentionPolicyViewSet(AuditedWrites, viewsets.ModelViewSet):
    queryset = RetentionPolicy.objects.order_by("name")
    serializer_class = s.RetentionPolicySerializer


class ScheduleViewSet(AuditedWrites, viewsets.ModelViewSet):
    queryset = Schedule.objects.prefetch_related("repositories").order_by("name")
    serializer_class = s.ScheduleSerializer
    action_roles = {"run": "operator", "dry_run": "operator"}

    def _jobs(self, request, made):
        data = s.JobSerializer(made, many=True, context={"request": request}).data
        return Response({"jobs": data}, status=status.HTTP_202_ACCEPTED)

    @extend_schema(request=None, responses={202: s.JobListSerializer})
    @action(detail=True, methods=["post"])
    def run(self, request, pk=None):
        """Run now: one Job per repository (a skip is recorded where the previous run of this
        schedule is still queued or running)."""
        made = scheduling.start_runs(self.get_object(), trigger=Job.Trigger.API, user=request.user)
        return self._jobs(request, made)

    @extend_schema(request=None, responses={202: s.JobListSerializer})
    @action(detail=True, methods=["post"], url_path="dry-run")
    def dry_run(self, request, pk=None):
        """A prune schedule's dry run: each Job's result lists what would be kept and pruned."""
        made = scheduling.start_dry_run(
            self.get_object(), trigger=Job.Trigger.API, user=request.user
        )
        return self._jobs(request, made)


class AlertFilter(filters.FilterSet):
    repository = filters.CharFilter(field_name="repository__name")
    after = filters.IsoDateTimeFilter(field_name="last_seen", lookup_expr="gte")

    class Meta:
        model = Alert
        fields = ["repository", "state", "kind", "after"]


class AlertViewSet(viewsets.ReadOnlyModelViewSet):
    """Alerts as the dashboard shows them: firing ones until their condition clears, then
    resolved (kept as history). `?state=firing` is what needs a person now; the worker alert
    has no repository."""

    queryset = Alert.objects.select_related("repository").order_by("-last_seen", "-id")
    serializer_class = s.AlertSerializer
    filterset_class = AlertFilter
    ordering_fields = ["last_seen", "first_seen", "id"]


class AuditFilter(filters.FilterSet):
    after = filters.IsoDateTimeFilter(field_name="at", lookup_expr="gte")
    before = filters.IsoDateTimeFilter(field_name="at", lookup_expr="lt")

    class Meta:
        model = AuditEvent
        fields = ["action", "outcome", "source", "actor", "after", "before"]


class AuditViewSet(viewsets.ReadOnlyModelViewSet):
    """The audit trail (admins only): who did what, from where, how it ended."""

    queryset = AuditEvent.objects.order_by("-at", "-id")
    serializer_class = s.AuditEventSerializer
    filterset_class = AuditFilter
    read_role = "admin"
