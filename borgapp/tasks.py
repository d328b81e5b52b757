"""django-q2 entry points. They take ids only: no secret ever enters a task payload."""

from django.utils import timezone

from borgapp import jobs


def run_job(job_id: int) -> None:
    jobs.run_queued(job_id)


def maintenance() -> dict:
    """Every minute: repair state after crashes (REL-14) and record that a worker is alive."""
    from borgapp.models import WorkerHeartbeat

    WorkerHeartbeat.objects.update_or_create(pk=1, defaults={"seen_at": timezone.now()})
    from borgapp import alerts

    result = jobs.reconcile()
    result["retries_dispatched"] = jobs.dispatch_due()
    result["alerts"] = alerts.evaluate()
    return result


def daily_digest() -> int:
    from borgapp import notifications

    return notifications.digest()


def run_schedule(schedule_id: int) -> dict:
    """A Schedule's django-q2 mirror fired (see scheduling.py)."""
    from borgapp import scheduling

    return scheduling.run_due(schedule_id)
