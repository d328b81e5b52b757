"""One function per operation, reached from every entry point (admin, API, CLI, schedules).

Each takes a claimed Job (its repository is leased to it), runs borg through `borg.py`, and
writes the outcome to the rows. They raise BorgError, InvalidInput or OperationError on
failure; `jobs.execute` records that on the Job.
"""

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field, replace
from datetime import UTC
from pathlib import Path

from django.conf import settings
from django.utils import timezone

from borgapp import (
    borg,
    catalog,
    dumps,
    fileindex,
    filesearch,
    heldir,
    inplace,
    lease,
    listing,
    naming,
    params,
    validation,
    vault,
    verifying,
)
from borgapp.errors import ClientGone, OperationError
from borgapp.models import (
    Archive,
    ArchiveDiff,
    ArchiveDiffItem,
    ArchiveItem,
    DatabaseSource,
    Job,
    Mount,
    Repository,
    RetentionPolicy,
)

log = logging.getLogger(__name__)


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

    def __init__(self, job: Job, progress, sink=None):
        self.job = job
        self.sink = sink  # a download's pipe (downloads.Sink), in the process that asked
        self.repo: Repository | None = job.repository
        self.params = params.load(job.kind, job.params)  # the kind's dataclass (params.py)
        self.progress = progress
        self.config = borg_config()
        self.warnings: list[str] = []
        self.tail: list[str] = []
        self.ends_at = time.monotonic() + settings.JOB_DEADLINE  # for the whole job

    def borg(
        self, command: borg.Command, *, passphrase="stored", stoppable=True, on_line=None
    ) -> borg.Result:
        if self.repo:
            # the allowed roots are checked again right before borg runs (SEC-04)
            validation.validate_location(self.repo.location, settings.REPOSITORY_ROOTS)
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


def run(job: Job, progress=None, sink=None) -> Outcome:
    operation = OPERATIONS.get(job.kind)
    if operation is None:
        raise OperationError(f"Unknown operation {job.kind!r}.")
    ctx = Context(job, progress, sink)
    if ctx.repo is None:
        raise OperationError("The job's repository no longer exists.", "repository_missing")
    return operation(ctx)


# --- catalog ------------------------------------------------------------------------------


def sync_catalog(ctx: Context, stoppable: bool = True) -> dict:
    """Make the Archive rows equal `borg list` (REL-13): one borg call, one bulk upsert."""
    command = borg.list_cmd(ctx.repo.location)
    listed = ctx.borg(command, stoppable=stoppable).json().get("archives", [])
    return catalog.apply_listing(ctx.repo, listed)


# --- repository lifecycle ---------------------------------------------------------------------


def op_init(ctx: Context) -> Outcome:
    repo = ctx.repo
    ctx.borg(borg.init_cmd(repo.location, repo.encryption, append_only=repo.append_only))
    if not validation.is_remote(repo.location):
        os.chmod(repo.location, 0o700)
    catalog.store_repository_stats(repo, ctx.borg(borg.info_cmd(repo.location)).json())
    Repository.objects.filter(pk=repo.pk).update(state=Repository.State.READY)
    catalog.apply_listing(repo, [])
    return ctx.outcome({"message": "Repository initialized.", **catalog.repository_summary(repo)})


def op_import(ctx: Context) -> Outcome:
    repo = ctx.repo
    # Importing is the explicit act of trusting this repository, encrypted or not.
    info = ctx.borg(borg.info_cmd(repo.location, trust_unencrypted=True)).json()
    catalog.store_repository_stats(repo, info)
    synced = sync_catalog(ctx)
    if synced["archives"]:
        detail = ctx.borg(borg.info_cmd(repo.location, all_archives=True)).json()
        catalog.store_archive_stats(repo, detail.get("archives", []))
    Repository.objects.filter(pk=repo.pk).update(state=Repository.State.READY)
    return ctx.outcome(
        {"message": "Repository imported.", **synced, **catalog.repository_summary(repo)}
    )


def refresh_stats(ctx: Context) -> None:
    """Read the repository's statistics again after a change (prune, compact, delete), so
    the stored ones that reads serve (the guide's GET /info) stay current. The change has
    happened: a failure here is logged and costs the job nothing."""
    try:
        info = ctx.borg(borg.info_cmd(ctx.repo.location), stoppable=False).json()
    except borg.BorgError as exc:
        log.warning("Statistics of %s not refreshed: %s", ctx.repo.name, exc.message)
        return
    catalog.store_repository_stats(ctx.repo, info)


