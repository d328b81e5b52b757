"""The integration guide's 11 routes (`/api/v1/backups/borg/...`), with its request and
response fields, so scripts written for it keep working; its defects fixed
(../shared/seed/contract.md).

Each route records a Job and waits for a worker to run it (no request runs borg), up to
SEED_WAIT seconds; a job still running then answers 202 with the job's id and URL.
`?async=true` or `Prefer: respond-async` asks for the 202 at once. At most SEED_WAITERS
requests of a web process wait at a time: once they are all taken, the next answers 202 at
once, so waiting never costs the admin and the API their workers.

GET routes change nothing: they answer for known repositories only and never start a job.
"""

import functools
import hashlib
import hmac
import os
import re
from datetime import UTC, datetime

from django.conf import settings
from drf_spectacular.utils import OpenApiParameter, extend_schema, inline_serializer
from rest_framework import serializers, status
from rest_framework.decorators import api_view, permission_classes
from rest_framework.exceptions import Throttled
from rest_framework.permissions import IsAuthenticated
from rest_framework.response import Response
from rest_framework.reverse import reverse

from borgapp import audit, intake, jobs, params, procs, throttle, validation
from borgapp.api.errors import ApiError, status_for_job_error
from borgapp.borg import keep_flags
from borgapp.catalog import repository_summary
from borgapp.models import Archive, Job, Mount, Repository, RetentionPolicy
from borgapp.roles import has_role


def _shape(component: str, many: bool = False, **fields) -> serializers.Serializer:
    return inline_serializer(component, fields, many=many)


_S, _I, _F, _B = (
    serializers.CharField,
    serializers.IntegerField,
    serializers.FloatField,
    (serializers.BooleanField),
)
RUNNING = _shape(
    "SeedJobRunning", success=_B(), job_id=_I(), job_url=_S(), status=_S(), message=_S()
)
ERROR = _shape("SeedError", success=_B(), error=_S(), message=_S())


def responses(ok: serializers.Serializer) -> dict:
    return {
        200: ok,
        202: RUNNING,
        400: ERROR,
        401: ERROR,
        403: ERROR,
        404: ERROR,
        409: ERROR,
        422: ERROR,
        502: ERROR,
    }


# --- request helpers ------------------------------------------------------------------------


def _field(request, name, default=None):
    """A value from the JSON body, else from the query string (the guide uses both)."""
    if isinstance(request.data, dict) and name in request.data:
        return request.data[name]
    return request.query_params.get(name, default)


def _passphrase(request) -> str | None:
    """Body, then `X-Borg-Passphrase`, then the query string (only here, for compatibility;
    the access log never shows query strings)."""
    for value in (
        request.data.get("passphrase") if isinstance(request.data, dict) else None,
        request.headers.get("X-Borg-Passphrase"),
        request.query_params.get("passphrase"),
    ):
        if value:
            return validation.validate_passphrase(str(value))
    return None


def _require(request, role: str) -> None:
    if not has_role(request.user, role):
        raise ApiError("permission_denied", "Your role does not allow this.", 403)


def _bool(value) -> bool:
    return str(value).lower() in ("1", "true", "yes", "on")


def _name_for(path: str) -> str:
    """A repository name for a path registered on first use."""
    base = re.sub(r"[^A-Za-z0-9._-]", "-", os.path.basename(path.rstrip("/"))).strip("-.")
    base = (base or "repo")[:80]
    if not Repository.objects.filter(name=base).exists():
        return base
    return f"{base}-{hashlib.sha256(path.encode()).hexdigest()[:8]}"


def _known(path: str) -> Repository | None:
    location = validation.validate_location(path, settings.REPOSITORY_ROOTS, "repository_path")
    return Repository.objects.filter(location=location).first()


def _passphrase_matches(given: str, stored: str) -> bool:
    return hmac.compare_digest(given.encode(), stored.encode())


