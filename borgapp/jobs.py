"""The life of a Job: create and queue it, claim the repository's lease, run its operation,
and end it (one function, `end`, for every way a job ends), retrying a scheduled job that
failed for a passing reason.

One repository runs one job at a time across every worker and the CLI (REL-03 in
docs/requirements.md). The lease is claimed with a conditional UPDATE, which is atomic on
SQLite and PostgreSQL alike. A worker that finds the repository busy leaves its job queued;
whoever releases the lease dispatches the next queued job of that repository, so a waiting
job never occupies a worker.
"""

import logging
import os
import time
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import Case, Exists, OuterRef, Q, When
from django.utils import timezone
from django_q.tasks import async_task

from borgapp import audit, borg, fileindex, hooks, job_events, lease, operations, procs, vault
from borgapp.errors import ClientGone, InvalidInput, OperationError
from borgapp.models import Job, Repository
from borgapp.places import Places

LISTING_KINDS = (Job.Kind.CONTENTS, Job.Kind.DIFF, Job.Kind.INDEX)
# Jobs after which the file index has work: archives to read, or the share of deleted ones
# to drop (borgapp.fileindex).
INDEXING_AFTER = {Job.Kind.BACKUP, Job.Kind.SYNC, Job.Kind.IMPORT, Job.Kind.PRUNE,
                  Job.Kind.DELETE, Job.Kind.INDEX}  # fmt: skip
log = logging.getLogger(__name__)
CATCH_UP_PAUSE = timedelta(days=1)  # a failed index job, then no other (index_catch_up)
PROGRESS_INTERVAL = 1.0  # seconds between progress writes (REL-07)
YIELD_LOOK = 0.25  # seconds between an index job's looks for a job it should let go first
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
    status: str = Job.Status.QUEUED,
    **extra,
) -> Job:
    """Record a job. `params` must hold no secret: it is stored and shown. `extra`: the
    retry fields (attempt, retry_of, not_before)."""
    owner = {}
    if inline:  # an inline job belongs to this process from the start (reconcile must know)
        owner = {
            "worker_host": procs.HOST,
            "worker_pid": os.getpid(),
            "worker_started": procs.start_ticks(os.getpid()),
        }
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
        status=status,
        **owner,
        **extra,
    )


def enqueue(job: Job) -> Job:
    """Hand the job to django-q2 by id (never a secret in the payload)."""
    async_task("borgapp.tasks.run_job", job.pk, task_name=f"job-{job.pk}-{job.kind}")
    return job


def submit(kind, repository, **kwargs) -> Job:
    """Create a job and queue it for a worker; a job of a host waits for that host's agent,
    which asks for it (borgapp.fleet)."""
    job = create(kind, repository, **kwargs)
    if job.host_id is None:
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


