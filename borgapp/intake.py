"""The front door for every entry point (CLI, API, admin, schedules): check a request,
record it as a Job, then run it in this process or queue it for a worker.

Bad input raises InvalidInput here, before anything is written, so a refused request changes
nothing.
"""

from django.conf import settings
from django.db import IntegrityError, transaction

from borgapp import audit, fileindex, jobs, listing, validation, vault
from borgapp.errors import Conflict, Forbidden, TooMany
from borgapp.models import Archive, DatabaseSource, Job, Mount, Repository, RetentionPolicy
from borgapp.params import clean as clean_params
from borgapp.roles import has_role

AD_HOC_PRUNE = (
    "Pruning with ad-hoc keep rules needs the admin role: an operator prunes with a "
    "retention policy an admin defined (give its name as `policy`), or previews with a dry run."
)


def authorise(kind: str, params: dict, user) -> None:
    """Rules of who may ask for what that no single door can know alone. `user` is None for
    the command line and the scheduler, which are trusted (they act for the machine)."""
    if user is None:
        return
    if kind == Job.Kind.RESTORE_DATABASE:
        _sqlite_target_under_roots(params)
    if kind == Job.Kind.PRUNE and not params.get("policy") and not params.get("dry_run"):
        # ad-hoc rules delete whatever they do not keep, with no admin having chosen them
        if not has_role(user, "admin"):
            raise Forbidden(AD_HOC_PRUNE)


def _sqlite_target_under_roots(params: dict) -> None:
    """From the admin and the API an SQLite restore writes only under a restore root (the
    original file too): a file written anywhere would be a remote way to replace the app's
    own files, which the API refuses for hooks too. The command line may write anywhere."""
    name = str(params.get("database") or "").split("/")[0]
    source = DatabaseSource.objects.filter(name=name, kind=DatabaseSource.Kind.SQLITE).first()
    if source is not None and source.agent_host_id is None:  # an agent keeps its own roots
        target = params.get("into") or source.path
        validation.require_under_roots(str(target), settings.RESTORE_ROOTS, "SQLite restore target")


def check_params(kind: str, raw: dict) -> dict:
    """Validate and normalise a job's parameters for its kind (params.py), plus the rules
    that need the database. Returns the dict stored on the Job."""
    cleaned = clean_params(kind, raw)
    names = cleaned.get("databases", []) if kind == Job.Kind.BACKUP else []
    if kind == Job.Kind.RESTORE_DATABASE:
        names = [cleaned["database"].split("/")[0]]
    known = set(DatabaseSource.objects.filter(name__in=names).values_list("name", flat=True))
    for name in names:
        if name not in known:
            raise validation.InvalidInput(f"No database source named {name!r}.")
    if kind == Job.Kind.PRUNE and cleaned["policy"]:
        if not RetentionPolicy.objects.filter(name=cleaned["policy"]).exists():
            raise validation.InvalidInput(f"No retention policy named {cleaned['policy']!r}.")
    return cleaned


def _check_archive(repository: Repository, name: str) -> None:
    validation.validate_existing_archive_name(name)
    if not Archive.objects.filter(repository=repository, name=name).exists():
        raise validation.InvalidInput(
            f"Archive {name!r} is not in repository {repository.name} (run a sync if it is new)."
        )


ARCHIVE_KINDS = (
    Job.Kind.EXTRACT, Job.Kind.DELETE, Job.Kind.CONTENTS, Job.Kind.DIFF, Job.Kind.RESTORE_DATABASE,
    Job.Kind.DOWNLOAD, Job.Kind.RESTORE,
)  # fmt: skip
LISTING_KINDS = jobs.LISTING_KINDS


def start(
    kind: str,
    repository: Repository,
    params: dict | None = None,
    *,
    trigger: str,
    user=None,
    schedule=None,
    inline: bool = False,
    echo=None,
    audit_refusal: bool = True,
    host=None,
) -> Job:
    """Record an operation on a repository and run it (inline) or queue it (worker), or for
    a `host`, queue it for that host's agent. A refusal (bad input, a conflict) is audited
    too (its caller may record it its own way)."""
    if host is not None and kind in (Job.Kind.EXTRACT, Job.Kind.RESTORE):
        params = {**(params or {}), "on_host": True}  # the target is on the host
    cleaned, archive_name = _admitted(kind, repository, params, user, audit_refusal)
    host = _where_sources_are(kind, cleaned, host)
    if host is not None:
        _check_host_job(kind, cleaned, host, inline)
    options = {
        "trigger": trigger,
        "params": cleaned,
        "user": user,
        "schedule": schedule,
        "archive_name": archive_name,
        **({"host": host} if host is not None else {}),
    }
    if inline:
        job = jobs.create(kind, repository, inline=True, **options)
        return jobs.run_inline(job, echo=echo)
    with transaction.atomic():
        return jobs.submit(kind, repository, **options)