def _check_passphrase(request, repo: Repository, given: str) -> None:
    """A passphrase sent for a known repository. Only an admin learns whether it matches
    (422 if not): for anyone else the stored one is used and the answer is the same either
    way, so the route cannot be used to test guesses. Mismatches are audited and throttled
    per user like failed sign-ins, whatever the role."""
    if not repo.has_passphrase:
        return
    key = f"passphrase-user:{request.user.pk}"
    if throttle.blocked(key):
        raise Throttled(
            wait=throttle.WINDOW_SECONDS,
            detail="Too many passphrases that did not match; try again in a minute.",
        )
    if _passphrase_matches(given, repo.get_passphrase()):
        return
    throttle.note_failure(key)
    audit.record(
        "passphrase_mismatch",
        repo.name,
        outcome="refused",
        message="A passphrase sent to the integration guide's routes differs from the stored one.",
    )
    if has_role(request.user, "admin"):
        raise ApiError(
            "wrong_passphrase",
            "This passphrase differs from the one stored for the repository. Omit it to "
            "use the stored one, or change it with the change-passphrase action.",
            422,
        )


class _Pending(Exception):  # noqa: N818 (not an error: an answer to give instead)
    """Raised with the 202 to answer when a route cannot go on before a job has ended."""

    def __init__(self, response: Response):
        self.response = response


def route(methods: list[str]):
    """One of the guide's routes: authenticated, and answering a `_Pending`'s 202."""

    def decorate(view):
        @functools.wraps(view)
        def answer(request, *args, **kwargs):
            try:
                return view(request, *args, **kwargs)
            except _Pending as pending:
                return pending.response

        return api_view(methods)(permission_classes([IsAuthenticated])(answer))

    return decorate


def _repository(request) -> Repository:
    """The repository of `repository_path`: a known one (its stored passphrase is used), or,
    for the POST routes and admins only, an unknown one imported now with the given
    passphrase. A GET never registers anything. While the import still runs (no waiting
    place was free) `_Pending` carries the import job's 202."""
    path = _field(request, "repository_path")
    if not path:
        raise validation.InvalidInput("repository_path is required.")
    passphrase = _passphrase(request)
    repo = _known(str(path))
    if repo is not None:
        if passphrase is not None:
            _check_passphrase(request, repo, passphrase)
        if repo.state != Repository.State.READY:
            raise ApiError("busy", "The repository is still being registered.", 409)
        return repo
    if request.method == "GET":
        raise ApiError(
            "repository_unknown",
            f"{path} is not registered here. Register it first: POST /init (a new "
            "repository), or any of the guide's POST routes or POST /api/v1/repositories/ "
            "(an existing one; admins).",
            404,
        )
    _require(request, "admin")  # registering a repository stores a passphrase
    job = intake.register(
        _name_for(str(path)),
        str(path),
        passphrase,
        create=False,
        trigger=Job.Trigger.API,
        user=request.user,
    )
    job = jobs.wait_for(job, settings.SEED_WAIT)
    if not job.is_finished:
        raise _Pending(_still_running(request, job))
    if job.status != Job.Status.SUCCEEDED:
        raise _job_error(job)
    return Repository.objects.get(pk=job.repository_id)


def _wants_async(request) -> bool:
    return _bool(request.query_params.get("async", "")) or "respond-async" in request.headers.get(
        "Prefer", ""
    )


def _job_error(job: Job) -> ApiError:
    code = job.error_code or job.status
    message = job.error_message or f"The job ended {job.status}."
    if job.status == Job.Status.CANCELLED:
        return ApiError("cancelled", message, 409)
    return ApiError(code, message, status_for_job_error(code))


def _run(request, kind, repository, params, respond) -> Response:
    """Start the job, wait for it (or not), answer with `respond(job)` or an error."""
    job = intake.start(kind, repository, params, trigger=Job.Trigger.API, user=request.user)
    if not _wants_async(request):
        job = jobs.wait_for(job, settings.SEED_WAIT)
    if not job.is_finished:
        return _still_running(request, job)
    if job.status not in Job.OK:
        raise _job_error(job)
    return Response(respond(job))


def _message(job: Job, text: str) -> str:
    return f"{text} (with warnings: {job.error_message})" if job.status == "warning" else text


# --- the routes ----------------------------------------------------------------------------


class SeedInitRequest(serializers.Serializer):
    repository_path = serializers.CharField()
    passphrase = serializers.CharField(required=False, allow_blank=True, write_only=True)
    encryption_mode = serializers.CharField(required=False, default="repokey-blake2")


