"""One function per operation, reached from every entry point (admin, API, CLI, schedules).

Each takes a claimed Job (its repository is leased to it), runs borg through `borg.py`, and
writes the outcome to the rows. They raise BorgError, InvalidInput or OperationError on
failure; `jobs.execute` records that on the Job.
"""

import hashlib
import json
import math
import os
import posixpath
import random
import re
import shutil
import socket
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from django.conf import settings
from django.db import transaction
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from borgapp import borg, validation, vault
from borgapp.models import (
    Archive,
    ArchiveDiff,
    ArchiveDiffItem,
    ArchiveItem,
    Job,
    Mount,
    Repository,
    RetentionPolicy,
    keep_options,
)

ARCHIVE_TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
ARCHIVE_TIME_GLOB = "[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]T[0-9][0-9]:[0-9][0-9]:[0-9][0-9]Z"


class OperationError(Exception):
    """An operation refused to run: `code` for machines, the text for a person."""

    def __init__(self, message: str, code: str = "invalid_request", result: dict | None = None):
        super().__init__(message)
        self.code = code
        self.result = result or {}  # what was found before it failed, kept on the Job


@dataclass
class Outcome:
    result: dict = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    tail: list[str] = field(default_factory=list)
    # Returned to an in-process caller only, never stored (an exported key, for instance).
    payload: str | None = None


def borg_config() -> borg.BorgConfig:
    base = Path(settings.BORG_BASE_DIR)
    base.mkdir(parents=True, exist_ok=True, mode=0o700)
    return borg.BorgConfig(
        binary=settings.BORG_BINARY,
        base_dir=str(base),
        rsh=settings.BORG_RSH,
        remote_path=settings.BORG_REMOTE_PATH,
        lock_wait=settings.BORG_LOCK_WAIT,
        grace_sigint=settings.BORG_GRACE_SIGINT,
        grace_sigterm=settings.BORG_GRACE_SIGTERM,
    )


class Context:
    """What an operation needs: its job, its repository, and a borg runner wired to the
    job's progress, cancel flag and deadline."""

    def __init__(self, job: Job, progress):
        self.job = job
        self.repo: Repository | None = job.repository
        self.params = job.params or {}
        self.progress = progress
        self.config = borg_config()
        self.warnings: list[str] = []
        self.tail: list[str] = []
        self.ends_at = time.monotonic() + settings.JOB_DEADLINE  # for the whole job

    def borg(
        self, command: borg.Command, *, passphrase="stored", stoppable=True, on_line=None
    ) -> borg.Result:
        if self.repo and not validation.is_remote(self.repo.location):
            # the allowed roots are checked again right before borg runs (SEC-04)
            validation.require_under_roots(
                self.repo.location, settings.REPOSITORY_ROOTS, "Repository location"
            )
        if passphrase == "stored":
            passphrase = self.repo.get_passphrase() if self.repo else None
        try:
            result = borg.run(
                command,
                self.config,
                passphrase=passphrase,
                on_event=self.progress.on_event if self.progress else None,
                on_start=self.progress.on_start if self.progress else None,
                should_stop=self.progress.should_stop if self.progress and stoppable else None,
                deadline=max(1.0, self.ends_at - time.monotonic()),
                on_line=on_line,
            )
        except borg.BorgError as exc:
            self.tail = exc.tail
            raise
        self.tail = result.tail
        if result.warning:
            self.warnings.extend(result.warnings or [f"borg ended with warning code {result.rc}"])
        return result

    def outcome(self, result: dict, payload: str | None = None) -> Outcome:
        return Outcome(result=result, warnings=self.warnings, tail=self.tail, payload=payload)


def run(job: Job, progress=None) -> Outcome:
    operation = OPERATIONS.get(job.kind)
    if operation is None:
        raise OperationError(f"Unknown operation {job.kind!r}.")
    ctx = Context(job, progress)
    if ctx.repo is None:
        raise OperationError("The job's repository no longer exists.", "repository_missing")
    return operation(ctx)


# --- catalog ------------------------------------------------------------------------------


def _dt(value):
    if not value:
        return None
    parsed = parse_datetime(value)
    if parsed is not None and timezone.is_naive(parsed):
        # borg prints local time without an offset; it runs with TZ=UTC (borg.environment).
        parsed = parsed.replace(tzinfo=UTC)
    return parsed