# what agents run: everything that reads or writes the host's own files and databases
HOST_KINDS = (Job.Kind.BACKUP, Job.Kind.EXTRACT, Job.Kind.DOWNLOAD, Job.Kind.RESTORE,
              Job.Kind.RESTORE_DATABASE, Job.Kind.VERIFY_RESTORE)  # fmt: skip


def _where_sources_are(kind: str, cleaned: dict, host):
    """Database sources are dumped, restored and verified on their own machine (the center's,
    or a host's, whose agent alone gets their credentials): a job names only sources of the
    machine it runs on. A database restore goes to its source's host by itself. Returns the
    host the job runs on."""
    names = cleaned.get("databases", []) if kind == Job.Kind.BACKUP else []
    if kind == Job.Kind.RESTORE_DATABASE:
        names = [cleaned["database"].split("/")[0]]
    sources = list(DatabaseSource.objects.filter(name__in=names).select_related("agent_host"))
    if kind == Job.Kind.RESTORE_DATABASE and host is None and sources:
        host = sources[0].agent_host
    for source in sources:
        if source.agent_host_id != (host.pk if host else None):
            where = f"host {source.agent_host.name}" if source.agent_host_id else "the ops center"
            here = f"host {host.name}" if host else "the ops center"
            raise validation.InvalidInput(
                f"Database source {source.name} is on {where}, so a {kind} on {here} cannot "
                f"reach it: run it on {where}."
            )
    return host


def _check_host_job(kind: str, cleaned: dict, host, inline: bool) -> None:
    if host.state != host.State.ACTIVE:
        raise validation.InvalidInput(
            f"Host {host.name} is {host.get_state_display().lower()}: its agent takes no jobs."
        )
    if kind not in HOST_KINDS:
        raise validation.InvalidInput(
            f"A {kind} job cannot run on host {host.name}: agents run what reads or writes "
            "the host's data (backups, restores, extracts, downloads, database restores and "
            "verify-restores); prune, compact, check and syncs run on the center."
        )
    if inline:
        raise validation.InvalidInput(
            f"A {kind} job for host {host.name} runs on its agent, not in this process."
        )


def _admitted(kind, repository, params, user, audit_refusal=True) -> tuple[dict, str]:
    try:
        authorise(kind, params or {}, user)
        return _admit(kind, repository, params)
    except (validation.InvalidInput, Conflict, Forbidden) as exc:
        if audit_refusal:
            audit.record(kind, repository.name, outcome="refused", params=params, message=exc)
        raise


def prepare(kind: str, repository: Repository, params: dict, *, trigger: str, user=None,
            host=None) -> Job:  # fmt: skip
    """Check a request and record it as a job of this process that has not started: the
    caller claims the lease and runs it itself (a download, streamed to its client). With a
    `host`, the job waits for that host's agent instead, which claims and runs it."""
    cleaned, archive_name = _admitted(kind, repository, params, user)
    host = _where_sources_are(kind, cleaned, host)
    if host is not None:
        _check_host_job(kind, cleaned, host, inline=False)
        return jobs.create(kind, repository, trigger=trigger, params=cleaned, user=user,
                           archive_name=archive_name, host=host)  # fmt: skip
    return jobs.create(
        kind, repository, trigger=trigger, params=cleaned, user=user,
        archive_name=archive_name, inline=True,
    )  # fmt: skip


def _admit(kind: str, repository: Repository, params: dict | None) -> tuple[dict, str]:
    """Whether this operation may start now, and its cleaned parameters."""
    if repository.state != Repository.State.READY and kind not in (
        Job.Kind.INIT,
        Job.Kind.IMPORT,
    ):
        raise validation.InvalidInput(f"Repository {repository.name} is not ready yet.")
    if kind != Job.Kind.UMOUNT:
        mount = repository.mounts.first()
        if mount is not None:
            raise Conflict(
                f"Repository {repository.name} is mounted at {mount.mountpoint}: borg holds "
                "its lock while it is mounted. Unmount it first."
            )
    cleaned = check_params(kind, params or {})
    archive_name = cleaned.get("archive", "") if kind != Job.Kind.BACKUP else ""
    if kind in ARCHIVE_KINDS or (kind == Job.Kind.MOUNT and archive_name):
        _check_archive(repository, archive_name)
    if kind == Job.Kind.DIFF:
        _check_archive(repository, cleaned["other"])
    return cleaned, archive_name


