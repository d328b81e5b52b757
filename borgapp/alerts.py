"""Alert evaluation (every minute from the maintenance task, and after every job): the guide's
thresholds, computed from the catalog and the Job rows. An alert notifies when it starts firing
and when it resolves, never on every evaluation."""

import logging
import statistics
import threading
import time
from datetime import timedelta

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Q, Sum
from django.utils import timezone

from borgapp import health, notifications
from borgapp.models import Alert, Host, Job, Repository, Schedule, WorkerHeartbeat

log = logging.getLogger(__name__)
RATED_KINDS = ["backup", "prune", "compact", "check", "verify_restore"]
HEARTBEAT_STALE = timedelta(minutes=3)  # a worker ticks every minute: three missed is silence
WATCH_EVERY = 60.0  # seconds between evaluations by a web process while the worker is silent
_watched_at = -WATCH_EVERY


def _pick(value, default):
    return default if value is None else value


def _hours(delta: timedelta) -> str:
    hours = delta.total_seconds() / 3600
    if hours < 1:
        return f"{delta.total_seconds() / 60:.0f} minutes"
    return f"{hours:.0f} hours" if hours < 72 else f"{hours / 24:.0f} days"


def worker_silent(now=None) -> bool:
    """No tick from the worker for 3 minutes (or never, while schedules wait for it), and no
    job of its own reporting progress either: the tick queues behind jobs, so workers all busy
    with long backups are not a dead worker."""
    now = now or timezone.now()
    seen = WorkerHeartbeat.objects.values_list("seen_at", flat=True).first()
    if seen is None:
        silent = Schedule.objects.filter(enabled=True).exists()
    else:
        silent = now - seen > HEARTBEAT_STALE
    return (
        silent
        and not Job.objects.filter(
            status=Job.Status.RUNNING, inline=False, heartbeat_at__gt=now - HEARTBEAT_STALE
        ).exists()
    )


def watch_worker() -> threading.Thread | None:
    """Alerts are evaluated by the worker; a dead worker cannot announce its own death. The
    web process does it instead when it serves /healthz, /metrics or the dashboard and the
    worker is silent (at most once a minute per process), in a thread of its own so that
    a slow notification channel never slows the probe."""
    global _watched_at
    if time.monotonic() - _watched_at < WATCH_EVERY:
        return None
    _watched_at = time.monotonic()
    try:
        if not worker_silent():
            return None
    except Exception:  # a probe must answer whatever happens here
        log.exception("Checking the worker's heartbeat failed")
        return None
    if not settings.ALERT_WATCH_THREAD:
        _evaluate_for_silent_worker(own_connection=False)
        return None
    thread = threading.Thread(target=_evaluate_for_silent_worker, name="alert-watch", daemon=True)
    thread.start()
    return thread


def _evaluate_for_silent_worker(own_connection: bool = True) -> None:
    from django.db import connection

    try:
        evaluate()
    except Exception:
        log.exception("Alert evaluation while the worker is silent failed")
    finally:
        if own_connection:
            connection.close()  # the thread's own connection


def conditions(now=None, repository_id=None) -> dict[tuple[str, int | None], str]:
    """Everything wrong right now: {(kind, repository id or None): reason for a person}. With
    `repository_id`: that repository's conditions, and the ones of no repository."""
    now = now or timezone.now()
    found: dict[tuple[str, int | None], str] = {}
    repos = Repository.objects.filter(state=Repository.State.READY)
    if repository_id is not None:
        repos = repos.filter(pk=repository_id)
    for repo in repos:
        for kind, condition in CONDITIONS:
            reason = condition(repo, now)
            if reason is not None:
                found[(kind, repo.pk)] = reason
    seen = WorkerHeartbeat.objects.values_list("seen_at", flat=True).first()
    if worker_silent(now):
        found[(Alert.Kind.WORKER, None)] = (
            f"The worker last ticked {_hours(now - seen)} ago ({seen:%Y-%m-%d %H:%M} UTC): "
            if seen
            else "No worker has ever ticked although schedules are enabled: "
        ) + "scheduled jobs are not running. Start it with `manage.py worker`."
    silent_hosts = hosts_silent(now)
    if silent_hosts:
        found[(Alert.Kind.HOST_SILENT, None)] = (
            "No word from the agent of " + ", ".join(silent_hosts)
            + f" for over {_hours(timedelta(seconds=settings.HOST_SILENT_AFTER))}: "
            "their backups are not running. Check the agent (systemctl status) and the network."
        )  # fmt: skip
    return found