def sync_catalog(ctx: Context, stoppable: bool = True) -> dict:
    """Make the Archive rows equal `borg list` (REL-13): one borg call, one bulk upsert."""
    command = borg.list_cmd(ctx.repo.location)
    listed = ctx.borg(command, stoppable=stoppable).json().get("archives", [])
    return apply_listing(ctx.repo, listed)


def apply_listing(repo: Repository, listed: list[dict]) -> dict:
    now = timezone.now()
    existing = {a.name: a for a in repo.archives.all()}
    seen, new, changed = set(), [], []
    for item in listed:
        name = item.get("name") or item.get("archive")
        if not name:
            continue
        seen.add(name)
        values = {
            "borg_id": item.get("id", ""),
            "start": _dt(item.get("start") or item.get("time")),
            "end": _dt(item.get("end")),
            "hostname": item.get("hostname", "") or "",
            "username": item.get("username", "") or "",
            "comment": item.get("comment", "") or "",
            "is_checkpoint": bool(borg_checkpoint(name)),
        }
        if values["start"] and values["end"]:
            values["duration"] = (values["end"] - values["start"]).total_seconds()
        archive = existing.get(name)
        if archive is None:
            new.append(Archive(repository=repo, name=name, synced_at=now, **values))
            continue
        if any(getattr(archive, key) != value for key, value in values.items()):
            for key, value in values.items():
                setattr(archive, key, value)
            archive.synced_at = now
            changed.append(archive)
    gone = [a.pk for name, a in existing.items() if name not in seen]
    with transaction.atomic():
        Archive.objects.bulk_create(new, batch_size=500)
        if changed:
            Archive.objects.bulk_update(
                changed,
                [
                    "borg_id",
                    "start",
                    "end",
                    "duration",
                    "hostname",
                    "username",
                    "comment",
                    "is_checkpoint",
                    "synced_at",
                ],
                batch_size=500,
            )
        if gone:
            Archive.objects.filter(pk__in=gone).delete()
        Repository.objects.filter(pk=repo.pk).update(catalog_synced_at=now, catalog_stale=False)
    return {"archives": len(seen), "added": len(new), "updated": len(changed), "removed": len(gone)}


def borg_checkpoint(name: str) -> bool:
    return validation.CHECKPOINT_SUFFIX_RE.search(name) is not None


def store_repository_stats(repo: Repository, info: dict) -> None:
    stats = (info.get("cache") or {}).get("stats") or {}
    repository = info.get("repository") or {}
    encryption = (info.get("encryption") or {}).get("mode")
    fields = {
        "total_size": stats.get("total_size"),
        "total_compressed_size": stats.get("total_csize"),
        "unique_size": stats.get("unique_size"),
        "unique_compressed_size": stats.get("unique_csize"),
        "total_chunks": stats.get("total_chunks"),
        "unique_chunks": stats.get("total_unique_chunks"),
        "stats_updated_at": timezone.now(),
    }
    if repository.get("id"):
        fields["borg_id"] = repository["id"]
    if encryption:
        fields["encryption"] = encryption
    Repository.objects.filter(pk=repo.pk).update(**fields)
    for key, value in fields.items():
        setattr(repo, key, value)


def repository_summary(repo: Repository) -> dict:
    return {
        "repository_id": repo.borg_id,
        "location": repo.location,
        "encryption_mode": repo.encryption,
        "total_size": repo.total_size,
        "total_compressed_size": repo.total_compressed_size,
        "unique_size": repo.unique_size,
        "unique_compressed_size": repo.unique_compressed_size,
        "unique_chunks": repo.unique_chunks,
        "total_chunks": repo.total_chunks,
        "deduplication_ratio": repo.deduplication_ratio,
        "archives": repo.archives.filter(is_checkpoint=False).count(),
    }


# --- repository lifecycle ---------------------------------------------------------------------


def op_init(ctx: Context) -> Outcome:
    repo = ctx.repo
    command = borg.init_cmd(repo.location, repo.encryption, append_only=repo.append_only)
    command.options.append("--make-parent-dirs")
    ctx.borg(command)
    if not validation.is_remote(repo.location):
        os.chmod(repo.location, 0o700)
    store_repository_stats(repo, ctx.borg(borg.info_cmd(repo.location)).json())
    Repository.objects.filter(pk=repo.pk).update(state=Repository.State.READY)
    apply_listing(repo, [])
    return ctx.outcome({"message": "Repository initialized.", **repository_summary(repo)})