def op_sync(ctx: Context) -> Outcome:
    synced = sync_catalog(ctx)
    catalog.store_repository_stats(ctx.repo, ctx.borg(borg.info_cmd(ctx.repo.location)).json())
    return ctx.outcome({**synced, **catalog.repository_summary(ctx.repo)})


def op_info(ctx: Context) -> Outcome:
    catalog.store_repository_stats(ctx.repo, ctx.borg(borg.info_cmd(ctx.repo.location)).json())
    return ctx.outcome(catalog.repository_summary(ctx.repo))


# --- backup and retention -----------------------------------------------------------------------


def _new_archive_name(repo: Repository, prefix: str) -> str:
    """`<prefix>-<UTC second>`. Backups of one set queued together run back to back: one
    that would take the name its predecessor made within the same second waits for the next
    second instead of failing on it."""
    name = naming.archive_name_for(prefix)
    while Archive.objects.filter(repository=repo, name=name).exists():
        time.sleep(0.05)
        name = naming.archive_name_for(prefix)
    return name


def op_backup(ctx: Context) -> Outcome:
    repo, p = ctx.repo, ctx.params
    name = p.archive or _new_archive_name(repo, p.prefix)
    validation.validate_existing_archive_name(name)
    if catalog.borg_checkpoint(name):
        raise validation.InvalidInput("Archive names must not end in '.checkpoint'.")
    if p.sources:
        validation.require_a_source(p.sources)
    with tempfile.TemporaryDirectory(prefix="opscenter-") as scratch:
        paths, excludes, dumping = list(p.sources), list(p.excludes), None
        if p.databases:
            dumping = _dumps_of(p, Path(scratch) / "databases")
            paths.append(dumping.borg_source)
            # --read-special reads devices and pipes as files: none under the sources
            excludes += ["pf:" + path for path in dumps.special_files(p.sources)]
        exclude_file = None
        if excludes:
            exclude_file = str(borg.write_exclude_file(Path(scratch), excludes))
        command = borg.create_cmd(
            repo.location,
            name,
            paths,
            compression=p.compression,
            exclude_file=exclude_file,
            one_file_system=p.one_file_system,
            checkpoint_interval=p.checkpoint_interval,
            comment=p.comment,
            read_special=dumping is not None,
        )
        if dumping is not None:
            dumping.start()
        done = False
        try:
            created = ctx.borg(command).json()
            done = True
        except borg.BorgError:
            _sync_quietly(ctx)  # record the checkpoint an interrupted run left (REL-01)
            raise
        finally:
            problems = dumping.finish(done) if dumping is not None else []
    if problems:  # no archive with a broken dump counts as a backup
        ctx.borg(borg.delete_archive_cmd(repo.location, name), stoppable=False)
        raise OperationError(
            "A database dump failed, so the archive that held it was deleted: "
            + "; ".join(problems),
            "dump_failed",
            result={"databases": dumping.result(), "problems": problems},
        )
    result = record_backup(repo, name, created, p.comment)
    repo.refresh_from_db(fields=["catalog_stale"])
    if repo.catalog_stale:
        # an earlier run ended early: record what it left (checkpoints) from borg itself
        sync_catalog(ctx, stoppable=False)
    if dumping is not None:
        result["databases"] = dumping.result()
    return ctx.outcome(result)


def record_backup(repo: Repository, name: str, created: dict, comment: str, made_on=None) -> dict:
    """What `borg create --json` said, written to the catalog; the backup job's result. Also
    for a backup an agent ran on its host (borgapp.fleet)."""
    archive = created.get("archive") or {}
    stats = archive.get("stats") or {}
    catalog.store_repository_stats(repo, created)
    final_name = catalog.record_created(
        repo, {"name": name, **archive}, comment=comment, made_on=made_on
    )
    original, compressed, dedup = (
        stats.get("original_size"),
        stats.get("compressed_size"),
        stats.get("deduplicated_size"),
    )
    return {
        "archive_name": final_name,
        "archive_id": archive.get("id", ""),
        "original_size": original,
        "compressed_size": compressed,
        "deduplicated_size": dedup,
        "nfiles": stats.get("nfiles"),
        "compression_ratio": _ratio(original, compressed),
        "deduplication_ratio": _ratio(original, dedup),
        "duration": archive.get("duration"),
    }