@extend_schema(
    responses=responses(
        _shape(
            "SeedInit",
            success=_B(),
            repository_path=_S(),
            encryption_mode=_S(),
            repository_id=_S(),
            message=_S(),
        )
    ),
    request=SeedInitRequest,
    tags=["integration guide"],
)
@route(["POST"])
def init(request):
    _require(request, "admin")
    data = SeedInitRequest(data=request.data)
    data.is_valid(raise_exception=True)
    path = data.validated_data["repository_path"]
    mode = data.validated_data["encryption_mode"]
    if _known(path) is not None:
        raise ApiError("repository_exists", f"{path} is already registered.", 409)
    job = intake.register(
        _name_for(path),
        path,
        _passphrase(request),
        create=True,
        encryption=mode,
        trigger=Job.Trigger.API,
        user=request.user,
    )
    if not _wants_async(request):
        job = jobs.wait_for(job, settings.SEED_WAIT)
    if not job.is_finished:
        return _still_running(request, job)
    if job.status != Job.Status.SUCCEEDED:
        raise _job_error(job)
    return Response(
        {
            "success": True,
            "repository_path": path,
            "encryption_mode": mode,
            "repository_id": job.result.get("repository_id"),
            "message": "Repository initialized successfully",
        }
    )


def _still_running(request, job) -> Response:
    url = reverse("job-detail", args=[job.pk], request=request)
    return Response(
        {
            "success": True,
            "job_id": job.pk,
            "job_url": url,
            "status": job.status,
            "message": "The operation is running; follow it at job_url.",
        },
        status=status.HTTP_202_ACCEPTED,
        headers={"Location": url},
    )


class SeedCreateRequest(serializers.Serializer):
    archive_name = serializers.CharField()
    source_paths = serializers.ListField(child=serializers.CharField(), allow_empty=False)
    repository_path = serializers.CharField()
    passphrase = serializers.CharField(required=False, allow_blank=True, write_only=True)
    compression = serializers.CharField(required=False, default=params.COMPRESSION)
    exclude_patterns = serializers.ListField(
        child=serializers.CharField(), required=False, default=list
    )


@extend_schema(
    responses=responses(
        _shape(
            "SeedCreate",
            success=_B(),
            archive_name=_S(),
            original_size=_I(),
            compressed_size=_I(),
            deduplicated_size=_I(),
            nfiles=_I(),
            compression_ratio=_F(),
            deduplication_ratio=_F(),
            duration=_F(),
        )
    ),
    request=SeedCreateRequest,
    tags=["integration guide"],
)
@route(["POST"])
def create(request):
    _require(request, "operator")
    data = SeedCreateRequest(data=request.data)
    data.is_valid(raise_exception=True)
    v = data.validated_data
    validation.validate_archive_part(v["archive_name"], "archive_name")
    repo = _repository(request)
    name = f"{v['archive_name']}_{datetime.now(UTC).strftime('%Y%m%d_%H%M%S')}"
    if Archive.objects.filter(repository=repo, name=name).exists():
        raise ApiError("archive_exists", f"Archive {name} already exists; retry in a second.", 409)
    params = {
        "archive": name,
        "sources": v["source_paths"],
        "excludes": v["exclude_patterns"],
        "compression": v["compression"],
    }

    def respond(job):
        r = job.result
        return {
            "success": True,
            "archive_name": r["archive_name"],
            "original_size": r["original_size"],
            "compressed_size": r["compressed_size"],
            "deduplicated_size": r["deduplicated_size"],
            "nfiles": r["nfiles"],
            "compression_ratio": r["compression_ratio"],
            "deduplication_ratio": r["deduplication_ratio"],
            "duration": r["duration"],
        }

    return _run(request, Job.Kind.BACKUP, repo, params, respond)


@extend_schema(
    responses=responses(
        _shape(
            "SeedArchive",
            name=_S(),
            archive=_S(),
            time=_S(),
            hostname=_S(),
            username=_S(),
            id=_S(),
            many=True,
        )
    ),
    parameters=[
        OpenApiParameter("repository_path", str, required=True),
        OpenApiParameter("prefix", str, required=False),
    ],
    tags=["integration guide"],
)
@route(["GET"])
def archives(request):
    _require(request, "viewer")
    repo = _repository(request)
    rows = repo.archives.filter(is_checkpoint=False).order_by("start", "id")
    if request.query_params.get("prefix"):
        rows = rows.filter(name__startswith=request.query_params["prefix"])
    return Response(
        [
            {
                "name": a.name,
                "archive": a.name,
                "time": a.start.isoformat() if a.start else None,
                "hostname": a.hostname,
                "username": a.username,
                "id": a.borg_id,
            }
            for a in rows
        ]
    )