def op_import(ctx: Context) -> Outcome:
    repo = ctx.repo
    # Importing is the explicit act of trusting this repository, encrypted or not.
    info_command = borg.info_cmd(repo.location)
    info_command.extra_env["BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK"] = "yes"
    store_repository_stats(repo, ctx.borg(info_command).json())
    synced = sync_catalog(ctx)
    if synced["archives"]:
        detail = ctx.borg(borg.info_cmd(repo.location, all_archives=True)).json()
        store_archive_stats(repo, detail.get("archives", []))
    Repository.objects.filter(pk=repo.pk).update(state=Repository.State.READY)
    return ctx.outcome({"message": "Repository imported.", **synced, **repository_summary(repo)})


def store_archive_stats(repo: Repository, archives: list[dict]) -> None:
    by_name = {a.name: a for a in repo.archives.all()}
    changed = []
    for item in archives:
        archive = by_name.get(item.get("name"))
        stats = item.get("stats") or {}
        if archive is None or not stats:
            continue
        archive.original_size = stats.get("original_size")
        archive.compressed_size = stats.get("compressed_size")
        archive.deduplicated_size = stats.get("deduplicated_size")
        archive.nfiles = stats.get("nfiles")
        archive.duration = item.get("duration", archive.duration)
        changed.append(archive)
    Archive.objects.bulk_update(
        changed,
        ["original_size", "compressed_size", "deduplicated_size", "nfiles", "duration"],
        batch_size=500,
    )


def op_sync(ctx: Context) -> Outcome:
    synced = sync_catalog(ctx)
    store_repository_stats(ctx.repo, ctx.borg(borg.info_cmd(ctx.repo.location)).json())
    return ctx.outcome({**synced, **repository_summary(ctx.repo)})


def op_info(ctx: Context) -> Outcome:
    store_repository_stats(ctx.repo, ctx.borg(borg.info_cmd(ctx.repo.location)).json())
    return ctx.outcome(repository_summary(ctx.repo))


# --- backup and retention -----------------------------------------------------------------------


def archive_name_for(prefix: str, when: datetime | None = None) -> str:
    validation.validate_archive_part(prefix, "Archive prefix")
    when = (when or datetime.now(UTC)).astimezone(UTC)
    return f"{prefix}-{when.strftime(ARCHIVE_TIME_FORMAT)}"


def prefix_glob(prefix: str) -> str:
    """Archives of exactly this backup set (and their checkpoints), never another set's."""
    validation.validate_archive_part(prefix, "Archive prefix")
    return f"{prefix}-{ARCHIVE_TIME_GLOB}*"


def op_backup(ctx: Context) -> Outcome:
    repo, params = ctx.repo, ctx.params
    name = params.get("archive") or archive_name_for(params.get("prefix") or "backup")
    validation.validate_existing_archive_name(name)
    if borg_checkpoint(name):
        raise validation.InvalidInput("Archive names must not end in '.checkpoint'.")
    with tempfile.TemporaryDirectory(prefix="opscenter-") as scratch:
        exclude_file = None
        if params.get("excludes"):
            exclude_file = str(borg.write_exclude_file(Path(scratch), params["excludes"]))
        command = borg.create_cmd(
            repo.location,
            name,
            params.get("sources") or [],
            compression=params.get("compression") or "lz4",
            exclude_file=exclude_file,
            one_file_system=bool(params.get("one_file_system")),
            checkpoint_interval=params.get("checkpoint_interval"),
            comment=params.get("comment") or "",
        )
        try:
            created = ctx.borg(command).json()
        except borg.BorgError:
            _sync_quietly(ctx)  # record the checkpoint an interrupted run left (REL-01)
            raise
    archive = created.get("archive") or {}
    stats = archive.get("stats") or {}
    store_repository_stats(repo, created)
    # The catalog delta of a successful create is exact: one archive added, and borg has
    # already dropped the checkpoints of this run. Applying it here saves a `borg list`
    # (~0.7 s per backup on 2 cores, PERF-03); failed runs and every other writing
    # operation resynchronise from `borg list` instead.
    final_name = archive.get("name", name)
    with transaction.atomic():
        Archive.objects.update_or_create(
            repository=repo,
            name=final_name,
            defaults={
                "borg_id": archive.get("id", ""),
                "start": _dt(archive.get("start")),
                "end": _dt(archive.get("end")),
                "duration": archive.get("duration"),
                "original_size": stats.get("original_size"),
                "compressed_size": stats.get("compressed_size"),
                "deduplicated_size": stats.get("deduplicated_size"),
                "nfiles": stats.get("nfiles"),
                "comment": params.get("comment") or "",
                "hostname": socket.gethostname(),
                "username": _username(),
                "created_by_app": True,
                "is_checkpoint": False,
            },
        )
        Archive.objects.filter(
            repository=repo, name__startswith=f"{final_name}.checkpoint"
        ).delete()
    repo.refresh_from_db(fields=["catalog_stale"])
    if repo.catalog_stale:
        # an earlier run ended early: record what it left (checkpoints) from borg itself
        sync_catalog(ctx, stoppable=False)
    original, compressed, dedup = (
        stats.get("original_size"),
        stats.get("compressed_size"),
        stats.get("deduplicated_size"),
    )
    return ctx.outcome(
        {
            "archive_name": archive.get("name", name),
            "archive_id": archive.get("id", ""),
            "original_size": original,
            "compressed_size": compressed,
            "deduplicated_size": dedup,
            "nfiles": stats.get("nfiles"),
            "compression_ratio": _ratio(original, compressed),
            "deduplication_ratio": _ratio(original, dedup),
            "duration": archive.get("duration"),
        }
    )


