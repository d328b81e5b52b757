"""The life of a Job: submit, lease the repository, run the operation, record the outcome.

One repository runs one job at a time across every worker and the CLI (REL-03). The lease
is claimed with a conditional UPDATE, which is atomic on SQLite and PostgreSQL alike. A
worker that finds the repository busy leaves its job queued; whoever releases the lease
dispatches the next queued job of that repository, so a waiting job never occupies a worker.

A mount keeps its lease until it is unmounted: borg holds the repository's lock for as long
as an archive is mounted, so nothing else could write there anyway.
"""

import logging
import os
import time
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from borgapp import borg, procs, scheduling, validation, vault
from borgapp.models import Job, Mount, Repository

log = logging.getLogger(__name__)
HOST = procs.HOST
PROGRESS_INTERVAL = 1.0  # seconds between progress writes (REL-07)
WRITING_KINDS = {Job.Kind.BACKUP, Job.Kind.PRUNE, Job.Kind.DELETE}
REGISTERING_KINDS = {Job.Kind.INIT, Job.Kind.IMPORT}


def create(
    kind: str,
    repository: Repository | None,
    *,
    trigger: str,
    params: dict | None = None,
    user=None,
    schedule=None,
    archive_name: str = "",
    inline: bool = False,
) -> Job:
    """Record a job. `params` must hold no secret: it is stored and shown."""
    owner = {}
    if inline:  # an inline job belongs to this process from the start (reconcile must know)
        owner = {
            "worker_host": HOST,
            "worker_pid": os.getpid(),
            "worker_started": procs.start_ticks(os.getpid()),
        }
    from borgapp import audit

    return Job.objects.create(
        client_address=audit.context()["client_address"],
        kind=kind,
        repository=repository,
        repository_name=repository.name if repository else "",
        trigger=trigger,
        params=params or {},
        requested_by=user if (user is not None and user.is_authenticated) else None,
        schedule=schedule,
        archive_name=archive_name,
        inline=inline,
        **owner,
    )


def enqueue(job: Job) -> Job:
    """Hand the job to django-q2 by id (never a secret in the payload)."""
    from django_q.tasks import async_task

    async_task("borgapp.tasks.run_job", job.pk, task_name=f"job-{job.pk}-{job.kind}")
    return job


def submit(kind, repository, **kwargs) -> Job:
    """Create a job and queue it for a worker."""
    job = create(kind, repository, **kwargs)
    transaction.on_commit(lambda: enqueue(job))
    return job


# --- the lease --------------------------------------------------------------------------


def _dispatch_quietly(repository_id: int) -> None:
    """Dispatch the next waiting job; a failure here (the queue unwritable for a moment) must
    not cost the ended job its record: `reconcile` dispatches what is left waiting."""
    try:
        dispatch_next(repository_id)
    except Exception:
        log.exception("Dispatching the next job on repository %s failed", repository_id)


def holds_mount(job: Job) -> bool:
    return job.kind == Job.Kind.MOUNT and Mount.objects.filter(job=job).exists()


def holder_is_dead(job: Job) -> bool:
    """Whether a lease holder can no longer be using the repository."""
    if job.status != Job.Status.RUNNING:
        return not holds_mount(job)
    if job.worker_host == HOST and not procs.alive(job.worker_pid, job.worker_started):
        return True
    stale = timezone.now() - timedelta(seconds=settings.JOB_STALE_AFTER)
    return job.heartbeat_at is not None and job.heartbeat_at < stale


def claim(job: Job) -> bool:
    """Take the repository's lease for `job` and mark it running. False if busy."""
    now = timezone.now()
    # Unmounting never opens the repository, so it does not wait behind anything.
    repo_id = None if job.kind == Job.Kind.UMOUNT else job.repository_id
    if job.not_before is not None and job.not_before > now:
        return False  # a retry waiting for its time
    if repo_id is not None:
        _interrupt_dead_holder(job, repo_id)
    with transaction.atomic():
        if repo_id is not None and not Repository.objects.filter(
            pk=repo_id, lease_job__isnull=True
        ).update(lease_job=job, lease_since=now):
            return False
        started = Job.objects.filter(pk=job.pk, status=Job.Status.QUEUED).update(
            status=Job.Status.RUNNING,
            started_at=now,
            heartbeat_at=now,
            worker_host=HOST,
            worker_pid=os.getpid(),
            worker_started=procs.start_ticks(os.getpid()),
        )
        if not started:
            transaction.set_rollback(True)
            return False
    job.refresh_from_db()
    return True