def hosts_silent(now=None) -> list[str]:
    """Active hosts whose agent has not asked the center for anything for a while."""
    since = (now or timezone.now()) - timedelta(seconds=settings.HOST_SILENT_AFTER)
    silent = Host.objects.filter(state=Host.State.ACTIVE, last_seen__lt=since)
    return list(silent.order_by("name").values_list("name", flat=True))


def _complete_archives(repo: Repository):
    """Archives of finished backups (no checkpoints), the ones overdue and growth judge by."""
    return repo.archives.filter(is_checkpoint=False, start__isnull=False)


def overdue(repo: Repository, now) -> str | None:
    """Age of the last successful backup."""
    limit = health.overdue_after(repo)
    last = _complete_archives(repo).order_by("-start").values_list("start", flat=True).first()
    if last is None and now - repo.created_at > limit:
        return (
            f"{repo.name} has no backup yet ({_hours(now - repo.created_at)} since it was added)."
        )
    if last is not None and now - last > limit:
        return (
            f"The last backup of {repo.name} is {_hours(now - last)} old (limit {_hours(limit)})."
        )
    return None


def success_rate(repo: Repository, now) -> str | None:
    """Success rate over the window."""
    window = now - timedelta(days=settings.ALERT_SUCCESS_WINDOW_DAYS)
    ended = Job.objects.filter(
        repository=repo, kind__in=RATED_KINDS, finished_at__gte=window,
        status__in=["succeeded", "warning", "failed", "interrupted"],
    )  # fmt: skip
    total = ended.count()
    if total < settings.ALERT_SUCCESS_MIN_JOBS:
        return None  # too few to be a rate
    newest = list(ended.order_by("-finished_at", "-pk").values_list("status", flat=True)
                  [: settings.ALERT_SUCCESS_CLEARING_RUN])  # fmt: skip
    if newest and all(status in Job.OK for status in newest):
        return None  # it has recovered: a failure a week ago is history, not a condition
    good = ended.filter(status__in=["succeeded", "warning"]).count()
    rate = 100.0 * good / total
    minimum = _pick(repo.min_success_rate, settings.ALERT_SUCCESS_RATE_MIN)
    if rate < minimum:
        return (
            f"{repo.name}: {good} of {total} jobs succeeded in the last "
            f"{settings.ALERT_SUCCESS_WINDOW_DAYS} days ({rate:.1f} %, minimum {minimum:g} %)."
        )
    return None


def deduplication(repo: Repository, now) -> str | None:
    """Deduplication (original over stored: higher is better)."""
    if _complete_archives(repo).count() < settings.ALERT_DEDUP_MIN_ARCHIVES:
        return None  # a first backup of ordinary data is about 1.3: nothing to judge yet
    ratio = repo.deduplication_ratio
    minimum = _pick(repo.min_deduplication, settings.ALERT_DEDUP_MIN)
    if ratio is not None and ratio < minimum:
        return (
            f"{repo.name}: deduplication ratio {ratio:.2f} (original over stored size; "
            f"minimum {minimum:g}). The data may be compressed or encrypted already, or "
            "change completely between runs."
        )
    return None


def growth(repo: Repository, now) -> str | None:
    """Stored bytes per day over the last 7 days against the 30 before."""
    week = now - timedelta(days=7)
    sums = _complete_archives(repo).aggregate(
        recent=Sum("deduplicated_size", filter=Q(start__gte=week)),
        before=Sum("deduplicated_size", filter=Q(start__gte=week - timedelta(days=30),
                                                  start__lt=week)),
    )  # fmt: skip
    recent = (sums["recent"] or 0) / 7
    before = (sums["before"] or 0) / 30
    factor = _pick(repo.growth_factor, settings.ALERT_GROWTH_FACTOR)
    if before > 0 and recent > factor * before:
        return (
            f"{repo.name} grew {recent / 1e6:.1f} MB a day over the last 7 days, "
            f"{recent / before:.1f}× the {before / 1e6:.1f} MB a day of the 30 days before "
            f"(limit {factor:g}×)."
        )
    if repo.growth_limit_bytes and recent > repo.growth_limit_bytes:
        return (
            f"{repo.name} grew {recent / 1e6:.1f} MB a day over the last 7 days "
            f"(limit {repo.growth_limit_bytes / 1e6:.1f} MB)."
        )
    return None