def _username() -> str:
    import pwd

    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        return str(os.getuid())


def _ratio(numerator, denominator):
    """Every ratio is original over stored: higher is better."""
    if numerator and denominator:
        return round(numerator / denominator, 4)
    return None


def _sync_quietly(ctx: Context) -> None:
    """After a failed or cancelled run: record what it left (checkpoints). Not stoppable,
    since a cancel that stopped the backup must not also stop this short read."""
    try:
        sync_catalog(ctx, stoppable=False)
    except borg.BorgError:
        pass


SEED_NAME_RE = re.compile(r"^(?P<set>.+)_[0-9]{8}_[0-9]{6}$")


def seed_set_globs(repo: Repository) -> list[str]:
    """The integration guide names archives `<set>_<YYYYmmdd_HHMMSS>`: one glob per set, so
    that each set keeps its own retention and no set prunes another's archives (REL-12)."""
    sets = set()
    for name in repo.archives.filter(is_checkpoint=False).values_list("name", flat=True):
        match = SEED_NAME_RE.match(name)
        if match and validation.ARCHIVE_PART_RE.match(match["set"]):
            sets.add(match["set"])
    return [f"{name}_{'[0-9]' * 8}_{'[0-9]' * 6}*" for name in sorted(sets)]


def op_prune(ctx: Context) -> Outcome:
    repo, params = ctx.repo, ctx.params
    if params.get("scope") == "seed":
        sync_catalog(ctx)
        globs = seed_set_globs(repo)
    else:
        globs = [prefix_glob(params.get("prefix") or "")]
    if params.get("policy"):
        policy = RetentionPolicy.objects.filter(name=params["policy"]).first()
        if policy is None:
            raise OperationError(f"No retention policy named {params['policy']!r}.", "not_found")
        rules = policy.borg_options()
    else:
        rules = keep_options(**(params.get("keep") or {}))
    dry_run = bool(params.get("dry_run"))
    kept, pruned = [], []
    for glob in globs:
        result = ctx.borg(borg.prune_cmd(repo.location, glob, rules, dry_run=dry_run))
        listing = borg.prune_lines(result)
        kept += listing["kept"]
        pruned += listing["pruned"]
    summary = {"globs": globs, "rules": rules, "dry_run": dry_run, "kept": kept, "pruned": pruned}
    if dry_run:
        return ctx.outcome(summary)
    summary["catalog"] = sync_catalog(ctx, stoppable=False)  # the prune has happened
    compact = params.get("compact", True)
    if compact and not repo.append_only:
        ctx.borg(borg.compact_cmd(repo.location))
        summary["compacted"] = True
    else:
        summary["compacted"] = False
        if repo.append_only:
            summary["note"] = "Append-only repository: space is not reclaimed by compact."
    return ctx.outcome(summary)


def op_compact(ctx: Context) -> Outcome:
    ctx.borg(borg.compact_cmd(ctx.repo.location))
    result = {"compacted": True}
    if ctx.repo.append_only:
        result["note"] = "Append-only repository: borg reclaims no space here."
    return ctx.outcome(result)