@extend_schema(
    responses=responses(_shape("SeedDelete", success=_B(), archive_name=_S(), message=_S())),
    parameters=[OpenApiParameter("repository_path", str, required=True)],
    tags=["integration guide"],
)
@route(["DELETE"])
def delete_archive(request, archive_name):
    _require(request, "admin")
    repo = _repository(request)
    if not repo.archives.filter(name=archive_name).exists():
        raise ApiError(
            "archive_missing", f"Archive {archive_name!r} is not in the repository.", 404
        )
    return _run(
        request,
        Job.Kind.DELETE,
        repo,
        {"archive": archive_name},
        lambda job: {
            "success": True,
            "archive_name": archive_name,
            "message": _message(job, "Archive deleted successfully"),
        },
    )


class SeedExtractRequest(serializers.Serializer):
    archive_name = serializers.CharField(required=False)
    target_path = serializers.CharField()
    repository_path = serializers.CharField()
    passphrase = serializers.CharField(required=False, allow_blank=True, write_only=True)
    paths = serializers.ListField(child=serializers.CharField(), required=False, default=list)


@extend_schema(
    responses=responses(
        _shape("SeedExtract", success=_B(), archive_name=_S(), target_path=_S(), message=_S())
    ),
    request=SeedExtractRequest,
    tags=["integration guide"],
)
@route(["POST"])
def extract(request, archive_name):
    _require(request, "operator")
    data = SeedExtractRequest(data=request.data)
    data.is_valid(raise_exception=True)
    v = data.validated_data
    # The guide's recovery procedure puts the real name in the body and a placeholder in
    # the URL ("/extract/archive_name"): the body wins when it names an archive.
    name = v.get("archive_name") or archive_name
    repo = _repository(request)
    if not repo.archives.filter(name=name).exists():
        raise ApiError("archive_missing", f"Archive {name!r} is not in the repository.", 404)
    params = {"archive": name, "target": v["target_path"], "paths": v["paths"]}
    return _run(
        request,
        Job.Kind.EXTRACT,
        repo,
        params,
        lambda job: {
            "success": True,
            "archive_name": name,
            "target_path": job.result["target_path"],
            "message": _message(job, f"Extracted {job.result['files']} files"),
        },
    )


def _retention(request, keep: dict) -> dict:
    """The prune's rules: a retention policy named by `policy`, or the one an admin defined
    with exactly these keep rules (so an operator's script with the guide's defaults works
    once an admin has made that policy), or, for admins only, the rules as they are."""
    name = _field(request, "policy")
    if name:
        return {"policy": str(name)}
    wanted = keep_flags(**keep)
    for policy in RetentionPolicy.objects.order_by("name"):
        if policy.borg_options() == wanted:
            return {"policy": policy.name}
    return {"keep": keep}  # intake refuses ad-hoc rules below admin


@extend_schema(
    responses=responses(
        _shape(
            "SeedPrune",
            success=_B(),
            repository_path=_S(),
            keep_policy=serializers.DictField(),
            output=_S(),
            message=_S(),
        )
    ),
    request=None,
    tags=["integration guide"],
)
@route(["POST"])
def prune(request):
    _require(request, "operator")
    repo = _repository(request)
    keep = {}
    for field, default in (
        ("keep_hourly", 0),
        ("keep_daily", 7),
        ("keep_weekly", 4),
        ("keep_monthly", 6),
        ("keep_yearly", 2),
    ):
        value = _field(request, field, default)
        try:
            keep[field] = int(value)
        except (TypeError, ValueError):
            raise validation.InvalidInput(f"{field} must be a whole number.") from None
        if keep[field] < 0:
            raise validation.InvalidInput(f"{field} must not be negative.")
    prefix = _field(request, "prefix")
    # Without a prefix each of the guide's backup sets (`<archive_name>_<time>`) is pruned on
    # its own, so one set never removes another's archives.
    params = {"prefix": prefix} if prefix else {"scope": "seed"}
    params.update(_retention(request, keep))

    def respond(job):
        r = job.result
        lines = [f"Pruned: {n}" for n in r["pruned"]] + [f"Kept: {n}" for n in r["kept"]]
        return {
            "success": True,
            "repository_path": repo.location,
            "keep_policy": keep,
            "retention_policy": params.get("policy"),
            "output": "\n".join(lines),
            "message": _message(job, f"Pruned {len(r['pruned'])} archives"),
        }

    return _run(request, Job.Kind.PRUNE, repo, params, respond)


