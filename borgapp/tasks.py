"""django-q2 entry points. They take ids only: no secret ever enters a task payload."""

from django.utils import timezone

from borgapp import jobs


def run_job(job_id: int) -> None:
    jobs.run_queued(job_id)


def maintenance() -> dict:
    """Every minute: repair state after crashes (REL-14) and record that a worker is alive."""
    from borgapp.models import WorkerHeartbeat

    WorkerHeartbeat.objects.update_or_create(pk=1, defaults={"seen_at": timezone.now()})
    return jobs.reconcile()
