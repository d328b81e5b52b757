"""Jobs: the repository lease (REL-03), cancel (REL-04), crash repair (REL-14, REL-01), with
real borg, a real django-q2 cluster and real kill -9."""

import os
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from borgapp import intake, jobs, lease, procs, reconcile
from borgapp.models import Archive, Job, Repository, WorkerHeartbeat
from tests.helpers import (
    PASSPHRASE,
    ROOT,
    SLOW,
    borg_processes_by_repo,
    empty_queue,
    make_repo,
    manage,
    queued_tasks,
    random_tree,
    spawn_manage,
    stop_process,
    wait_for,
)

pytestmark = pytest.mark.django_db(transaction=True)


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


# --- the lease, in-process ------------------------------------------------------------------


def test_lease_is_exclusive_and_released(roots, passfile):
    repo = make_repo(roots, passfile, "r1")
    first = jobs.create("info", repo, trigger="cli")
    second = jobs.create("info", repo, trigger="cli")
    assert jobs.claim(first)
    assert not jobs.claim(second)  # busy: stays queued
    second.refresh_from_db()
    assert second.status == "queued"
    assert not jobs.claim(first)  # not queued any more
    jobs.execute(first)
    assert Repository.objects.get(pk=repo.pk).lease_job_id is None
    assert jobs.claim(second)


def test_lease_of_a_dead_holder_is_taken_over(roots, passfile):
    repo = make_repo(roots, passfile, "r1")
    dead = jobs.create("backup", repo, trigger="api")
    assert jobs.claim(dead)
    Job.objects.filter(pk=dead.pk).update(worker_pid=dead_pid())  # a process that is gone
    waiting = jobs.create("info", repo, trigger="cli")
    assert jobs.claim(waiting)
    dead.refresh_from_db()
    assert dead.status == "interrupted" and dead.error_code == "interrupted"
    assert Repository.objects.get(pk=repo.pk).lease_job_id == waiting.pk


def test_busy_worker_job_stays_queued_and_is_dispatched_on_release(roots, passfile):
    repo = make_repo(roots, passfile, "r1")
    holder = jobs.create("info", repo, trigger="cli", inline=True)
    assert jobs.claim(holder)
    queued = intake.start("info", repo, {}, trigger="api")
    empty_queue()
    jobs.run_queued(queued.pk)  # what a worker does: busy, so it returns at once
    queued.refresh_from_db()
    assert queued.status == "queued"
    jobs.execute(holder)
    assert [t["args"] for t in queued_tasks()] == [(queued.pk,)]  # only the job id travels


def test_cancel_of_a_queued_job(roots, passfile):
    repo = make_repo(roots, passfile, "r1")
    job = jobs.create("info", repo, trigger="api")
    assert jobs.cancel(job).status == "cancelled"
    assert not jobs.claim(job)


def test_cancel_of_a_running_backup_stops_borg(roots, passfile, tmp_path, settings):
    settings.BORG_GRACE_SIGINT = 20
    repo = make_repo(roots, passfile, "r1")
    src = random_tree(tmp_path / "src", 60, 1_000_000)
    job = jobs.create(
        "backup",
        repo,
        trigger="cli",
        inline=True,
        params={
            "sources": [str(src)],
            "prefix": "big",
            "compression": SLOW,
            "checkpoint_interval": 1,
        },
    )
    thread = threading.Thread(target=jobs.run_inline, args=(job,))
    thread.start()
    wait_for(lambda: Job.objects.filter(pk=job.pk, progress_bytes__gt=0).exists())
    time.sleep(1.5)
    jobs.cancel(job)
    thread.join(timeout=60)
    assert not thread.is_alive()
    job.refresh_from_db()
    assert job.status == "cancelled"
    assert not list((roots.repos / "r1").glob("lock.*"))
    # the checkpoint borg wrote on SIGINT is in the catalog, flagged as a checkpoint
    assert Archive.objects.filter(repository=repo, is_checkpoint=True).exists()
    assert not Archive.objects.filter(repository=repo, is_checkpoint=False).exists()


# --- a real django-q2 cluster -----------------------------------------------------------------