def _dumps_of(p, scratch: Path) -> dumps.Dumps:
    """The backup's database sources, in the order given, with their pipes made."""
    here = DatabaseSource.objects.filter(agent_host=None)  # a host's are its agent's alone
    by_name = here.in_bulk(p.databases, field_name="name")
    missing = [n for n in p.databases if n not in by_name]
    if missing:
        raise OperationError(f"No database source named {missing[0]!r} on this ops center.",
                             "invalid_input")  # fmt: skip
    scratch.mkdir(mode=0o700)
    dumping = dumps.Dumps([by_name[n].spec() for n in p.databases], scratch)
    dumping.prepare()
    return dumping


def op_restore_database(ctx: Context) -> Outcome:
    p = ctx.params
    archive = _archive(ctx)
    source_name, database = p.database.split("/")
    source = DatabaseSource.objects.filter(name=source_name, agent_host=None).first()
    if source is None:
        raise OperationError(f"No database source named {source_name!r} on this ops center.",
                             "invalid_input")  # fmt: skip
    spec = source.spec()
    path = dumps.archive_path(spec, database)

    def feed(fd: int) -> None:
        result = ctx.borg(borg.extract_stdout_cmd(ctx.repo.location, archive.name, path, fd))
        if result.warning and any("never matched" in w for w in result.warnings):
            raise OperationError(
                f"Archive {archive.name} holds no dump of {p.database} ({path}).", "no_dump"
            )

    with tempfile.TemporaryDirectory(prefix="opscenter-") as scratch:
        restored = dumps.restore(
            spec, database, Path(scratch), into=p.into, force=p.force, feed=feed
        )
    return ctx.outcome({"archive_name": archive.name, "path": path, **restored})


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


def seed_set_globs(repo: Repository) -> list[str]:
    """The integration guide names archives `<set>_<YYYYmmdd_HHMMSS>`: one glob per set, so
    that each set keeps its own retention and no set prunes another's archives (REL-12)."""
    sets = set()
    for name in repo.archives.filter(is_checkpoint=False).values_list("name", flat=True):
        match = naming.SEED_NAME_RE.match(name)
        if match and validation.ARCHIVE_PART_RE.match(match["set"]):
            sets.add(match["set"])
    return [naming.seed_glob(name) for name in sorted(sets)]


def op_prune(ctx: Context) -> Outcome:
    repo, p = ctx.repo, ctx.params
    if p.scope == "seed":
        sync_catalog(ctx)
        globs = seed_set_globs(repo)
    else:
        globs = [naming.prefix_glob(p.prefix)]
    if p.policy:
        policy = RetentionPolicy.objects.filter(name=p.policy).first()
        if policy is None:
            raise OperationError(f"No retention policy named {p.policy!r}.", "not_found")
        rules = policy.borg_options()
    else:
        rules = borg.keep_flags(**(p.keep or {}))
    dry_run = p.dry_run
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
    if p.compact and not repo.append_only:
        ctx.borg(borg.compact_cmd(repo.location))
        summary["compacted"] = True
    else:
        summary["compacted"] = False
        if repo.append_only:
            summary["note"] = "Append-only repository: space is not reclaimed by compact."
    refresh_stats(ctx)
    return ctx.outcome(summary)


def op_compact(ctx: Context) -> Outcome:
    ctx.borg(borg.compact_cmd(ctx.repo.location))
    refresh_stats(ctx)
    result = {"compacted": True}
    if ctx.repo.append_only:
        result["note"] = "Append-only repository: borg reclaims no space here."
    return ctx.outcome(result)


def op_check(ctx: Context) -> Outcome:
    p = ctx.params
    ctx.borg(
        borg.check_cmd(
            ctx.repo.location,
            repository_only=p.scope == "repository",
            archives_only=p.scope == "archives",
            verify_data=p.verify_data,
            last=p.last,
            max_duration=p.max_duration,
        )
    )
    return ctx.outcome({"ok": True, "verify_data": p.verify_data})


# --- archives ----------------------------------------------------------------------------------


def _archive(ctx: Context) -> Archive:
    name = ctx.job.archive_name  # intake stored the checked archive name on the job
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


def extract_into(ctx: Context, fd: int, command: borg.Command) -> borg.Result:
    return ctx.borg(replace(command, cwd_fd=fd))


