"""A repository's lease: which job may use it now (one at a time across every worker and the
command line, REL-03 in docs/requirements.md).

The lease is the Repository row's `lease_job`, taken by `jobs.claim` with a conditional
UPDATE and given back here, in the transaction that records the job's end. A mount keeps its
lease until it is unmounted: borg holds the repository's lock for as long as an archive is
mounted, so nothing else could write there anyway.
"""

from datetime import timedelta

from django.conf import settings
from django.utils import timezone

from borgapp import procs
from borgapp.models import Job, Mount, Repository


def holds_mount(job: Job) -> bool:
    return job.kind == Job.Kind.MOUNT and Mount.objects.filter(job=job).exists()


def holder_is_dead(job: Job) -> bool:
    """Whether a lease holder can no longer be using the repository."""
    if job.status != Job.Status.RUNNING:
        return not holds_mount(job)
    if job.worker_host == procs.HOST and not procs.alive(job.worker_pid, job.worker_started):
        return True
    grace = settings.AGENT_JOB_GRACE if run_by_agent(job) else settings.JOB_STALE_AFTER
    stale = timezone.now() - timedelta(seconds=grace)
    return job.heartbeat_at is not None and job.heartbeat_at < stale


AGENT_PREFIX = "agent:"  # a job's worker_host when a host's agent runs it


def run_by_agent(job: Job) -> bool:
    return job.worker_host.startswith(AGENT_PREFIX)


def free_lease(job: Job) -> bool:
    """Give up the repository's lease of an ended job; True when the next waiting job on it
    should be dispatched (call `dispatch_next` once the transaction has committed, so that a
    worker that receives it at once also sees the repository free)."""
    if job.repository_id is None:
        return False
    if job.status in Job.OK and holds_mount(job):
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