@pytest.mark.slow
def test_one_job_per_repository_parallel_across_repositories(roots, passfile, tmp_path, cluster):
    repo_a = make_repo(roots, passfile, "a")
    repo_b = make_repo(roots, passfile, "b")
    src = random_tree(tmp_path / "src", 20, 200_000)
    per_repo = 15
    watch = [str(roots.repos / "a"), str(roots.repos / "b")]
    peaks = {p: 0 for p in watch}
    overlaps = []
    both_at_once = []
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            found = borg_processes_by_repo(watch)
            for path, processes in found.items():
                peaks[path] = max(peaks[path], len(processes))
                if len(processes) > 1:
                    overlaps.append(processes)
            if all(found.values()):
                both_at_once.append(True)
            time.sleep(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    submitted = []
    for index in range(per_repo):
        for repo in (repo_a, repo_b):
            submitted.append(
                intake.start(
                    "backup",
                    repo,
                    {"sources": [str(src)], "archive": f"{repo.name}-{index:03d}"},
                    trigger=random.choice(["api", "admin", "schedule"]),
                )
            )
    wait_for(
        lambda: (
            Job.objects.filter(pk__in=[j.pk for j in submitted], status__in=Job.FINISHED).count()
            == len(submitted)
        ),
        timeout=600,
        interval=0.5,
    )
    stop.set()
    sampler.join()
    finished = list(Job.objects.filter(pk__in=[j.pk for j in submitted]))
    assert {j.status for j in finished} == {"succeeded"}, [
        (j.pk, j.status, j.error_message) for j in finished if j.status != "succeeded"
    ]
    assert not any(j.error_code == "lock_timeout" for j in finished)
    assert peaks == {watch[0]: 1, watch[1]: 1}, overlaps[:3]  # never two borgs on one repo
    for repo in (repo_a, repo_b):
        spans = sorted(
            (j.started_at, j.finished_at) for j in finished if j.repository_id == repo.pk
        )
        assert all(prev[1] <= nxt[0] for prev, nxt in zip(spans, spans[1:], strict=False))
    assert both_at_once  # the two repositories did run at the same time
    assert Archive.objects.filter(repository=repo_a).count() == per_repo


def test_a_starting_worker_is_seen_at_once(cluster, client):
    """The first maintenance tick may be a minute away: the worker's start is its first
    heartbeat, so /healthz and the dashboard do not call a starting worker absent."""
    assert wait_for(lambda: WorkerHeartbeat.objects.exists(), timeout=20)
    assert "worker" not in client.get("/healthz").json()["problems"]


def worker_gone(pid: int) -> bool:
    try:
        return procs._stat(pid)[1] == "Z"  # dead, not yet reaped by django-q's guard
    except (OSError, TypeError, IndexError):
        return True


@pytest.mark.slow
def test_worker_killed_mid_job_is_reconciled(roots, passfile, tmp_path, cluster):
    repo = make_repo(roots, passfile, "r1")
    src = random_tree(tmp_path / "src", 60, 1_000_000)
    job = intake.start(
        "backup", repo, {"sources": [str(src)], "prefix": "big", "compression": SLOW}, trigger="api"
    )
    running = wait_for(
        lambda: Job.objects.filter(pk=job.pk, status="running", borg_pid__isnull=False).first(),
        timeout=60,
    )
    os.kill(running.worker_pid, signal.SIGKILL)
    # look as soon as the worker is dead: django-q starts a new worker within a second, and
    # its start-up repair stops the orphan (CI saw it gone after a fixed 0.5 s under load)
    wait_for(lambda: worker_gone(running.worker_pid), timeout=10, interval=0.01)
    assert os.path.exists(f"/proc/{running.borg_pid}")  # borg outlived its worker
    # ... and was adopted by the worker's main process, not by PID 1 (which, in a container,
    # may never reap it: borg takes a zombie for alive and its lock would never go stale)
    assert procs._stat(running.borg_pid)[2] == cluster.pid
    report = reconcile.repair()
    assert report["interrupted"] == 1
    job.refresh_from_db()
    assert job.status == "interrupted"
    wait_for(  # stopped, then reaped: no zombie left behind
        lambda: (
            procs.start_ticks(running.borg_pid) not in (None, running.borg_started)
            or not os.path.exists(f"/proc/{running.borg_pid}")
        ),
        30,
    )
    assert Repository.objects.get(pk=repo.pk).lease_job_id is None
    assert Job.objects.filter(status="running").count() == 0
    # the next job on the repository succeeds with no manual step
    small = random_tree(tmp_path / "small", 2, 1000)
    after = intake.start("backup", repo, {"sources": [str(small)]}, trigger="api")
    wait_for(lambda: Job.objects.get(pk=after.pk).status in Job.FINISHED, timeout=120)
    assert Job.objects.get(pk=after.pk).status == "succeeded"


@pytest.mark.slow
def test_kill_9_mid_backup_then_next_run_succeeds(roots, passfile, tmp_path):
    """REL-01 at ten random kill points: the CLI and its borg die together (kill -9 of the
    process group); the next run succeeds with no manual step."""
    make_repo(roots, passfile, "r1")
    rng = random.Random(1234)
    for attempt in range(10):
        # fresh data each time, so the killed run has real work to do (no dedup shortcut)
        src = random_tree(tmp_path / f"src{attempt}", 30, 1_000_000)
        args = [
            "borg_backup",
            "r1",
            "--source",
            src,
            "--prefix",
            f"k{attempt}",
            "--checkpoint-interval",
            "1",
            "--compression",
            SLOW,
        ]
        proc = spawn_manage(args, roots.env)
        killed = wait_for(
            lambda: Job.objects.filter(
                kind="backup", status="running", borg_pid__isnull=False
            ).first(),
            timeout=60,
        )
        time.sleep(rng.uniform(0.5, 3.0))
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        nxt = manage(
            ["borg_backup", "r1", "--source", src, "--prefix", f"n{attempt}", "--json"], roots.env
        )
        assert nxt.returncode == 0, nxt.stderr
        killed.refresh_from_db()
        assert killed.status == "interrupted"
    repo = Repository.objects.get(name="r1")
    finished = Archive.objects.filter(repository=repo, is_checkpoint=False)
    assert finished.filter(name__startswith="n").count() == 10
    from borgapp import borg
    from borgapp.operations import borg_config

    listed = borg.run(borg.list_cmd(repo.location), borg_config(), passphrase=PASSPHRASE)
    in_borg = {(a["name"], a["id"]) for a in listed.json()["archives"]}
    assert set(Archive.objects.filter(repository=repo).values_list("name", "borg_id")) == in_borg
    checkpoints = Archive.objects.filter(repository=repo, name__contains=".checkpoint")
    assert checkpoints.exists()  # some kills came after a checkpoint: recorded as such
    assert all(a.is_checkpoint for a in checkpoints)
    assert Job.objects.filter(status="running").count() == 0


def test_cli_waits_for_the_lease_then_runs(roots, passfile):
    repo = make_repo(roots, passfile, "r1")
    holder = jobs.create("backup", repo, trigger="api")
    assert jobs.claim(holder)  # held by a live process (this one)
    waiting = jobs.create("info", repo, trigger="cli", inline=True)
    thread = threading.Thread(target=jobs.run_inline, args=(waiting,), kwargs={"poll": 0.1})
    thread.start()
    time.sleep(1.0)
    assert Job.objects.get(pk=waiting.pk).status == "queued"
    Job.objects.filter(pk=holder.pk).update(status="succeeded")
    holder.refresh_from_db()
    assert lease.free_lease(holder)
    thread.join(timeout=30)
    assert Job.objects.get(pk=waiting.pk).status == "succeeded"


def test_reconcile_clears_mounts_that_vanished(roots, passfile):
    from borgapp.models import Mount

    repo = make_repo(roots, passfile, "r1")
    Mount.objects.create(repository=repo, mountpoint=str(roots.mnt / "gone"))
    assert reconcile.repair()["mounts_cleared"] == 1
    assert not Mount.objects.exists()


def test_reconcile_leaves_the_mounts_of_another_machine_alone(roots, passfile):
    """With workers on several machines, a mount is only visible on the machine that made it:
    another one must not take it for gone and free the repository borg still has locked."""
    from borgapp.models import Mount

    repo = make_repo(roots, passfile, "r1")
    elsewhere = jobs.create("mount", repo, trigger="api")
    assert jobs.claim(elsewhere, owner={"worker_host": "other-machine/4026531836"})
    Job.objects.filter(pk=elsewhere.pk).update(status="succeeded")
    Mount.objects.create(repository=repo, mountpoint=str(roots.mnt / "there"), job=elsewhere)
    assert reconcile.repair()["mounts_cleared"] == 0
    assert Repository.objects.get(pk=repo.pk).lease_job_id == elsewhere.pk


def test_worker_start_reconciles_dead_jobs(roots, passfile):
    repo = make_repo(roots, passfile, "r1")
    stale = jobs.create("backup", repo, trigger="schedule")
    assert jobs.claim(stale)
    Job.objects.filter(pk=stale.pk).update(worker_pid=dead_pid())
    proc = spawn_manage(["worker"], roots.env)
    try:
        wait_for(lambda: Job.objects.get(pk=stale.pk).status == "interrupted", timeout=60)
        assert Repository.objects.get(pk=repo.pk).lease_job_id is None
    finally:
        stop_process(proc)


@pytest.mark.parametrize(
    "signo, status", [(signal.SIGINT, "cancelled"), (signal.SIGTERM, "interrupted")]
)
def test_cli_stopped_by_signal_records_the_job_and_stops_borg(
    roots, passfile, tmp_path, signo, status
):
    repo = make_repo(roots, passfile, "r1")
    src = random_tree(tmp_path / "src", 30, 1_000_000)
    proc = spawn_manage(
        ["borg_backup", "r1", "--source", src, "--compression", SLOW],
        roots.env,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=False,
        # as in a terminal: SIGINT is not ignored (a background shell job inherits SIG_IGN)
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    running = wait_for(
        lambda: Job.objects.filter(kind="backup", status="running", borg_pid__isnull=False).first()
    )
    time.sleep(0.5)
    proc.send_signal(signo)  # to the command only, as a terminal's Ctrl-C or a service stop
    proc.wait(timeout=60)
    if signo == signal.SIGINT:
        assert proc.returncode == 2
        assert proc.stderr.read().strip().splitlines()[-1].endswith("recorded as cancelled.")
    else:
        assert proc.returncode == 128 + signal.SIGTERM
    job = Job.objects.get(pk=running.pk)
    assert job.status == status
    assert Repository.objects.get(pk=repo.pk).lease_job_id is None
    assert (
        not os.path.exists(f"/proc/{running.borg_pid}/cmdline")
        or b"borg" not in Path(f"/proc/{running.borg_pid}/cmdline").read_bytes()
    )
    assert not list((roots.repos / "r1").glob("lock.*"))


def test_job_deadline_stops_borg_and_says_so(roots, passfile, tmp_path, settings):
    settings.JOB_DEADLINE = 2
    settings.BORG_GRACE_SIGINT = 10
    repo = make_repo(roots, passfile, "r1")
    src = random_tree(tmp_path / "src", 30, 1_000_000)
    job = intake.start(
        "backup", repo, {"sources": [str(src)], "compression": SLOW}, trigger="cli", inline=True
    )
    assert job.status == "failed"
    assert job.error_code == "deadline_exceeded"
    assert not list((roots.repos / "r1").glob("lock.*"))


def test_the_worker_adopts_and_reaps_orphans():
    """A process that is a subreaper adopts the orphans of its descendants (a borg whose worker
    died) and reaps them once they end; processes it forked itself are left alone."""
    script = textwrap.dedent(
        """
        import ctypes, multiprocessing, os, subprocess, sys, time
        from borgapp import procs

        def renamed_nap():  # a name of its own: only the forked-children rule protects it
            ctypes.CDLL(None).prctl(15, b"other-name", 0, 0, 0)  # PR_SET_NAME
            time.sleep(0.2)

        assert procs.become_subreaper(every=0.1)
        forked = multiprocessing.Process(target=renamed_nap)
        forked.start()
        # a middle process starts `sleep` and dies at once: sleep is orphaned
        start_sleep = (
            "import subprocess; print(subprocess.Popen(['sleep', '2'], "
            "stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).pid)"
        )
        middle = subprocess.run(
            [sys.executable, "-c", start_sleep], capture_output=True, text=True, check=True
        )
        orphan = int(middle.stdout)
        adopted = procs._stat(orphan)[2] == os.getpid()
        deadline = time.monotonic() + 20
        while os.path.exists(f"/proc/{orphan}") and time.monotonic() < deadline:
            time.sleep(0.1)  # sleep ends after 2 s; the reaper runs every 0.1 s
        reaped = not os.path.exists(f"/proc/{orphan}")
        forked_left = os.path.exists(f"/proc/{forked.pid}")  # a zombie until joined
        forked.join(10)
        print(adopted, reaped, forked_left, forked.exitcode)
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.stdout.split() == ["True", "True", "True", "0"], result.stderr