def check_age(repo: Repository, now) -> str | None:
    """Age of the last successful check."""
    max_age = timedelta(days=_pick(repo.check_max_age_days, settings.ALERT_CHECK_MAX_AGE_DAYS))
    checked = (
        Job.objects.filter(repository=repo, kind="check", status="succeeded")
        .order_by("-finished_at").values_list("finished_at", flat=True).first()
    )  # fmt: skip
    if (checked or repo.created_at) < now - max_age:
        since = f"was {_hours(now - checked)} ago" if checked else "never ran"
        return f"The last successful check of {repo.name} {since}."
    return None


def job_overrun(repo: Repository, now) -> str | None:
    """A running job far past its usual duration."""
    job = repo.lease_job
    if job is None or job.status != "running" or not job.started_at:
        return None
    past = list(
        Job.objects.filter(repository=repo, kind=job.kind, status="succeeded",
                           started_at__isnull=False, finished_at__isnull=False)
        .order_by("-finished_at")[:10]
    )  # fmt: skip
    if len(past) < 3:
        return None
    usual = statistics.median(j.duration for j in past)
    elapsed = (now - job.started_at).total_seconds()
    if usual > 0 and elapsed > settings.ALERT_JOB_OVERRUN_FACTOR * max(usual, 60):
        return (
            f"{job.get_kind_display()} job {job.pk} on {repo.name} has run "
            f"{elapsed / 60:.0f} min; it usually takes {usual / 60:.1f} min."
        )
    return None


# Each condition is (repo, now) -> reason for a person, or None; evaluated in this order.
CONDITIONS = [
    (Alert.Kind.OVERDUE, overdue),
    (Alert.Kind.SUCCESS_RATE, success_rate),
    (Alert.Kind.DEDUPLICATION, deduplication),
    (Alert.Kind.GROWTH, growth),
    (Alert.Kind.CHECK_AGE, check_age),
    (Alert.Kind.JOB_OVERRUN, job_overrun),
]


def evaluate(now=None, repository_id=None) -> dict:
    """Open alerts for new conditions, keep firing ones current, resolve the rest; notify on
    the changes only. With `repository_id` (a job of it ended): only what that repository and
    no repository can have changed, so that a job's end costs the same with 5 repositories
    or 500 (the periodic pass still looks at all)."""
    now = now or timezone.now()
    current = conditions(now, repository_id)
    fired, resolved = [], []
    with transaction.atomic():
        scope = Alert.objects.select_for_update().filter(state=Alert.State.FIRING)
        if repository_id is not None:
            scope = scope.filter(Q(repository_id=repository_id) | Q(repository__isnull=True))
        firing = {(a.kind, a.repository_id): a for a in scope}
        for key, reason in current.items():
            alert = firing.get(key)
            if alert is None:
                try:
                    with transaction.atomic():
                        fired.append(
                            Alert.objects.create(
                                kind=key[0], repository_id=key[1], reason=reason,
                                first_seen=now, last_seen=now,
                            )
                        )  # fmt: skip
                except IntegrityError:  # another process opened it (and tells people)
                    pass
            else:
                Alert.objects.filter(pk=alert.pk).update(last_seen=now, reason=reason)
        for key, alert in firing.items():
            if key not in current:
                Alert.objects.filter(pk=alert.pk).update(
                    state=Alert.State.RESOLVED, resolved_at=now, last_seen=now
                )
                alert.state, alert.resolved_at = Alert.State.RESOLVED, now
                resolved.append(alert)
    for alert in fired:
        notifications.alert_changed(alert, fired=True)
    for alert in resolved:
        notifications.alert_changed(alert, fired=False)
    return {"firing": len(current), "fired": len(fired), "resolved": len(resolved)}


def firing_repository_ids() -> set[int]:
    return set(
        Alert.objects.filter(state=Alert.State.FIRING, repository__isnull=False).values_list(
            "repository_id", flat=True
        )
    )
