"""The front door for every entry point (CLI, API, admin, schedules): check a request,
record it as a Job, then run it in this process or queue it for a worker.

Bad input raises InvalidInput here, before anything is written, so a refused request changes
nothing.
"""

from django.conf import settings
from django.db import IntegrityError, transaction

from borgapp import jobs, validation
from borgapp.models import Archive, Job, Mount, Repository, RetentionPolicy, keep_options
from borgapp.operations import prefix_glob


class Conflict(Exception):
    """The request clashes with what exists (a name or location already registered)."""


def _int_or_none(value, what: str, minimum: int = 0):
    if value in (None, ""):
        return None
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise validation.InvalidInput(f"{what} must be a whole number.") from None
    if number < minimum:
        raise validation.InvalidInput(f"{what} must be at least {minimum}.")
    return number


def check_params(kind: str, params: dict) -> dict:
    """Validate and normalise a job's parameters for its kind. Returns the cleaned dict."""
    p = dict(params)
    if kind == Job.Kind.BACKUP:
        sources = p.get("sources") or []
        if not sources:
            raise validation.InvalidInput("At least one source path is required.")
        p["sources"] = [validation.validate_source_path(s) for s in sources]
        p["excludes"] = [validation.validate_exclude_pattern(x) for x in p.get("excludes") or []]
        if p.get("archive"):
            validation.validate_archive_part(p["archive"], "Archive name")
        else:
            validation.validate_archive_part(p.get("prefix") or "backup", "Archive prefix")
        validation.validate_compression(p.get("compression") or "lz4")
        p["checkpoint_interval"] = _int_or_none(
            p.get("checkpoint_interval"), "Checkpoint interval", 1
        )
        if p.get("comment"):
            validation.no_control_chars(p["comment"], "Comment")
    elif kind == Job.Kind.PRUNE:
        p.pop("glob", None)  # prune is always scoped to one backup set (REL-12)
        if p.get("scope") != "seed":
            prefix_glob(p.get("prefix") or "")
        if p.get("policy"):
            if not RetentionPolicy.objects.filter(name=p["policy"]).exists():
                raise validation.InvalidInput(f"No retention policy named {p['policy']!r}.")
        elif not keep_options(**(p.get("keep") or {})):
            raise validation.InvalidInput("Prune needs a policy or at least one keep rule.")
    elif kind == Job.Kind.CHECK:
        if p.get("repository_only") and p.get("archives_only"):
            raise validation.InvalidInput("Choose repository-only or archives-only, not both.")
        if p.get("verify_data") and p.get("repository_only"):
            raise validation.InvalidInput("verify-data cannot be combined with repository-only.")
        p["last"] = _int_or_none(p.get("last"), "last", 1)
        p["max_duration"] = _int_or_none(p.get("max_duration"), "max_duration", 1)
        if p["max_duration"] and not p.get("repository_only"):
            raise validation.InvalidInput("max-duration works only with a repository-only check.")
    elif kind == Job.Kind.EXTRACT:
        validation.require_under_roots(p.get("target") or "/", settings.RESTORE_ROOTS, "Target")
        p["paths"] = [validation.validate_archive_path(x) for x in p.get("paths") or []]
        p["strip_components"] = _int_or_none(p.get("strip_components"), "strip_components") or 0
    elif kind == Job.Kind.VERIFY_RESTORE:
        validation.validate_archive_part(p.get("prefix") or "", "Archive prefix")
        p["sample_files"] = _int_or_none(p.get("sample_files"), "sample_files", 1) or 20
        p["sample_percent"] = _int_or_none(p.get("sample_percent"), "sample_percent", 1)
        if p["sample_percent"] and p["sample_percent"] > 100:
            raise validation.InvalidInput("sample_percent must be between 1 and 100.")
        p["sample_max_bytes"] = (
            _int_or_none(p.get("sample_max_bytes"), "sample_max_bytes", 1) or 100 * 2**20
        )
    elif kind == Job.Kind.DIFF:
        other = p.get("other") or ""
        validation.validate_existing_archive_name(other)
        if other == p.get("archive"):
            raise validation.InvalidInput("Compare an archive with a different archive.")
    elif kind == Job.Kind.MOUNT:
        validation.require_under_roots(
            p.get("mountpoint") or "/", settings.MOUNT_ROOTS, "Mount point"
        )
    return p


def _check_archive(repository: Repository, name: str) -> None:
    validation.validate_existing_archive_name(name)
    if not Archive.objects.filter(repository=repository, name=name).exists():
        raise validation.InvalidInput(
            f"Archive {name!r} is not in repository {repository.name} (run a sync if it is new)."
        )


ARCHIVE_KINDS = (Job.Kind.EXTRACT, Job.Kind.DELETE, Job.Kind.CONTENTS, Job.Kind.DIFF)


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
) -> Job:
    """Record an operation on a repository and run it (inline) or queue it (worker). A
    refusal (bad input, a conflict) is audited too (its caller may record it its own way)."""
    try:
        cleaned, archive_name = _admit(kind, repository, params)
    except (validation.InvalidInput, Conflict) as exc:
        if audit_refusal:
            from borgapp import audit

            audit.record(kind, repository.name, outcome="refused", params=params, message=exc)
        raise
    options = {
        "trigger": trigger,
        "params": cleaned,
        "user": user,
        "schedule": schedule,
        "archive_name": archive_name,
    }
    if inline:
        job = jobs.create(kind, repository, inline=True, **options)
        return jobs.run_inline(job, echo=echo)
    with transaction.atomic():
        return jobs.submit(kind, repository, **options)


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
    location = validation.validate_location(location)
    if not validation.is_remote(location):
        # store the resolved path: a symlinked spelling must not register a second time
        location = str(
            validation.require_under_roots(
                location, settings.REPOSITORY_ROOTS, "Repository location"
            )
        )
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
    from borgapp import vault

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


def load_listing(archive: Archive, other: Archive | None = None, **kwargs) -> Job:
    """Queue the job that reads an archive's file listing (or its diff against `other`) into
    the database, or return the one already queued or running for it."""
    kind = Job.Kind.DIFF if other is not None else Job.Kind.CONTENTS
    params = {"archive": archive.name}
    if other is not None:
        if other.repository_id != archive.repository_id:
            raise validation.InvalidInput("Both archives must be in the same repository.")
        params["other"] = other.name
    active = Job.objects.filter(
        kind=kind,
        repository=archive.repository,
        archive_name=archive.name,
        status__in=[Job.Status.QUEUED, Job.Status.RUNNING],
    )
    for job in active:
        if job.params.get("other") == params.get("other"):
            return job
    return start(kind, archive.repository, params, **kwargs)