def op_check(ctx: Context) -> Outcome:
    p = ctx.params
    ctx.borg(
        borg.check_cmd(
            ctx.repo.location,
            repository_only=bool(p.get("repository_only")),
            archives_only=bool(p.get("archives_only")),
            verify_data=bool(p.get("verify_data")),
            last=p.get("last"),
            max_duration=p.get("max_duration"),
        )
    )
    return ctx.outcome({"ok": True, "verify_data": bool(p.get("verify_data"))})


# --- archives ----------------------------------------------------------------------------------


def _archive(ctx: Context) -> Archive:
    name = ctx.params.get("archive") or ctx.job.archive_name
    validation.validate_existing_archive_name(name or "")
    archive = ctx.repo.archives.filter(name=name).first()
    if archive is None:
        sync_catalog(ctx)
        archive = ctx.repo.archives.filter(name=name).first()
    if archive is None:
        raise borg.ArchiveMissing(f"Archive {name!r} is not in repository {ctx.repo.name}.")
    return archive


def prepare_empty_dir(path: str, roots: list[Path], what: str) -> Path:
    """A new or empty directory under an allowed root, realpath checked after creation (SEC-06)."""
    if not isinstance(path, str) or not path.startswith("/"):
        raise validation.InvalidInput(f"{what} must be an absolute path.")
    validation.no_control_chars(path, what)
    validation.require_under_roots(path, roots, what)
    target = Path(path)
    if target.is_symlink():
        raise validation.InvalidInput(f"{what} {path!r} is a symbolic link.")
    if target.exists():
        if not target.is_dir():
            raise validation.InvalidInput(f"{what} {path!r} exists and is not a directory.")
        if any(target.iterdir()):
            raise validation.InvalidInput(f"{what} {path!r} is not empty.")
    else:
        target.mkdir(parents=True, mode=0o700)
    return validation.require_under_roots(str(target), roots, what)


def op_extract(ctx: Context) -> Outcome:
    archive = _archive(ctx)
    if not archive.created_by_app and borg.version(ctx.config) < borg.SAFE_RESTORE_VERSION:
        raise OperationError(
            "Restoring an archive this app did not make needs borg 1.4.5 or newer "
            "(CVE-2026-62268).",
            "borg_too_old",
        )
    target = prepare_empty_dir(
        ctx.params.get("target", ""), settings.RESTORE_ROOTS, "Restore target"
    )
    command = borg.extract_cmd(
        ctx.repo.location,
        archive.name,
        str(target),
        ctx.params.get("paths") or [],
        strip_components=int(ctx.params.get("strip_components") or 0),
    )
    ctx.borg(command)
    files = sum(len(names) for _, _, names in os.walk(target))
    return ctx.outcome({"archive_name": archive.name, "target_path": str(target), "files": files})


def op_delete(ctx: Context) -> Outcome:
    archive = _archive(ctx)
    ctx.borg(borg.delete_archive_cmd(ctx.repo.location, archive.name))
    catalog = sync_catalog(ctx, stoppable=False)  # the delete has happened
    result = {"archive_name": archive.name, "deleted": True, "catalog": catalog}
    if ctx.repo.append_only:
        result["note"] = "Append-only repository: the data stays until a non-append-only write."
    return ctx.outcome(result)


ITEM_BATCH = 2000


class _Batcher:
    """Collects parsed rows from a streamed borg listing and writes them in bulk, so an
    archive of millions of files never sits in memory."""

    def __init__(self, ctx: Context, model, parse):
        self.ctx, self.model, self.parse = ctx, model, parse
        self.rows: list = []
        self.count = 0

    def __call__(self, raw: bytes) -> None:
        line = raw.strip()
        if not line:
            return
        try:
            data = json.loads(line)
        except json.JSONDecodeError:
            raise OperationError("borg printed a line that is not JSON.") from None
        self.rows.append(self.parse(data))
        if len(self.rows) >= ITEM_BATCH:
            self.flush()

    def flush(self) -> None:
        if self.rows:
            self.model.objects.bulk_create(self.rows, batch_size=ITEM_BATCH)
            self.count += len(self.rows)
            self.rows = []
            if self.ctx.progress:
                self.ctx.progress.fields["progress_files"] = self.count
                self.ctx.progress.flush()