def claim(job: Job, owner: dict | None = None) -> bool:
    """Take the repository's lease for `job` and mark it running. False if busy. `owner`:
    who runs it, when not this process (an agent: its host's name, no pid here)."""
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
        # Read the clock once the lease is ours: the update above waited for the previous
        # holder's end to commit, so this start is never recorded before that end (`now`,
        # read before the wait, could be; CI saw one repository's job times overlap).
        began = timezone.now()
        runner = owner or {
            "worker_host": procs.HOST,
            "worker_pid": os.getpid(),
            "worker_started": procs.start_ticks(os.getpid()),
        }
        started = Job.objects.filter(pk=job.pk, status=Job.Status.QUEUED).update(
            status=Job.Status.RUNNING, started_at=began, heartbeat_at=began, **runner
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
    if holder is None or holder.pk == job.pk or not lease.holder_is_dead(holder):
        return
    if holder.status == Job.Status.RUNNING:
        mark_interrupted(holder, "Its process ended before the job finished.")
    else:  # ended, but its lease was never given back
        Repository.objects.filter(pk=repo_id, lease_job=holder).update(
            lease_job=None, lease_since=None
        )


def _waiting(repository_id: int):
    """A repository's due worker jobs in the order they run: file listings (which anyone who
    may look can ask for) after every other kind, then oldest first."""
    due = Q(not_before__isnull=True) | Q(not_before__lte=timezone.now())
    listing_last = Case(When(kind__in=LISTING_KINDS, then=1), default=0)
    return Job.objects.filter(
        due, repository_id=repository_id, status=Job.Status.QUEUED, inline=False,
        host__isnull=True,  # a host's jobs wait for its agent
    ).order_by(listing_last, "created_at", "id")  # fmt: skip


def dispatch_next(repository_id: int) -> None:
    """Queue the next waiting worker job of a repository whose lease is free."""
    waiting = _waiting(repository_id).first()
    if waiting is not None:
        enqueue(waiting)


def yields_to_another(job: Job) -> bool:
    """Whether a file listing should let a waiting job of another kind go first."""
    if job.kind not in LISTING_KINDS:
        return False
    return _waiting(job.repository_id).exclude(kind__in=LISTING_KINDS).exists()


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
        self.yielded = False  # an index job stopped for another job of its repository
        self.last_look = 0.0  # the first look at once

    def on_start(self, pid: int) -> None:
        Job.objects.filter(pk=self.job.pk).update(borg_pid=pid, borg_started=procs.start_ticks(pid))

    def on_event(self, event: dict) -> None:
        if not borg.progress_of(event, self.fields):
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
        if self.job.kind == Job.Kind.INDEX and not self.yielded:
            now = time.monotonic()
            if now - self.last_look >= YIELD_LOOK:
                # never delay a backup (or any other job) of the repository: the index job
                # stops, and is queued again behind it
                self.last_look = now
                waiting = _waiting(self.job.repository_id).exclude(kind__in=LISTING_KINDS)
                self.yielded = waiting.exists()
        return self.cancel or self.yielded


def _outcome_of(exc: Exception, cancelled: bool) -> tuple[str, str, str]:
    """(status, error code, message) for an exception raised by an operation."""
    if isinstance(exc, borg.BorgError):
        if cancelled:
            return Job.Status.CANCELLED, "cancelled", "Cancelled on request."
        if isinstance(exc, borg.Interrupted):
            return Job.Status.INTERRUPTED, exc.code, exc.message
        return Job.Status.FAILED, exc.code, exc.message
    if isinstance(exc, InvalidInput):
        return Job.Status.FAILED, "invalid_input", str(exc)
    if isinstance(exc, ClientGone):
        return Job.Status.CANCELLED, exc.code, str(exc)
    if isinstance(exc, hooks.HookFailed) and exc.stopped:
        return Job.Status.CANCELLED, "cancelled", "Cancelled on request (during a before-hook)."
    if isinstance(exc, OperationError):
        return Job.Status.FAILED, exc.code, str(exc)
    if isinstance(exc, vault.VaultError):
        return Job.Status.FAILED, "encryption_key", str(exc)
    log.error("Job %s crashed", exc_info=exc)
    return (
        Job.Status.FAILED,
        "internal_error",
        f"Internal error ({type(exc).__name__}); see the server log.",
    )


def execute(job: Job, echo=None, sink=None) -> Job:
    """Run a claimed job's operation and record its outcome. Never raises for borg errors."""
    job_events.started(job)
    progress = Progress(job, echo=echo)
    status, result, error_code, error_message, tail = Job.Status.SUCCEEDED, {}, "", "", []
    payload = None
    around = hooks.Hooks.of(job)
    try:
        around.before(should_stop=progress.should_stop)
        outcome = operations.run(job, progress, sink)
        result, payload, tail = outcome.result, outcome.payload, outcome.tail
        if outcome.warnings:
            status = Job.Status.WARNING
            error_message = "; ".join(outcome.warnings)[:2000]
    except Exception as exc:
        status, error_code, error_message = _outcome_of(exc, progress.cancel)
        tail = getattr(exc, "tail", [])
        result = getattr(exc, "result", {})
    except KeyboardInterrupt:  # Ctrl-C in the command line: borg was already stopped
        around.after(Job.Status.CANCELLED, result, "Cancelled with Ctrl-C.")
        mark_interrupted(job, "Cancelled with Ctrl-C.", status=Job.Status.CANCELLED)
        raise
    except BaseException:  # this process is shutting down: borg was already stopped
        around.after(Job.Status.INTERRUPTED, result, "Its process was shut down.")
        mark_interrupted(job, "Stopped because its process was shut down.")
        raise
    finally:
        progress.flush(force=True)
    if status == Job.Status.SUCCEEDED and progress.cancel:
        # borg finished before it saw the cancel: the work is done, say so.
        error_message = "A cancel was requested but the operation had already finished."
    failed_after = around.after(status, result, error_message)
    if failed_after and status in Job.OK:
        status = Job.Status.WARNING
        error_message = "; ".join(filter(None, [error_message, *failed_after]))[:2000]
    # A worker's caller is elsewhere: keep the payload (an exported key) encrypted until
    # its one download. An in-process caller gets it directly and nothing is stored.
    secret = vault.encrypt(payload) if (payload and not job.inline) else ""
    end(
        job,
        status,
        secret_payload=secret,
        result=result,
        error_code=error_code,
        error_message=error_message,
        log_tail="\n".join(tail)[-8000:],
        hook_log=around.log,
    )
    job.payload = payload  # for an in-process caller only; never stored
    return job


def end(job: Job, status: str, *, only_from: str = Job.Status.RUNNING, **fields) -> bool:
    """The one way a job ends, whatever ends it (its operation, a cancel, a crash found by
    `reconcile`, a schedule's skip). In this order:

    1. its final status is written, guarded: only a job still in `only_from` ends, so two
       enders never both record an end (False: it had ended already, nothing was done);
    2. in the same transaction, a registration that did not complete is forgotten, and the
       repository's lease is given back: whoever sees the job ended sees the repository free;
    3. after the commit, the next waiting job of the repository is dispatched (a worker that
       receives it at once also sees the lease free);
    4. then the consequences (job_events.ended): the schedule's last run, the audit row,
       notifications, alerts. After the release: a slow channel holds up no other job;
    5. last, a scheduled job that failed for a passing reason gets its retry.
    """
    now = timezone.now()
    with transaction.atomic():
        ended = Job.objects.filter(pk=job.pk, status=only_from).update(
            status=status, finished_at=now, heartbeat_at=now, borg_pid=None, **fields
        )
        if not ended:
            job.refresh_from_db()
            return False
        job.refresh_from_db()
        if status not in Job.OK and status != Job.Status.SKIPPED:
            _after_failure(job)
        freed = lease.free_lease(job)
    if freed:
        _dispatch_quietly(job.repository_id)
    job_events.ended(job)
    retry_if_transient(job)
    index_after(job)
    return True


def index_after(job: Job) -> Job | None:
    """After a job that changed what archives there are, the file index catches up: one
    index job at a time per repository, at low priority (a listing kind: it runs after
    every other waiting job, and the next one is queued when it ends)."""
    if job.kind not in INDEXING_AFTER or job.status not in Job.OK or job.repository_id is None:
        return None
    if not settings.FILE_INDEX:
        return None
    active = Job.objects.filter(repository_id=job.repository_id, kind=Job.Kind.INDEX,
                                status__in=[Job.Status.QUEUED, Job.Status.RUNNING])  # fmt: skip
    if job.kind == Job.Kind.INDEX:
        active = active.exclude(pk=job.pk)
    dropped = job.kind in (Job.Kind.PRUNE, Job.Kind.DELETE)  # their share of the index goes
    if active.exists() or not (dropped or fileindex.next_unindexed(job.repository)):
        return None
    try:
        with transaction.atomic():
            return submit(Job.Kind.INDEX, job.repository, trigger=Job.Trigger.SYSTEM, params={})
    except Exception:  # the index can catch up later; the ended job's record stands
        log.exception("Queueing the file index after job %s failed", job.pk)
        return None


def index_catch_up() -> int:
    """The file index catches up where no job would make it (run every minute by the
    maintenance task): each ready repository with archives the index lacks (made before
    the index was turned on, or kept through an upgrade that emptied it) and no index job
    waiting or running gets one, as after a backup. Where an index job failed, was
    cancelled or was interrupted in the last CATCH_UP_PAUSE, the repository waits: a broken
    archive or a cancel is not met with a new job every minute (its next backup or sync
    still queues one). Returns the jobs queued."""
    if not settings.FILE_INDEX:
        return 0
    index_jobs = Job.objects.filter(repository=OuterRef("pk"), kind=Job.Kind.INDEX)
    waiting = index_jobs.filter(status__in=[Job.Status.QUEUED, Job.Status.RUNNING])
    stopped = index_jobs.filter(
        status__in=[Job.Status.FAILED, Job.Status.CANCELLED, Job.Status.INTERRUPTED],
        finished_at__gte=timezone.now() - CATCH_UP_PAUSE,
    )
    due = (
        Repository.objects.filter(state=Repository.State.READY)
        .filter(Exists(fileindex.unindexed(OuterRef("pk"))))
        .exclude(Exists(waiting))
        .exclude(Exists(stopped))
    )
    queued = 0
    for repository in due:
        try:
            with transaction.atomic():
                submit(Job.Kind.INDEX, repository, trigger=Job.Trigger.SYSTEM, params={})
            queued += 1
        except Exception:  # the next minute tries again; the other repositories go on
            log.exception("Queueing the file index of repository %s failed", repository.pk)
    return queued


def _after_failure(job: Job) -> None:
    """A job that ended early: its repository's catalog may lag borg, and a registration
    that did not complete is forgotten (nothing stays registered)."""
    if job.repository_id is None:
        return
    if job.kind in REGISTERING_KINDS:
        Repository.objects.filter(pk=job.repository_id, state=Repository.State.PENDING).delete()
    elif job.kind in WRITING_KINDS:
        Repository.objects.filter(pk=job.repository_id).update(catalog_stale=True)


# Errors that pass by themselves (a dropped connection, a lock held outside the app): the
# borg error classes say which.
TRANSIENT = frozenset(cls.code for cls in borg.BorgError.__subclasses__() if cls.transient)


def retry_if_transient(job: Job) -> Job | None:
    """A scheduled job that failed for a passing reason is tried again after a growing wait,
    up to SCHEDULE_RETRIES more times. Warnings, wrong passphrases, integrity errors and a
    full disk are never retried."""
    if (
        not job.schedule_id
        or job.status != Job.Status.FAILED
        or job.error_code not in TRANSIENT
        or job.attempt > settings.SCHEDULE_RETRIES
    ):
        return None
    wait = settings.SCHEDULE_RETRY_WAIT * 2 ** (job.attempt - 1)
    return create(
        job.kind,
        job.repository,
        trigger=job.trigger,
        params=job.params,
        schedule=job.schedule,
        archive_name=job.archive_name,
        host=job.host,
        attempt=job.attempt + 1,
        retry_of=job,
        not_before=timezone.now() + timedelta(seconds=wait),
    )


def run_queued(job_id: int) -> None:
    """Worker entry: run the job if its repository is free; otherwise leave it queued."""
    job = Job.objects.filter(pk=job_id).first()
    if job is None or job.status != Job.Status.QUEUED or job.host_id is not None:
        return  # a host's job runs on its agent only, never on a worker of the center
    if yields_to_another(job):
        dispatch_next(job.repository_id)  # this one is dispatched again when that one ends
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
    ended = end(
        job,
        Job.Status.CANCELLED,
        only_from=Job.Status.QUEUED,
        error_code="cancelled",
        error_message="Cancelled before it started.",
    )
    if not ended:
        Job.objects.filter(pk=job.pk, status=Job.Status.RUNNING).update(cancel_requested=True)
    job.refresh_from_db()
    return job


def mark_interrupted(
    job: Job, reason: str, status: str = Job.Status.INTERRUPTED, code: str = ""
) -> None:
    """Record that a running job's process died or was stopped, stop a borg it left behind,
    and free its lease."""
    if job.worker_host == procs.HOST:
        procs.stop_orphan(job.borg_pid, job.borg_started)
    end(job, status, error_code=code or str(status), error_message=reason)


def _key_fresh_since():
    return timezone.now() - timedelta(seconds=settings.KEY_DOWNLOAD_TTL)


def key_waiting(job: Job, user) -> bool:
    """Whether `user` may still download the key this job exported."""
    return (
        job.kind == Job.Kind.KEY_EXPORT
        and bool(job.secret_payload)
        and user is not None
        and job.requested_by_id == user.pk
        and job.finished_at is not None
        and job.finished_at >= _key_fresh_since()
    )


def take_exported_key(job: Job, user) -> str | None:
    """The key a key-export job exported, once, for the admin who asked for it and within
    KEY_DOWNLOAD_TTL seconds of the export: it is deleted as it is taken. Each attempt writes
    its audit row here, whichever door it came through."""
    key = _take_key(job, user)
    if key is None:
        audit.record("key_download", job.repository_name, outcome="refused", job=job,
                     message="no key waiting for this user")  # fmt: skip
    else:
        audit.record("key_download", job.repository_name, outcome="success", job=job)
    return key


def _take_key(job: Job, user) -> str | None:
    if not key_waiting(job, user):
        return None
    taken = Job.objects.filter(pk=job.pk, requested_by=user).exclude(secret_payload="")
    token = taken.values_list("secret_payload", flat=True).first()
    if not token or not taken.update(secret_payload=""):
        return None
    return vault.decrypt(token)


def expire_exported_keys() -> int:
    """Delete exported keys nobody fetched in time (run by the maintenance task)."""
    stale = Job.objects.filter(kind=Job.Kind.KEY_EXPORT, finished_at__lt=_key_fresh_since())
    return stale.exclude(secret_payload="").update(secret_payload="")


# --- waiting for a job in a request ----------------------------------------------------------


# The requests of this process that wait for their job: waiting must never take every thread
# that serves the admin and the API.
waiters = Places("SEED_WAITERS")
WAIT_POLL = 0.2  # seconds between looks at the job row


def wait_for(job: Job, seconds: float) -> Job:
    """The job once it has ended, or as it is after `seconds` (or at once when every waiting
    place of this process is taken: the caller then answers that it is queued)."""
    if job.is_finished or not waiters.take():
        return job
    try:
        deadline = time.monotonic() + seconds
        while not job.is_finished and time.monotonic() < deadline:
            time.sleep(WAIT_POLL)
            job.refresh_from_db()
    finally:
        waiters.give_back()
    return job