def files_in(fd: int) -> int:
    return sum(len(names) for _, _, names, _ in os.fwalk(".", dir_fd=fd))


def _require_safe_restore(ctx: Context, archive: Archive) -> None:
    if not archive.created_by_app and borg.version(ctx.config) < borg.SAFE_RESTORE_VERSION:
        raise OperationError(
            "Restoring an archive this app did not make needs borg 1.4.5 or newer "
            "(CVE-2026-62268).",
            "borg_too_old",
        )


def op_extract(ctx: Context) -> Outcome:
    archive = _archive(ctx)
    _require_safe_restore(ctx, archive)
    target = prepare_empty_dir(ctx.params.target, settings.RESTORE_ROOTS, "Restore target")
    fd = heldir.hold_empty_dir(target, "Restore target")
    try:
        command = borg.extract_cmd(
            ctx.repo.location,
            archive.name,
            str(target),
            ctx.params.paths,
            strip_components=ctx.params.strip_components,
        )
        extract_into(ctx, fd, command)
        files = files_in(fd)
        if not heldir.same_dir(target, fd):
            raise OperationError(
                f"The restore target {target} was moved or replaced while borg ran; the "
                f"restored files are in the directory that was checked, now "
                f"{os.readlink(f'/proc/self/fd/{fd}')}.",
                "target_replaced",
            )
    finally:
        os.close(fd)
    return ctx.outcome({"archive_name": archive.name, "target_path": str(target), "files": files})


def op_download(ctx: Context) -> Outcome:
    """Stream some paths of an archive as a tar into the download's pipe (its reader, in the
    same process, turns it into a file, a tar or a compressed tar for the client)."""
    archive = _archive(ctx)
    sink = ctx.sink
    if sink is None:
        raise OperationError(
            "A download runs only in the process that serves it; ask for it again.", "no_client"
        )
    paths = ctx.params.paths
    try:
        result = ctx.borg(borg.export_tar_cmd(ctx.repo.location, archive.name, paths, sink.fd))
    except borg.BorgError:
        if sink.gone.is_set():
            raise ClientGone(sink.sent, sink.why_stopped) from None
        raise
    finally:
        sink.close_writer()
    missing = [w for w in result.warnings if "never matched" in w]
    if missing:
        named = ", ".join(paths)
        raise OperationError(
            f"Not in archive {archive.name}: {named}.", "path_not_found",
            result={"archive_name": archive.name, "paths": paths},
        )  # fmt: skip
    # borg has written everything; the reader may still be sending its last bytes, or the
    # client may have left with them unread (borg finished into the pipe's buffer)
    sink.over.wait(timeout=60)
    if not sink.drained.is_set():
        raise ClientGone(sink.sent, sink.why_stopped)
    return ctx.outcome(
        {"archive_name": archive.name, "paths": paths, "format": sink.format or ctx.params.format,
         "bytes": sink.sent}
    )  # fmt: skip


def op_restore(ctx: Context) -> Outcome:
    """A restore in place (borgapp.inplace): a preview from the archive's listing, or borg
    extracts into a private staging folder on the target's filesystem and each entry is moved
    into place by the policy, never through a link. The report says what was created,
    replaced, kept, left alone and blocked; a failure midway keeps what was already written."""
    p = ctx.params
    archive = _archive(ctx)
    _require_safe_restore(ctx, archive)
    root = params.inplace_root(p.target, p.paths[0])
    heldir.require_private_path(root, "In-place root")
    target_fd = heldir.open_dir_nofollow(p.target, "Target")
    try:
        if p.preview:
            entries = _listed(ctx, archive, p.paths)
            heldir.require_listed(archive.name, p.paths, {entry.path for entry in entries})
            report = inplace.preview(entries, target_fd, p.policy, p.paths)
        else:
            report = _restore_staged(ctx, archive, root, target_fd)
    finally:
        os.close(target_fd)
    return ctx.outcome(
        {"archive_name": archive.name, "target": p.target, "policy": p.policy,
         "preview": p.preview, "paths": p.paths, **report.as_dict()}
    )  # fmt: skip


def _listed(ctx: Context, archive: Archive, paths: list[str]) -> list:
    """The archive's entries of the selection, times in UTC (the preview compares them)."""
    entries = []

    def collect(raw: bytes) -> None:
        if raw.strip():
            entries.append(inplace.entry_from_listing(json.loads(raw), UTC))

    command = borg.list_items_cmd(ctx.repo.location, archive.name, paths)
    ctx.borg(replace(command, extra_env={"TZ": "UTC"}), on_line=collect)
    return entries