def _item_row(archive: Archive):
    def parse(data: dict) -> ArchiveItem:
        path = str(data.get("path", ""))
        return ArchiveItem(
            archive=archive,
            path=path,
            parent=posixpath.dirname(path),
            type=str(data.get("type", ""))[:1],
            mode=str(data.get("mode", ""))[:10],
            user=str(data.get("user") or data.get("uid") or "")[:255],
            group=str(data.get("group") or data.get("gid") or "")[:255],
            size=data.get("size"),
            mtime=_dt(data.get("mtime")),
            linktarget=str(data.get("linktarget") or data.get("source") or ""),
            healthy=bool(data.get("healthy", True)),
        )

    return parse


def load_contents(ctx: Context, archive: Archive) -> int:
    """Load an archive's file listing into ArchiveItem rows (once: archives never change)."""
    if archive.contents_ready:
        return archive.contents_count
    archive.items.all().delete()
    Archive.objects.filter(pk=archive.pk).update(contents_borg_id="", contents_count=None)
    batcher = _Batcher(ctx, ArchiveItem, _item_row(archive))
    ctx.borg(borg.list_items_cmd(ctx.repo.location, archive.name), on_line=batcher)
    batcher.flush()
    Archive.objects.filter(pk=archive.pk).update(
        contents_borg_id=archive.borg_id, contents_count=batcher.count
    )
    archive.contents_borg_id, archive.contents_count = archive.borg_id, batcher.count
    return batcher.count


def op_contents(ctx: Context) -> Outcome:
    archive = _archive(ctx)
    return ctx.outcome({"archive_name": archive.name, "items": load_contents(ctx, archive)})


def change_kind(changes: list[dict]) -> str:
    """added / removed / modified (content or link target) / metadata (mode, owner, times)."""
    kinds = [str(change.get("type", "")) for change in changes]
    if any(kind.startswith("added") for kind in kinds):
        return ArchiveDiffItem.Change.ADDED
    if any(kind.startswith("removed") for kind in kinds):
        return ArchiveDiffItem.Change.REMOVED
    if any(kind in ("modified", "changed link") for kind in kinds):
        return ArchiveDiffItem.Change.MODIFIED
    return ArchiveDiffItem.Change.METADATA


def op_diff(ctx: Context) -> Outcome:
    """Load `borg diff` of two archives into ArchiveDiffItem rows (once per pair)."""
    archive = _archive(ctx)
    other_name = ctx.params.get("other") or ""
    other = ctx.repo.archives.filter(name=other_name).first()
    if other is None:
        raise borg.ArchiveMissing(f"Archive {other_name!r} is not in repository {ctx.repo.name}.")
    diff = ArchiveDiff.objects.filter(archive=archive, other=other).first()
    if diff is not None and diff.is_current:
        return ctx.outcome(
            {"archive_name": archive.name, "other": other.name, "changes": diff.count}
        )
    if diff is not None:
        diff.delete()
    diff = ArchiveDiff.objects.create(
        archive=archive, other=other, archive_borg_id="", other_borg_id=""
    )

    def parse(data: dict) -> ArchiveDiffItem:
        changes = data.get("changes") or []
        return ArchiveDiffItem(
            diff=diff, path=str(data.get("path", "")), change=change_kind(changes), changes=changes
        )

    batcher = _Batcher(ctx, ArchiveDiffItem, parse)
    ctx.borg(borg.diff_cmd(ctx.repo.location, archive.name, other.name), on_line=batcher)
    batcher.flush()
    ArchiveDiff.objects.filter(pk=diff.pk).update(
        archive_borg_id=archive.borg_id, other_borg_id=other.borg_id, count=batcher.count
    )
    return ctx.outcome(
        {"archive_name": archive.name, "other": other.name, "changes": batcher.count}
    )


# --- verify-restore (REL-17) ------------------------------------------------------------------


def newest_of_set(repo: Repository, prefix: str) -> Archive | None:
    """The newest complete archive named `<prefix>-<UTC time>`."""
    pattern = re.compile(re.escape(prefix) + r"-\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$")
    candidates = repo.archives.filter(name__startswith=prefix + "-", is_checkpoint=False)
    for archive in candidates.order_by("-start", "-id"):
        if pattern.match(archive.name):
            return archive
    return None