def _interrupt_dead_holder(job: Job, repo_id: int) -> None:
    """A lease held by a job whose process died is freed (its end recorded and told) before
    the claim, outside the claim's transaction."""
    holder_id = Repository.objects.filter(pk=repo_id).values_list("lease_job_id", flat=True).first()
    holder = Job.objects.filter(pk=holder_id).first() if holder_id else None
    if holder is None or holder.pk == job.pk or not holder_is_dead(holder):
        return
    if holder.status == Job.Status.RUNNING:
        mark_interrupted(holder, "Its process ended before the job finished.")
    else:  # ended, but its lease was never given back
        Repository.objects.filter(pk=repo_id, lease_job=holder).update(
            lease_job=None, lease_since=None
        )


def free_lease(job: Job) -> bool:
    """Give up the repository's lease of an ended job; True when the next waiting job on it
    should be dispatched (call `dispatch_next` once the transaction has committed, so that a
    worker that receives it at once also sees the repository free)."""
    if job.repository_id is None:
        return False
    if job.status in (Job.Status.SUCCEEDED, Job.Status.WARNING) and holds_mount(job):
        return False  # kept until the unmount
    released = Repository.objects.filter(pk=job.repository_id, lease_job=job).update(
        lease_job=None, lease_since=None
    )
    return bool(released) or job.kind == Job.Kind.UMOUNT


def release_mount_lease(mount: Mount) -> None:
    """After an unmount: free the lease the mount job kept."""
    if mount.job_id:
        Repository.objects.filter(pk=mount.repository_id, lease_job_id=mount.job_id).update(
            lease_job=None, lease_since=None
        )


def dispatch_next(repository_id: int) -> None:
    """Queue the oldest waiting worker job of a repository whose lease is free."""
    due = Q(not_before__isnull=True) | Q(not_before__lte=timezone.now())
    waiting = (
        Job.objects.filter(due, repository_id=repository_id, status=Job.Status.QUEUED, inline=False)
        .order_by("created_at", "id")
        .first()
    )
    if waiting is not None:
        enqueue(waiting)


# --- running --------------------------------------------------------------------------------


