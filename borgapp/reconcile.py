"""Crash repair (REL-14 in docs/requirements.md), run at every worker start and by the
maintenance task: jobs whose process died end as interrupted, leases of ended jobs are given
back, vanished mounts are forgotten, lost dispatches and due retries are queued again, and
exported keys nobody fetched in time are deleted.
"""

import os
from datetime import timedelta

from django.db.models import Q
from django.utils import timezone

from borgapp import jobs, lease, procs
from borgapp.models import Job, Mount, Repository

LOST = "host_lost"  # the error code of a host's job whose agent went silent


def dispatch_due() -> int:
    """Hand retries whose wait is over to the workers (run by the maintenance task)."""
    due = list(
        Job.objects.filter(
            status=Job.Status.QUEUED, inline=False, not_before__lte=timezone.now()
        ).order_by("created_at", "id")
    )
    for job in due:
        Job.objects.filter(pk=job.pk).update(not_before=None)
        jobs.enqueue(job)
    return len(due)


def repair() -> dict:
    """Repair state after crashes (REL-14): dead running jobs become interrupted, leases of
    finished jobs are released, and free repositories get their waiting jobs dispatched."""
    interrupted = 0
    for job in Job.objects.filter(status=Job.Status.RUNNING):
        if not lease.holder_is_dead(job):
            continue
        if lease.run_by_agent(job):
            name = job.worker_host.removeprefix(lease.AGENT_PREFIX)
            jobs.mark_interrupted(
                job,
                f"The agent of host {name} stopped reporting. If borg finished meanwhile, its "
                "report is still recorded when the agent is back.",
                code=LOST,
            )
        else:
            jobs.mark_interrupted(job, "Its process ended before the job finished.")
        interrupted += 1
    # Command-line jobs whose command died while waiting for the repository.
    for job in Job.objects.filter(status=Job.Status.QUEUED, inline=True, worker_host=procs.HOST):
        if not procs.alive(job.worker_pid, job.worker_started):
            jobs.cancel(job)
    # Mounts made on this machine that are gone (a reboot, an unmount outside the app). A
    # mount made by another machine of the center is not visible here: that one judges it.
    here = Mount.objects.filter(Q(job__isnull=True) | Q(job__worker_host=procs.HOST))
    vanished = [m for m in here if not os.path.ismount(m.mountpoint)]
    for mount in vanished:
        mount.delete()
    released = 0
    for repo in Repository.objects.filter(lease_job__isnull=False).select_related("lease_job"):
        if repo.lease_job.status != Job.Status.RUNNING and not lease.holds_mount(repo.lease_job):
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
            jobs.dispatch_next(repository_id)
    expired = jobs.expire_exported_keys()
    return {
        "interrupted": interrupted,
        "released": released,
        "mounts_cleared": len(vanished),
        "keys_expired": expired,
    }