def choose_sample(files: list[tuple[str, int]], count: int, max_bytes: int) -> list[str]:
    """Up to `count` random regular files whose sizes add up to at most `max_bytes`."""
    rng = random.SystemRandom()
    order = list(files)
    rng.shuffle(order)
    chosen, total = [], 0
    for path, size in order:
        if len(chosen) >= count:
            break
        if total + (size or 0) <= max_bytes:
            chosen.append(path)
            total += size or 0
    return sorted(chosen)


def _sha256(path: Path) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def _damaged(ctx: Context, archive: Archive, paths: list[str], sandbox: Path) -> list[dict]:
    """After borg stopped on damaged data: restore the files one by one to name them."""
    problems = []
    for index, path in enumerate(paths):
        target = sandbox / f"one-{index}"
        target.mkdir()
        try:
            ctx.borg(borg.extract_cmd(ctx.repo.location, archive.name, str(target), [path]))
        except borg.IntegrityError as exc:
            problems.append({"path": path, "problem": f"damaged in the repository: {exc.message}"})
    return problems


def op_verify_restore(ctx: Context) -> Outcome:
    """Restore a sample of the newest archive of a backup set into a sandbox and compare it,
    file by file, with the archive's own checksums and with the source as it is now."""
    p = ctx.params
    prefix = p.get("prefix") or ""
    validation.validate_archive_part(prefix, "Archive prefix")
    sync_catalog(ctx)
    archive = newest_of_set(ctx.repo, prefix)
    if archive is None:
        raise OperationError(
            f"No archive named {prefix}-<time> in {ctx.repo.name} to verify yet.", "not_found"
        )
    load_contents(ctx, archive)
    files = list(archive.items.filter(type="-").values_list("path", "size"))
    count = int(p.get("sample_files") or 20)
    if p.get("sample_percent"):
        count = math.ceil(len(files) * int(p["sample_percent"]) / 100)
    sample = choose_sample(files, count, int(p.get("sample_max_bytes") or 100 * 2**20))
    result = {"archive_name": archive.name, "files_in_archive": len(files), "sampled": len(sample)}
    if not sample:
        return ctx.outcome({**result, "problems": [], "note": "No regular file fits the sample."})
    root = Path(settings.RESTORE_ROOTS[0]) / ".verify"
    root.mkdir(parents=True, exist_ok=True, mode=0o700)
    sandbox = prepare_empty_dir(str(root / f"job-{ctx.job.pk}"), settings.RESTORE_ROOTS, "Sandbox")
    try:
        problems = _compare_sample(ctx, archive, sample, sandbox)
    finally:
        shutil.rmtree(sandbox, ignore_errors=True)
    chosen = set(sample)
    result.update(
        bytes=sum(size or 0 for path, size in files if path in chosen),
        files=sample,
        problems=problems,
    )
    if problems:
        named = "; ".join(f"{x['path']}: {x['problem']}" for x in problems[:10])
        raise OperationError(
            f"Verify-restore of {archive.name} found {len(problems)} problem(s): {named}",
            "verify_failed",
            result=result,
        )
    return ctx.outcome(result)


def _compare_sample(ctx: Context, archive: Archive, sample: list[str], sandbox: Path) -> list:
    restored = sandbox / "restore"
    restored.mkdir()
    try:
        ctx.borg(borg.extract_cmd(ctx.repo.location, archive.name, str(restored), sample))
    except borg.IntegrityError:
        return _damaged(ctx, archive, sample, sandbox)
    sums = {}

    def collect(raw: bytes) -> None:
        if raw.strip():
            item = json.loads(raw)
            sums[item.get("path")] = item.get("sha256")

    command = borg.list_items_cmd(ctx.repo.location, archive.name, sample, checksums=True)
    ctx.borg(command, on_line=collect)
    problems = []
    for path in sample:
        copy = restored / path
        if not copy.is_file():
            problems.append({"path": path, "problem": "not restored"})
            continue
        digest = _sha256(copy)
        if digest != sums.get(path):
            problems.append({"path": path, "problem": "restored bytes differ from the archive"})
            continue
        source = Path("/" + path)
        try:
            same = source.is_file() and _sha256(source) == digest
        except OSError as exc:
            problems.append({"path": path, "problem": f"source unreadable: {exc.strerror}"})
            continue
        if not source.exists():
            problems.append({"path": path, "problem": "missing at the source now"})
        elif not same:
            problems.append({"path": path, "problem": "differs from the source as it is now"})
    return problems