class Progress:
    """Receives borg's streamed events; writes at most once a second (REL-07) and answers
    whether a cancel was requested."""

    def __init__(self, job: Job, echo=None):
        self.job = job
        self.echo = echo
        self.last_write = 0.0
        self.fields: dict = {}
        self.cancel = False

    def on_start(self, pid: int) -> None:
        Job.objects.filter(pk=self.job.pk).update(borg_pid=pid, borg_started=procs.start_ticks(pid))

    def on_event(self, event: dict) -> None:
        kind = event.get("type")
        if kind == "archive_progress" and not event.get("finished"):
            self.fields.update(
                progress_bytes=event.get("original_size"),
                progress_files=event.get("nfiles"),
                progress_path=(event.get("path") or "")[:4000],
            )
        elif kind == "progress_percent" and not event.get("finished"):
            total, current = event.get("total"), event.get("current")
            if total:
                self.fields["progress_percent"] = round(100.0 * (current or 0) / total, 1)
            self.fields["progress_message"] = (event.get("message") or "")[:500]
        elif kind == "progress_message" and event.get("message"):
            self.fields["progress_message"] = event["message"][:500]
        else:
            return
        if self.echo:
            self.echo(self.fields)
        self.flush()

    def flush(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self.last_write < PROGRESS_INTERVAL:
            return
        self.last_write = now
        Job.objects.filter(pk=self.job.pk).update(heartbeat_at=timezone.now(), **self.fields)
        self.cancel = Job.objects.filter(pk=self.job.pk, cancel_requested=True).exists()

    def should_stop(self) -> bool:
        self.flush()
        return self.cancel


def _outcome_of(exc: Exception, cancelled: bool) -> tuple[str, str, str]:
    """(status, error code, message) for an exception raised by an operation."""
    from borgapp import operations

    if isinstance(exc, borg.BorgError):
        if cancelled:
            return Job.Status.CANCELLED, "cancelled", "Cancelled on request."
        if isinstance(exc, borg.Interrupted):
            return Job.Status.INTERRUPTED, exc.code, exc.message
        return Job.Status.FAILED, exc.code, exc.message
    if isinstance(exc, validation.InvalidInput):
        return Job.Status.FAILED, "invalid_input", str(exc)
    if isinstance(exc, operations.OperationError):
        return Job.Status.FAILED, exc.code, str(exc)
    if isinstance(exc, vault.VaultError):
        return Job.Status.FAILED, "encryption_key", str(exc)
    log.error("Job %s crashed", exc_info=exc)
    return (
        Job.Status.FAILED,
        "internal_error",
        f"Internal error ({type(exc).__name__}); see the server log.",
    )


def execute(job: Job, echo=None) -> Job:
    """Run a claimed job's operation and record its outcome. Never raises for borg errors."""
    from borgapp import operations

    if job.schedule_id and job.schedule.ping_start_url:
        from borgapp import notifications

        notifications.ping(job.schedule.ping_start_url)
    progress = Progress(job, echo=echo)
    status, result, error_code, error_message, tail = Job.Status.SUCCEEDED, {}, "", "", []
    payload = None
    try:
        outcome = operations.run(job, progress)
        result, payload, tail = outcome.result, outcome.payload, outcome.tail
        if outcome.warnings:
            status = Job.Status.WARNING
            error_message = "; ".join(outcome.warnings)[:2000]
    except Exception as exc:
        status, error_code, error_message = _outcome_of(exc, progress.cancel)
        tail = getattr(exc, "tail", [])
        result = getattr(exc, "result", {})
    except KeyboardInterrupt:  # Ctrl-C in the command line: borg was already stopped
        mark_interrupted(job, "Cancelled with Ctrl-C.", status=Job.Status.CANCELLED)
        raise
    except BaseException:  # this process is shutting down: borg was already stopped
        mark_interrupted(job, "Stopped because its process was shut down.")
        raise
    finally:
        progress.flush(force=True)
    if status == Job.Status.SUCCEEDED and progress.cancel:
        # borg finished before it saw the cancel: the work is done, say so.
        error_message = "A cancel was requested but the operation had already finished."
    now = timezone.now()
    # A worker's caller is elsewhere: keep the payload (an exported key) encrypted until
    # its one download. An in-process caller gets it directly and nothing is stored.
    secret = vault.encrypt(payload) if (payload and not job.inline) else ""
    with transaction.atomic():  # whoever sees the job ended also sees its repository free
        Job.objects.filter(pk=job.pk).update(
            secret_payload=secret,
            status=status,
            finished_at=now,
            heartbeat_at=now,
            result=result,
            error_code=error_code,
            error_message=error_message,
            log_tail="\n".join(tail)[-8000:],
            borg_pid=None,
        )
        job.refresh_from_db()
        if status not in (Job.Status.SUCCEEDED, Job.Status.WARNING):
            _after_failure(job)
        freed = free_lease(job)
    if freed:
        _dispatch_quietly(job.repository_id)
    finished(job)  # after the release: a slow notification channel holds up no other job
    scheduling.retry_if_transient(job)
    job.payload = payload  # for an in-process caller only; never stored
    return job


def _after_failure(job: Job) -> None:
    """A job that ended early: its repository's catalog may lag borg, and a registration
    that did not complete is forgotten (nothing stays registered)."""
    if job.repository_id is None:
        return
    if job.kind in REGISTERING_KINDS:
        Repository.objects.filter(pk=job.repository_id, state=Repository.State.PENDING).delete()
    elif job.kind in WRITING_KINDS:
        Repository.objects.filter(pk=job.repository_id).update(catalog_stale=True)


def finished(job: Job) -> None:
    """Everything that follows a job's end, whatever ended it: the schedule's last run and
    outcome, and the audit row."""
    from borgapp import alerts, audit, notifications

    scheduling.record_outcome(job)
    audit.job_finished(job)
    try:  # telling people must never break the job's record
        notifications.job_finished(job)
        alerts.evaluate()
    except Exception:
        log.exception("Notifications after job %s failed", job.pk)


def dispatch_due() -> int:
    """Hand retries whose wait is over to the workers (run by the maintenance task)."""
    due = list(
        Job.objects.filter(
            status=Job.Status.QUEUED, inline=False, not_before__lte=timezone.now()
        ).order_by("created_at", "id")
    )
    for job in due:
        Job.objects.filter(pk=job.pk).update(not_before=None)
        enqueue(job)
    return len(due)


def run_queued(job_id: int) -> None:
    """Worker entry: run the job if its repository is free; otherwise leave it queued."""
    job = Job.objects.filter(pk=job_id).first()
    if job is None or job.status != Job.Status.QUEUED:
        return
    if claim(job):
        execute(job)


def run_inline(job: Job, echo=None, poll: float = 0.5) -> Job:
    """CLI entry: wait for the repository's lease in this process, then run the job here."""
    try:
        while not claim(job):
            job.refresh_from_db()
            if job.status != Job.Status.QUEUED:
                return job
            time.sleep(poll)
    except BaseException:  # Ctrl-C while waiting: the job never started
        cancel(job)
        raise
    return execute(job, echo=echo)


def cancel(job: Job) -> Job:
    """Cancel a queued job at once; ask a running one to stop (the signal ladder follows)."""
    updated = Job.objects.filter(pk=job.pk, status=Job.Status.QUEUED).update(
        status=Job.Status.CANCELLED,
        finished_at=timezone.now(),
        error_code="cancelled",
        error_message="Cancelled before it started.",
    )
    if updated:
        job.refresh_from_db()
        _after_failure(job)
        finished(job)
    else:
        Job.objects.filter(pk=job.pk, status=Job.Status.RUNNING).update(cancel_requested=True)
    job.refresh_from_db()
    return job


def mark_interrupted(job: Job, reason: str, status: str = Job.Status.INTERRUPTED) -> None:
    """Record that a running job's process died or was stopped, stop a borg it left behind,
    and free its lease."""
    if job.worker_host == HOST:
        procs.stop_orphan(job.borg_pid, job.borg_started)
    with transaction.atomic():  # the job's end and its repository's release are seen together
        updated = Job.objects.filter(pk=job.pk, status=Job.Status.RUNNING).update(
            status=status,
            finished_at=timezone.now(),
            error_code=str(status),
            error_message=reason,
            borg_pid=None,
        )
        if updated:
            job.refresh_from_db()
            _after_failure(job)
            freed = free_lease(job)
    if updated:
        if freed:
            _dispatch_quietly(job.repository_id)
        finished(job)


def reconcile() -> dict:
    """Repair state after crashes (REL-14): dead running jobs become interrupted, leases of
    finished jobs are released, and free repositories get their waiting jobs dispatched."""
    interrupted = 0
    for job in Job.objects.filter(status=Job.Status.RUNNING):
        if holder_is_dead(job):
            mark_interrupted(job, "Its process ended before the job finished.")
            interrupted += 1
    # Command-line jobs whose command died while waiting for the repository.
    for job in Job.objects.filter(status=Job.Status.QUEUED, inline=True, worker_host=HOST):
        if not procs.alive(job.worker_pid, job.worker_started):
            cancel(job)
    # Mounts recorded here that are gone (a reboot, an unmount outside the app).
    vanished = [m for m in Mount.objects.all() if not os.path.ismount(m.mountpoint)]
    for mount in vanished:
        mount.delete()
    released = 0
    for repo in Repository.objects.filter(lease_job__isnull=False).select_related("lease_job"):
        if repo.lease_job.status != Job.Status.RUNNING and not holds_mount(repo.lease_job):
            released += Repository.objects.filter(pk=repo.pk, lease_job=repo.lease_job).update(
                lease_job=None, lease_since=None
            )
    # Dispatch a waiting job on each free repository (lost dispatches after a crash).
    stale_queue = timezone.now() - timedelta(seconds=30)
    waiting = (
        Job.objects.filter(status=Job.Status.QUEUED, inline=False, created_at__lt=stale_queue)
        .filter(Q(repository__lease_job__isnull=True))
        .values_list("repository_id", flat=True)
        .distinct()
    )
    for repository_id in waiting:
        if repository_id is not None:
            dispatch_next(repository_id)
    return {"interrupted": interrupted, "released": released, "mounts_cleared": len(vanished)}


def take_exported_key(job: Job) -> str | None:
    """The key a key-export job exported, once: it is deleted as it is taken."""
    taken = Job.objects.filter(pk=job.pk, kind=Job.Kind.KEY_EXPORT).exclude(secret_payload="")
    token = taken.values_list("secret_payload", flat=True).first()
    if not token or not taken.update(secret_payload=""):
        return None
    return vault.decrypt(token)
