"""django-q2 entry points. They take ids only: no secret ever enters a task payload."""

from borgapp import alerts, jobs, notifications, reconcile, scheduling
from borgapp.models import WorkerHeartbeat


def run_job(job_id: int) -> None:
    jobs.run_queued(job_id)


def maintenance() -> dict:
    """Every minute: repair state after crashes (REL-14) and record that a worker is alive."""
    WorkerHeartbeat.beat()
    result = reconcile.repair()
    result["retries_dispatched"] = reconcile.dispatch_due()
    result["alerts"] = alerts.evaluate()
    result["index_jobs_queued"] = jobs.index_catch_up()
    return result


def daily_digest() -> int:
    return notifications.digest()


def run_schedule(schedule_id: int) -> dict:
    """A Schedule's django-q2 mirror fired (see scheduling.py)."""
    return scheduling.run_due(schedule_id)