MOUNT_WAIT = 15.0


def op_mount(ctx: Context) -> Outcome:
    name = ctx.params.get("archive") or ""
    if name:
        name = _archive(ctx).name
    mountpoint = prepare_empty_dir(
        ctx.params.get("mountpoint", ""), settings.MOUNT_ROOTS, "Mount point"
    )
    ctx.borg(borg.mount_cmd(ctx.repo.location, name or None, str(mountpoint)))
    deadline = time.monotonic() + MOUNT_WAIT
    while not os.path.ismount(mountpoint):
        if time.monotonic() > deadline:
            raise OperationError(
                "borg reported success but nothing is mounted at the mount point.",
                "mount_failed",
            )
        time.sleep(0.1)
    Mount.objects.update_or_create(
        mountpoint=str(mountpoint),
        defaults={"repository": ctx.repo, "archive_name": name, "job": ctx.job},
    )
    return ctx.outcome({"archive_name": name, "mount_point": str(mountpoint), "mounted": True})


def op_umount(ctx: Context) -> Outcome:
    mountpoint = os.path.realpath(ctx.params.get("mountpoint", ""))
    validation.require_under_roots(mountpoint, settings.MOUNT_ROOTS, "Mount point")
    was_mounted = os.path.ismount(mountpoint)
    if was_mounted:
        ctx.borg(borg.umount_cmd(mountpoint), passphrase=None)
        if os.path.ismount(mountpoint):
            raise OperationError("The mount point is still mounted after umount.", "umount_failed")
    from borgapp.jobs import release_mount_lease

    for mount in Mount.objects.filter(mountpoint=mountpoint):
        release_mount_lease(mount)
        mount.delete()
    message = "Unmounted." if was_mounted else "Nothing was mounted there; the record was cleared."
    return ctx.outcome({"mount_point": mountpoint, "was_mounted": was_mounted, "message": message})


# --- keys and locks ---------------------------------------------------------------------------


def op_key_export(ctx: Context) -> Outcome:
    result = ctx.borg(borg.key_export_cmd(ctx.repo.location, paper=bool(ctx.params.get("paper"))))
    key = result.stdout
    digest = hashlib.sha256(key.encode()).hexdigest()
    return ctx.outcome({"bytes": len(key), "sha256": digest}, payload=key)


def op_change_passphrase(ctx: Context) -> Outcome:
    repo = ctx.repo
    repo.refresh_from_db()
    if not repo.new_passphrase_encrypted:
        raise OperationError("No new passphrase was given.", "invalid_request")
    new = vault.decrypt(repo.new_passphrase_encrypted)
    old = repo.get_passphrase() or ""
    try:
        ctx.borg(borg.change_passphrase_cmd(repo.location, old, new), passphrase=None)
    except BaseException:
        Repository.objects.filter(pk=repo.pk).update(new_passphrase_encrypted="")
        raise
    # one UPDATE: the repository never has the new passphrase without the app knowing it
    Repository.objects.filter(pk=repo.pk).update(
        passphrase_encrypted=repo.new_passphrase_encrypted, new_passphrase_encrypted=""
    )
    return ctx.outcome({"changed": True})


def op_break_lock(ctx: Context) -> Outcome:
    # The job holds the app's lease, so no job of ours is using the repository.
    ctx.borg(borg.break_lock_cmd(ctx.repo.location))
    return ctx.outcome({"broken": True})


OPERATIONS = {
    Job.Kind.INIT: op_init,
    Job.Kind.IMPORT: op_import,
    Job.Kind.BACKUP: op_backup,
    Job.Kind.SYNC: op_sync,
    Job.Kind.INFO: op_info,
    Job.Kind.PRUNE: op_prune,
    Job.Kind.COMPACT: op_compact,
    Job.Kind.CHECK: op_check,
    Job.Kind.EXTRACT: op_extract,
    Job.Kind.DELETE: op_delete,
    Job.Kind.MOUNT: op_mount,
    Job.Kind.UMOUNT: op_umount,
    Job.Kind.KEY_EXPORT: op_key_export,
    Job.Kind.CHANGE_PASSPHRASE: op_change_passphrase,
    Job.Kind.BREAK_LOCK: op_break_lock,
    Job.Kind.CONTENTS: op_contents,
    Job.Kind.DIFF: op_diff,
    Job.Kind.VERIFY_RESTORE: op_verify_restore,
}
