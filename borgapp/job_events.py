"""What the rest of the app does when a job starts or ends: the schedule's start ping, its
last run and outcome, the audit row, notifications and alert evaluation.

Explicit calls in one place rather than Django signals: every consumer is in this app, and
their order matters (jobs.end gives the lease back before any of this runs, so a slow
notification channel holds up no other job).
"""

import logging

from borgapp import alerts, audit, notifications
from borgapp.models import Job, Schedule

log = logging.getLogger(__name__)


def started(job: Job) -> None:
    """A job's operation is about to run: the schedule's start ping (never raises)."""
    if job.schedule_id and job.schedule.ping_start_url:
        notifications.ping(job.schedule.ping_start_url)


def ended(job: Job) -> None:
    """Everything that follows a job's end, whatever ended it."""
    record_outcome(job)
    audit.job_finished(job)
    try:  # telling people must never break the job's record
        notifications.job_finished(job)
        alerts.evaluate(repository_id=job.repository_id)
    except Exception:
        log.exception("Notifications after job %s failed", job.pk)


def record_outcome(job: Job) -> None:
    """Keep the schedule's last run / last outcome / last success current."""
    if not job.schedule_id or not job.is_finished:
        return
    values = {"last_outcome": job.status}
    if job.status != Job.Status.SKIPPED:
        values["last_run_at"] = job.started_at or job.finished_at
    if job.status in Job.OK:
        values["last_success_at"] = job.finished_at
    Schedule.objects.filter(pk=job.schedule_id).update(**values)