@extend_schema(
    responses=responses(_shape("SeedCompact", success=_B(), repository_path=_S(), message=_S())),
    request=None,
    tags=["integration guide"],
)
@route(["POST"])
def compact(request):
    _require(request, "operator")
    repo = _repository(request)
    return _run(
        request,
        Job.Kind.COMPACT,
        repo,
        {},
        lambda job: {
            "success": True,
            "repository_path": repo.location,
            "message": _message(job, job.result.get("note") or "Repository compacted"),
        },
    )


@extend_schema(
    responses=responses(
        _shape("SeedCheck", success=_B(), repository_path=_S(), verify_data=_B(), message=_S())
    ),
    request=None,
    tags=["integration guide"],
)
@route(["POST"])
def check(request):
    _require(request, "operator")
    repo = _repository(request)
    verify = _bool(_field(request, "verify_data", "false"))
    return _run(
        request,
        Job.Kind.CHECK,
        repo,
        {"verify_data": verify},
        lambda job: {
            "success": True,
            "repository_path": repo.location,
            "verify_data": verify,
            "message": _message(job, "Repository check passed"),
        },
    )


class SeedMountRequest(serializers.Serializer):
    archive_name = serializers.CharField(required=False, allow_blank=True, default="")
    mount_point = serializers.CharField()
    repository_path = serializers.CharField()
    passphrase = serializers.CharField(required=False, allow_blank=True, write_only=True)


@extend_schema(
    responses=responses(
        _shape(
            "SeedMount",
            success=_B(),
            archive_name=_S(),
            mount_point=_S(),
            pid=_I(allow_null=True),
            message=_S(),
        )
    ),
    request=SeedMountRequest,
    tags=["integration guide"],
)
@route(["POST"])
def mount(request):
    _require(request, "operator")
    data = SeedMountRequest(data=request.data)
    data.is_valid(raise_exception=True)
    v = data.validated_data
    repo = _repository(request)
    params = {"archive": v["archive_name"], "mountpoint": v["mount_point"]}
    return _run(
        request,
        Job.Kind.MOUNT,
        repo,
        params,
        lambda job: {
            "success": True,
            "archive_name": v["archive_name"],
            "mount_point": job.result["mount_point"],
            "pid": procs.borg_serving(job.result["mount_point"]),
            "message": "Mounted successfully",
        },
    )


@extend_schema(
    responses=responses(_shape("SeedUmount", success=_B(), mount_point=_S(), message=_S())),
    request=None,
    parameters=[OpenApiParameter("mount_point", str, required=True)],
    tags=["integration guide"],
)
@route(["POST"])
def umount(request):
    _require(request, "operator")
    point = _field(request, "mount_point")
    if not point:
        raise validation.InvalidInput("mount_point is required.")
    real = validation.real_path(str(point), "mount_point")
    mount_row = Mount.objects.filter(mountpoint=real).select_related("repository").first()
    if mount_row is None:
        raise ApiError("not_mounted", f"Nothing is mounted by this app at {point}.", 404)
    return _run(
        request,
        Job.Kind.UMOUNT,
        mount_row.repository,
        {"mountpoint": real},
        lambda job: {"success": True, "mount_point": str(point), "message": job.result["message"]},
    )


@extend_schema(
    responses=responses(
        _shape(
            "SeedInfo",
            repository_id=_S(),
            location=_S(),
            encryption_mode=_S(),
            unique_chunks=_I(),
            total_chunks=_I(),
            total_size=_I(),
            unique_size=_I(),
            deduplication_ratio=_F(allow_null=True),
        )
    ),
    parameters=[OpenApiParameter("repository_path", str, required=True)],
    tags=["integration guide"],
)
@route(["GET"])
def info(request):
    _require(request, "viewer")
    repo = _repository(request)
    # A GET starts no job: the statistics every job that changes the repository stored
    # (backup, prune, compact, delete, sync) are the answer. POST
    # /api/v1/repositories/{name}/info/ reads them from borg again.
    summary = repository_summary(repo)
    return Response(
        {
            "repository_id": summary["repository_id"],
            "location": summary["location"],
            "encryption_mode": summary["encryption_mode"],
            "unique_chunks": summary["unique_chunks"],
            "total_chunks": summary["total_chunks"],
            "total_size": summary["total_size"],
            "unique_size": summary["unique_compressed_size"],
            "deduplication_ratio": summary["deduplication_ratio"],
        }
    )
