"""The life of a Job: submit, lease the repository, run the operation, record the outcome.

One repository runs one job at a time across every worker and the CLI (REL-03). The lease
is claimed with a conditional UPDATE, which is atomic on SQLite and PostgreSQL alike. A
worker that finds the repository busy leaves its job queued; whoever releases the lease
dispatches the next queued job of that repository, so a waiting job never occupies a worker.
"""

import logging
import os
import socket
import time
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from borgapp import borg, validation
from borgapp.models import Job, Repository

log = logging.getLogger(__name__)
HOST = socket.gethostname()
PROGRESS_INTERVAL = 1.0  # seconds between progress writes (REL-07)


class JobError(Exception):
    """A job could not be started (bad input, unknown target)."""


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
    return Job.objects.create(
        # an inline job belongs to this process from the start (reconcile needs to know)
        worker_host=HOST if inline else "",
        worker_pid=os.getpid() if inline else None,
        kind=kind,
        repository=repository,
        repository_name=repository.name if repository else "",
        trigger=trigger,
        params=params or {},
        requested_by=user if (user is not None and user.is_authenticated) else None,
        schedule=schedule,
        archive_name=archive_name,
        inline=inline,
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


def _pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def holder_is_dead(job: Job) -> bool:
    """A running job whose process is gone (same host) or silent for too long."""
    if job.status != Job.Status.RUNNING:
        return True
    if job.worker_host == HOST and job.worker_pid and not _pid_alive(job.worker_pid):
        return True
    stale = timezone.now() - timedelta(seconds=settings.JOB_STALE_AFTER)
    return job.heartbeat_at is not None and job.heartbeat_at < stale


def claim(job: Job) -> bool:
    """Take the repository's lease for `job` and mark it running. False if busy."""
    now = timezone.now()
    # Unmounting never opens the repository, so it does not wait behind a running backup.
    repo_id = None if job.kind == Job.Kind.UMOUNT else job.repository_id
    with transaction.atomic():
        if repo_id is not None:
            won = Repository.objects.filter(pk=repo_id, lease_job__isnull=True).update(
                lease_job=job, lease_since=now
            )
            if not won:
                holder_id = (
                    Repository.objects.filter(pk=repo_id)
                    .values_list("lease_job_id", flat=True)
                    .first()
                )
                holder = Job.objects.filter(pk=holder_id).first() if holder_id else None
                if holder is None or holder.pk == job.pk or not holder_is_dead(holder):
                    return False
                mark_interrupted(holder, "Its process ended before the job finished.")
                won = Repository.objects.filter(pk=repo_id, lease_job_id=holder_id).update(
                    lease_job=job, lease_since=now
                )
                if not won:
                    return False
        started = Job.objects.filter(pk=job.pk, status=Job.Status.QUEUED).update(
            status=Job.Status.RUNNING,
            started_at=now,
            heartbeat_at=now,
            worker_host=HOST,
            worker_pid=os.getpid(),
        )
        if not started:
            transaction.set_rollback(True)
            return False
    job.refresh_from_db()
    return True


def release(job: Job) -> None:
    if job.repository_id is not None:
        Repository.objects.filter(pk=job.repository_id, lease_job=job).update(
            lease_job=None, lease_since=None
        )
        dispatch_next(job.repository_id)


def dispatch_next(repository_id: int) -> None:
    """Queue the oldest waiting worker job of a repository whose lease is free."""
    waiting = (
        Job.objects.filter(repository_id=repository_id, status=Job.Status.QUEUED, inline=False)
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
        Job.objects.filter(pk=self.job.pk).update(borg_pid=pid)

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


def execute(job: Job, echo=None) -> Job:
    """Run a claimed job's operation and record its outcome. Never raises for borg errors."""
    from borgapp import operations

    progress = Progress(job, echo=echo)
    status, result, error_code, error_message, tail = Job.Status.SUCCEEDED, {}, "", "", []
    payload = None
    try:
        outcome = operations.run(job, progress)
        result, payload = outcome.result, outcome.payload
        tail = outcome.tail
        if outcome.warnings:
            status = Job.Status.WARNING
            error_message = "; ".join(outcome.warnings)[:2000]
    except borg.BorgError as exc:
        tail = exc.tail
        error_code, error_message = exc.code, exc.message
        if progress.cancel:
            status, error_code = Job.Status.CANCELLED, "cancelled"
            error_message = "Cancelled on request."
        elif isinstance(exc, borg.Interrupted):
            status = Job.Status.INTERRUPTED
        else:
            status = Job.Status.FAILED
    except validation.InvalidInput as exc:
        status, error_code, error_message = Job.Status.FAILED, "invalid_input", str(exc)
    except operations.OperationError as exc:
        status, error_code, error_message = Job.Status.FAILED, exc.code, str(exc)
    except Exception as exc:  # a bug of ours: record it, never leave the job running
        log.exception("Job %s crashed", job.pk)
        status, error_code = Job.Status.FAILED, "internal_error"
        error_message = f"Internal error ({type(exc).__name__}); see the server log."
    except KeyboardInterrupt:  # Ctrl-C in the command line: borg was already stopped
        mark_interrupted(job, "Cancelled with Ctrl-C.", status=Job.Status.CANCELLED)
        release(job)
        raise
    except BaseException:  # this process is shutting down: borg was already stopped
        mark_interrupted(job, "Stopped because its process was shut down.")
        release(job)
        raise
    finally:
        progress.flush(force=True)
    if status == Job.Status.SUCCEEDED and progress.cancel:
        # borg finished before it saw the cancel: the work is done, say so.
        error_message = "A cancel was requested but the operation had already finished."
    now = timezone.now()
    Job.objects.filter(pk=job.pk).update(
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
    release(job)
    job.payload = payload  # for an in-process caller only; never stored
    return job


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
    if not updated:
        Job.objects.filter(pk=job.pk, status=Job.Status.RUNNING).update(cancel_requested=True)
    job.refresh_from_db()
    return job


def mark_interrupted(job: Job, reason: str, status: str = Job.Status.INTERRUPTED) -> None:
    """Record that a running job's process died, and stop a borg it left behind."""
    if job.borg_pid and job.worker_host == HOST:
        _stop_orphan(job.borg_pid)
    now = timezone.now()
    Job.objects.filter(pk=job.pk, status=Job.Status.RUNNING).update(
        status=status,
        finished_at=now,
        error_code=str(status),
        error_message=reason,
        borg_pid=None,
    )


def _stop_orphan(pid: int) -> None:
    """A borg whose worker died still holds the repository lock: stop it (SIGTERM leaves no
    lock behind; SIGKILL only if it will not go)."""
    import signal

    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            if b"borg" not in handle.read():
                return
    except OSError:
        return
    for signo in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pid, signo)
        except (ProcessLookupError, PermissionError):
            return
        for _ in range(50):
            if not _pid_alive(pid):
                return
            time.sleep(0.1)


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
        if not _pid_alive(job.worker_pid):
            cancel(job)
    released = 0
    for repo in Repository.objects.filter(lease_job__isnull=False).select_related("lease_job"):
        if repo.lease_job.status != Job.Status.RUNNING:
            released += Repository.objects.filter(pk=repo.pk, lease_job=repo.lease_job).update(
                lease_job=None, lease_since=None
            )
    # Dispatch a waiting job on each free repository (lost dispatches after a crash).
    stale_queue = timezone.now() - timedelta(seconds=30)
    waiting = (
        Job.objects.filter(status=Job.Status.QUEUED, inline=False, created_at__lt=stale_queue)
        .filter(Q(repository__lease_job__isnull=True) | Q(repository__isnull=True))
        .values_list("repository_id", flat=True)
        .distinct()
    )
    for repository_id in waiting:
        if repository_id is not None:
            dispatch_next(repository_id)
    # Mounts recorded here that are gone (a reboot, an unmount outside the app).
    from borgapp.models import Mount

    vanished = [m.pk for m in Mount.objects.all() if not os.path.ismount(m.mountpoint)]
    Mount.objects.filter(pk__in=vanished).delete()
    return {"interrupted": interrupted, "released": released, "mounts_cleared": len(vanished)}