def _restore_staged(ctx: Context, archive: Archive, root: Path, target_fd: int):
    p = ctx.params
    staging = Path(tempfile.mkdtemp(prefix=inplace.STAGING_PREFIX.decode(), dir=root))
    try:
        fd = heldir.hold_empty_dir(staging, "Staging folder")
        try:
            command = borg.extract_cmd(ctx.repo.location, archive.name, str(staging), p.paths)
            extracted = extract_into(ctx, fd, command)
            if any("never matched" in warning for warning in extracted.warnings):
                heldir.require_listed(archive.name, p.paths, heldir.staged_paths(fd))
            return inplace.apply(fd, target_fd, p.policy, p.paths)
        finally:
            os.close(fd)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def op_delete(ctx: Context) -> Outcome:
    archive = _archive(ctx)
    ctx.borg(borg.delete_archive_cmd(ctx.repo.location, archive.name))
    catalog = sync_catalog(ctx, stoppable=False)  # the delete has happened
    refresh_stats(ctx)
    result = {"archive_name": archive.name, "deleted": True, "catalog": catalog}
    if ctx.repo.append_only:
        result["note"] = "Append-only repository: the data stays until a non-append-only write."
    return ctx.outcome(result)


def load_contents(ctx: Context, archive: Archive) -> int:
    """Load an archive's file listing into ArchiveItem rows (once: archives never change)."""
    if archive.contents_ready:
        return archive.contents_count
    listing.forget_contents(archive.pk)

    def make_room(total: int) -> int:
        return listing.make_room(max(total, archive.nfiles or 0), archive=archive)

    try:
        rows = listing.ItemRows(archive)
        batcher = listing.Loader(ctx.progress, ArchiveItem, rows, make_room)
        ctx.borg(borg.list_items_cmd(ctx.repo.location, archive.name), on_line=batcher)
        batcher.flush()
    except listing.ListingTooLarge as exc:
        listing.forget_contents(archive.pk)
        raise OperationError(str(exc), "listing_too_large") from None
    except BaseException:
        listing.forget_contents(archive.pk)  # no half listing stays behind
        raise
    Archive.objects.filter(pk=archive.pk).update(
        contents_borg_id=archive.borg_id,
        contents_count=batcher.count,
        contents_tops=rows.tops,
    )
    archive.contents_borg_id, archive.contents_count = archive.borg_id, batcher.count
    archive.contents_tops = rows.tops
    return batcher.count


def op_contents(ctx: Context) -> Outcome:
    archive = _archive(ctx)
    return ctx.outcome({"archive_name": archive.name, "items": load_contents(ctx, archive)})


def op_index(ctx: Context) -> Outcome:
    """The file index: first what deleted and pruned archives left (their share goes), then
    one archive's entries read from borg (named, or the oldest not indexed yet)."""
    removed = fileindex.collect_garbage(ctx.repo.pk)
    archive = _archive(ctx) if ctx.params.archive else fileindex.next_unindexed(ctx.repo)
    result = {"versions_removed": removed}
    if archive is not None:
        try:
            done = fileindex.index_archive(ctx, archive)
        except (borg.BorgError, fileindex.Stopped):
            if not getattr(ctx.progress, "yielded", False):
                raise
            # another job of the repository was waiting: it goes first, the index job is
            # queued again behind it (jobs.index_after) and reads this archive again
            return ctx.outcome({**result, "yielded_to_another_job": True})
        result.update(archive_name=archive.name, entries=done.entries, changed=done.changed,
                      reused=done.reused, seconds=done.seconds)  # fmt: skip
    return ctx.outcome(result)


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
    other_name = ctx.params.other
    other = ctx.repo.archives.filter(name=other_name).first()
    if other is None:
        raise borg.ArchiveMissing(f"Archive {other_name!r} is not in repository {ctx.repo.name}.")
    archive, other = listing.in_order(archive, other)  # borg diff OLDER NEWER, always
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

    try:
        batcher = listing.Loader(
            ctx.progress, ArchiveDiffItem, parse, lambda total: listing.make_room(total, diff=diff)
        )
        ctx.borg(borg.diff_cmd(ctx.repo.location, archive.name, other.name), on_line=batcher)
        batcher.flush()
    except listing.ListingTooLarge as exc:
        diff.delete()
        raise OperationError(str(exc), "listing_too_large") from None
    except BaseException:
        diff.delete()  # no half diff stays behind
        raise
    ArchiveDiff.objects.filter(pk=diff.pk).update(
        archive_borg_id=archive.borg_id, other_borg_id=other.borg_id, count=batcher.count
    )
    return ctx.outcome(
        {"archive_name": archive.name, "other": other.name, "changes": batcher.count}
    )