def register(
    name: str,
    location: str,
    passphrase: str | None,
    *,
    create: bool,
    encryption: str = "repokey-blake2",
    append_only: bool = False,
    trigger: str,
    user=None,
    inline: bool = False,
    echo=None,
) -> Job:
    """Register a repository and initialize (create=True) or import it.

    The passphrase is stored encrypted on a pending row; if borg refuses it (or anything else
    fails) the row is removed again, so nothing stays registered.
    """
    validation.validate_name(name, "Repository name")
    location = validation.validate_location(location, settings.REPOSITORY_ROOTS)
    if passphrase is not None:
        validation.validate_passphrase(passphrase)
    valid_modes = {mode for mode, _ in Repository._meta.get_field("encryption").choices}
    if encryption not in valid_modes:
        raise validation.InvalidInput(
            f"Encryption {encryption!r} is not one of: {', '.join(sorted(valid_modes))}."
        )
    if create and encryption != "none" and not passphrase:
        raise validation.InvalidInput("A passphrase is required for an encrypted repository.")
    repo = Repository(name=name, location=location, encryption=encryption, append_only=append_only)
    if passphrase:
        repo.set_passphrase(passphrase)
    try:
        with transaction.atomic():
            repo.save()
    except IntegrityError:
        existing = Repository.objects.filter(name=name).exists()
        what = f"name {name!r}" if existing else f"location {location!r}"
        raise Conflict(f"A repository with the {what} is already registered.") from None
    kind = Job.Kind.INIT if create else Job.Kind.IMPORT
    params = {"location": location, "encryption": encryption, "append_only": append_only}
    return start(kind, repo, params, trigger=trigger, user=user, inline=inline, echo=echo)


def change_passphrase(repository: Repository, new: str, **kwargs) -> Job:
    validation.validate_passphrase(new)
    if not new:
        raise validation.InvalidInput("The new passphrase must not be empty.")
    if repository.mounts.exists():
        raise Conflict(f"Repository {repository.name} is mounted. Unmount it first.")
    claimed = Repository.objects.filter(pk=repository.pk, new_passphrase_encrypted="").update(
        new_passphrase_encrypted=vault.encrypt(new)
    )
    if not claimed:
        raise Conflict(
            f"A passphrase change for {repository.name} is already waiting to run; "
            "let it finish first."
        )
    try:
        return start(Job.Kind.CHANGE_PASSPHRASE, repository, {}, **kwargs)
    except BaseException:
        Repository.objects.filter(pk=repository.pk).update(new_passphrase_encrypted="")
        raise


def umount(mountpoint: str, **kwargs) -> Job:
    """Unmount by mount point: the recorded mount tells which repository it belongs to."""

    real = validation.real_path(mountpoint, "Mount point")
    validation.require_under_roots(real, settings.MOUNT_ROOTS, "Mount point")
    mount = Mount.objects.filter(mountpoint=real).select_related("repository").first()
    if mount is None:
        raise validation.InvalidInput(f"Nothing mounted by this app at {real!r}.")
    return start(Job.Kind.UMOUNT, mount.repository, {"mountpoint": real}, **kwargs)


def unindexed(*archives: Archive | None) -> list[Archive]:
    """Those of the archives the file index does not hold (yet)."""
    return [a for a in archives if a is not None and not fileindex.is_indexed(a)]


def load_listing(archive: Archive, other: Archive | None = None, **kwargs) -> Job:
    """Queue the job that reads an archive's file listing (or its diff against `other`) into
    the database, or return the one already queued or running for it."""
    kind = Job.Kind.DIFF if other is not None else Job.Kind.CONTENTS
    params = {"archive": archive.name}
    if other is not None:
        if other.repository_id != archive.repository_id:
            raise validation.InvalidInput("Both archives must be in the same repository.")
        archive, other = listing.in_order(archive, other)
        params = {"archive": archive.name, "other": other.name}
    if settings.FILE_INDEX:
        # the file index answers both once the archives are in it: no copy of a listing
        # or a diff is made, the archive not indexed yet is indexed (one a job)
        pending = unindexed(archive, other)
        if pending:
            archive, other, kind = pending[0], None, Job.Kind.INDEX
            params = {"archive": archive.name}
    active = Job.objects.filter(
        kind__in=LISTING_KINDS, status__in=[Job.Status.QUEUED, Job.Status.RUNNING]
    )
    for job in active.filter(kind=kind, repository=archive.repository, archive_name=archive.name):
        if job.params.get("other") == params.get("other"):
            return job
    user = kwargs.get("user")
    if user is not None and user.is_authenticated:
        # Listings are read by whoever may look (viewers too): bound what one user and one
        # repository can have waiting, so looking never buries the backups (they go first).
        if active.filter(requested_by=user).count() >= settings.LISTING_JOBS_PER_USER:
            raise TooMany(
                f"You have {settings.LISTING_JOBS_PER_USER} file listings being read already; "
                "wait for one to finish (OPSCENTER_LISTING_JOBS_PER_USER)."
            )
        waiting = active.filter(repository=archive.repository).count()
        if waiting >= settings.LISTING_JOBS_PER_REPOSITORY:
            raise TooMany(
                f"Repository {archive.repository.name} has {waiting} file listings being read "
                "already; try again when they are done (OPSCENTER_LISTING_JOBS_PER_REPOSITORY)."
            )
    return start(kind, archive.repository, params, **kwargs)
