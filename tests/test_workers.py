"""Several worker processes side by side, as a fleet's center runs them (README, "Scaling the
center"), and the command line beside them: whichever process takes a job, the jobs of one
repository never overlap (REL-03) and every one of them succeeds. `make test` runs this on
SQLite with the ORM broker, then on PostgreSQL with Redis as the broker (tests/backends.py)."""

import threading
import time

import pytest
from django.conf import settings

from borgapp import intake, procs
from borgapp.models import Archive, Job
from tests.helpers import borg_processes_by_repo, make_repo, manage, random_tree, wait_for

pytestmark = pytest.mark.django_db(transaction=True)


def ancestor_among(pid: int, candidates: set[int]) -> int | None:
    """The one of `candidates` that `pid` descends from (or is), if any."""
    while pid > 1:
        if pid in candidates:
            return pid
        stat = procs._stat(pid)
        if stat is None:
            return None
        pid = stat[2]
    return None


@pytest.mark.slow
def test_two_workers_and_the_cli_never_overlap_on_one_repository(
    roots, passfile, tmp_path, workers
):
    repo = make_repo(roots, passfile, "shared")
    src = random_tree(tmp_path / "src", 10, 200_000)
    started = {workers().pid, workers().pid}
    watch = [str(roots.repos / "shared")]
    peak, seen_together, stop = [0], [], threading.Event()

    def sample():  # every borg on this machine that names the repository
        while not stop.is_set():
            found = borg_processes_by_repo(watch)[watch[0]]
            peak[0] = max(peak[0], len(found))
            if len(found) > 1:
                seen_together.append(found)
            time.sleep(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    # one backup set: each job names its archive when it starts, back to back with the last
    params = {"sources": [str(src)]}
    queued = [intake.start("backup", repo, params, trigger="api") for _ in range(8)]
    by_cli = manage(["borg_backup", "shared", "--source", src], roots.env)
    assert by_cli.returncode == 0, by_cli.stderr
    ids = [job.pk for job in queued]
    wait_for(
        lambda: Job.objects.filter(pk__in=ids, status__in=Job.FINISHED).count() == len(ids),
        timeout=240,
        interval=0.5,
    )
    stop.set()
    sampler.join()

    ended = list(Job.objects.filter(repository=repo, kind="backup").order_by("started_at"))
    assert len(ended) == len(ids) + 1
    assert {job.status for job in ended} == {"succeeded"}, [
        (job.pk, job.status, job.error_message) for job in ended
    ]
    for before, after in zip(ended, ended[1:], strict=False):
        assert before.finished_at <= after.started_at, (before.pk, after.pk)
    assert peak[0] == 1, seen_together[:3]  # never two borgs on the repository at once
    assert Archive.objects.filter(repository=repo, is_checkpoint=False).count() == len(ended)
    # the worker processes took the jobs (the command line ran its own); Redis hands a task to
    # the clients waiting for one in turn, so there each process took some. The ORM broker
    # gives it to whichever looks first: one process may take them all.
    runners = {ancestor_among(job.worker_pid, started) for job in ended if job.pk in ids}
    assert runners and runners <= started
    if settings.REDIS_URL:
        assert runners == started