# --- verify-restore (REL-17) ------------------------------------------------------------------


def newest_of_set(repo: Repository, prefix: str) -> Archive | None:
    """The newest complete archive named `<prefix>-<UTC time>`."""
    candidates = repo.archives.filter(name__startswith=prefix + "-", is_checkpoint=False)
    for archive in candidates.order_by("-start", "-id"):
        if naming.in_set(archive.name, prefix):
            return archive
    return None


def _regular_files(ctx: Context, archive: Archive) -> tuple[list, list]:
    """The archive's regular files as (path, size), and its database dumps' paths: from the
    file index when it holds the archive, else from the archive's own listing (read once).
    A hardlink to an earlier item is left out: borg lists it without content (its checksum
    would be that of nothing), and the item it links to is a candidate itself."""
    if fileindex.is_indexed(archive):
        files, dumped = [], []
        for path, version in filesearch.entries_in(archive):
            if version.type == "-" and not version.target:
                if verifying.is_dump(path):
                    dumped.append(path)
                else:
                    files.append((path, version.size))
        return files, dumped
    load_contents(ctx, archive)
    items = archive.items.filter(type="-", linktarget="")
    in_dumps = {"path__startswith": f"{dumps.ARCHIVE_ROOT}/"}
    return (list(items.exclude(**in_dumps).values_list("path", "size")),
            list(items.filter(**in_dumps).values_list("path", flat=True)))  # fmt: skip


def op_verify_restore(ctx: Context) -> Outcome:
    """Restore a sample of the newest archive of a backup set into a sandbox and compare it,
    file by file, with the archive's own checksums and with the source as it is now
    (borgapp.verifying, which a host's agent runs for that host's backups)."""
    p = ctx.params
    prefix = p.prefix
    validation.validate_archive_part(prefix, "Archive prefix")
    sync_catalog(ctx)
    archive = newest_of_set(ctx.repo, prefix)
    if archive is None:
        raise OperationError(
            f"No archive named {prefix}-<time> in {ctx.repo.name} to verify yet.", "not_found"
        )
    files, dumped = _regular_files(ctx, archive)
    root = Path(settings.RESTORE_ROOTS[0]) / ".verify"
    root.mkdir(parents=True, exist_ok=True, mode=0o700)
    root = validation.require_under_roots(str(root), settings.RESTORE_ROOTS, "Sandbox")
    here = DatabaseSource.objects.filter(agent_host=None)
    result = verifying.verify(
        lambda command, on_line=None: ctx.borg(command, on_line=on_line),
        ctx.repo.location, archive.name, files, dumped,
        sample_files=p.sample_files, sample_percent=p.sample_percent,
        sample_max_bytes=p.sample_max_bytes, sandbox_root=root,
        sources={source.name: source.spec() for source in here},
        elsewhere="not on this ops center's machine (configured on a host, or removed)",
        tag=str(ctx.job.pk),
    )  # fmt: skip
    return ctx.outcome(result)


MOUNT_WAIT = 15.0


def op_mount(ctx: Context) -> Outcome:
    name = ctx.params.archive
    if name:
        name = _archive(ctx).name
    mountpoint = prepare_empty_dir(ctx.params.mountpoint, settings.MOUNT_ROOTS, "Mount point")
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

    for mount in Mount.objects.filter(mountpoint=mountpoint):
        lease.release_mount_lease(mount)
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
        passphrase_encrypted=repo.new_passphrase_encrypted,
        new_passphrase_encrypted="",
        passphrase_changed_at=timezone.now(),
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
    Job.Kind.INDEX: op_index,
    Job.Kind.DIFF: op_diff,
    Job.Kind.VERIFY_RESTORE: op_verify_restore,
    Job.Kind.RESTORE_DATABASE: op_restore_database,
    Job.Kind.DOWNLOAD: op_download,
    Job.Kind.RESTORE: op_restore,
}
