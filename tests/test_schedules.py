"""Scheduling (REL-09, REL-10, REL-12, REL-17): the django-q2 mirror, exact run counts after
downtime, skips, retries, backup sets, verify-restore; a real qcluster where it matters."""

import json
import os
import re
import signal
import subprocess
import threading
import time
from datetime import timedelta
from zoneinfo import ZoneInfo

import pytest
from django.conf import settings
from django.utils import timezone
from django_q.brokers import get_broker
from django_q.models import Schedule as QSchedule
from django_q.scheduler import scheduler

from borgapp import jobs, reconcile, scheduling
from borgapp.models import Archive, Job, RetentionPolicy, Schedule
from borgapp.naming import prefix_glob
from tests.helpers import (
    PASSPHRASE,
    SLOW,
    borg_processes_by_repo,
    cli,
    client_for,
    empty_queue,
    make_repo,
    queued_tasks,
    random_tree,
    wait_for,
    write_files,
)

pytestmark = pytest.mark.django_db(transaction=True)


def mirror_of(schedule):
    return QSchedule.objects.get(name=scheduling.mirror_name(schedule.pk))


def add(name, *args):
    result = cli("borg_schedule", "add", name, *args)
    assert result.code == 0, result.err
    return Schedule.objects.get(name=name)


def time_travel(schedule, ago=timedelta(days=3)):
    """Pretend the scheduler has been down: the next run lies in the past."""
    QSchedule.objects.filter(name=scheduling.mirror_name(schedule.pk)).update(
        next_run=timezone.now() - ago
    )


def queued_funcs():
    return [task["func"] for task in queued_tasks()]


def test_a_new_schedule_gets_one_mirror_and_no_run(roots, passfile, tmp_path):
    make_repo(roots, passfile, "main")
    before = timezone.now()
    schedule = add(
        "nightly",
        "--repository", "main", "--operation", "backup", "--cron", "0 2 * * *",
        "--timezone", "Europe/Berlin", "--source", tmp_path,
    )  # fmt: skip
    mirror = mirror_of(schedule)
    assert QSchedule.objects.filter(func=scheduling.TASK).count() == 1
    local = mirror.next_run.astimezone(ZoneInfo("Europe/Berlin"))
    assert (local.hour, local.minute) == (2, 0)  # 02:00 in Berlin, stored in UTC
    assert before < mirror.next_run <= before + timedelta(days=1)
    assert mirror.repeats == -1 and mirror.cron == "0 2 * * *"
    assert not Job.objects.filter(schedule=schedule).exists()  # no run at creation (REL-10)
    assert schedule.cron_description == "At 02:00"
    # an edit that does not touch the timing keeps the pending run's time
    schedule.comment = "edited"
    schedule.save()
    assert mirror_of(schedule).next_run == mirror.next_run
    schedule.cron = "30 4 * * *"
    schedule.save()
    local = mirror_of(schedule).next_run.astimezone(ZoneInfo("Europe/Berlin"))
    assert (local.hour, local.minute) == (4, 30)
    assert cli("borg_schedule", "disable", "nightly").code == 0
    assert mirror_of(schedule).repeats == 0  # django-q2 skips repeats=0
    listed = json.loads(cli("borg_schedule", "list", "--json").out)
    assert listed[0]["enabled"] is False and listed[0]["next_run"] is None
    assert cli("borg_schedule", "enable", "nightly").code == 0
    listed = json.loads(cli("borg_schedule", "list", "--json").out)
    assert listed[0]["next_run"] and listed[0]["description"] == "At 04:30"
    assert cli("borg_schedule", "remove", "nightly").code == 0
    assert not QSchedule.objects.filter(func=scheduling.TASK).exists()


def test_bad_schedules_are_refused_with_a_reason_and_nothing_is_made(roots, passfile):
    make_repo(roots, passfile, "main")
    cases = [
        (["--cron", "61 * * * *"], "is not valid"),
        (["--cron", "0 2 * *"], "needs five fields"),
        (["--cron", "0 0 31 2 *"], "never matches a real date"),
        (["--cron", "0 2 * * *", "--timezone", "Mars/Olympus"], "unknown"),
        (["--cron", "0 2 * * *", "--prefix", "bad prefix"], "is not allowed"),
        (["--cron", "0 2 * * *", "--exclude", ""], "must not be empty"),
        (["--cron", "0 2 * * *", "--exclude", "re:[unclosed"], "unterminated character set"),
    ]
    for extra, reason in cases:
        result = cli(
            "borg_schedule", "add", "s", "--repository", "main", "--operation", "backup",
            "--source", "/etc", *extra,
        )  # fmt: skip
        assert result.code == 2 and reason in result.err, (extra, result.err)
    no_policy = cli(
        "borg_schedule", "add", "p", "--repository", "main", "--operation", "prune",
        "--cron", "0 3 * * 0",
    )  # fmt: skip
    assert no_policy.code == 2 and "needs a retention policy" in no_policy.err
    api = client_for("admin").post(
        "/api/v1/schedules/",
        {"name": "s", "repositories": ["main"], "operation": "check", "cron": "0 25 * * *"},
        format="json",
    )
    assert api.status_code == 400 and "cron" in api.json()["fields"]
    assert not Schedule.objects.exists()
    assert not QSchedule.objects.filter(func=scheduling.TASK).exists()


def test_after_days_of_downtime_a_schedule_runs_once(roots, passfile, tmp_path):
    """REL-10 with django-q2's own scheduler (catch_up off): one task, not one per slot."""
    make_repo(roots, passfile, "main")
    schedule = add(
        "hourly", "--repository", "main", "--operation", "compact", "--cron", "0 * * * *"
    )
    time_travel(schedule, timedelta(days=3))  # 72 missed slots
    empty_queue()
    broker = get_broker()
    scheduler(broker=broker)
    scheduler(broker=broker)
    assert queued_funcs().count(scheduling.TASK) == 1
    assert mirror_of(schedule).next_run > timezone.now()
    scheduling.run_due(schedule.pk)  # what the worker does with that task
    assert Job.objects.filter(schedule=schedule).count() == 1
    scheduler(broker=broker)
    assert queued_funcs().count(scheduling.TASK) == 1  # nothing more until the next slot


def test_a_run_whose_previous_run_is_still_queued_is_skipped_and_recorded(
    roots, passfile, tmp_path
):
    make_repo(roots, passfile, "a")
    make_repo(roots, passfile, "b")
    schedule = add(
        "both", "--repository", "a", "--repository", "b", "--operation", "check",
        "--cron", "0 3 * * *",
    )  # fmt: skip
    first = scheduling.run_due(schedule.pk)["jobs"]
    second = scheduling.run_due(schedule.pk)["jobs"]
    assert Job.objects.filter(pk__in=first, status="queued").count() == 2
    skipped = Job.objects.filter(pk__in=second)
    assert [j.status for j in skipped] == ["skipped", "skipped"]
    for job in skipped:
        previous = Job.objects.get(pk__in=first, repository=job.repository)
        assert job.error_message == f"The previous run (job {previous.pk}) is still queued."
    schedule.refresh_from_db()
    assert schedule.last_outcome == "skipped" and schedule.last_run_at is None


def test_a_paused_or_disabled_schedule_does_not_run(roots, passfile):
    make_repo(roots, passfile, "main")
    schedule = add("c", "--repository", "main", "--operation", "compact", "--cron", "* * * * *")
    schedule.paused_until = timezone.now() + timedelta(hours=5)
    schedule.save()
    assert mirror_of(schedule).next_run >= schedule.paused_until  # no slot inside the pause
    assert "paused" in scheduling.run_due(schedule.pk)["skipped"]
    schedule.paused_until = None
    schedule.enabled = False
    schedule.save()
    assert scheduling.run_due(schedule.pk) == {"skipped": "disabled"}
    assert not Job.objects.filter(schedule=schedule).exists()


def test_two_backup_sets_in_one_repository_prune_independently(roots, passfile, tmp_path):
    """REL-12: each set has its prefix and its prune schedule; pruning one keeps the other."""
    make_repo(roots, passfile, "main")
    src = random_tree(tmp_path / "src", 3, 1000)
    RetentionPolicy.objects.create(name="last1", keep_last=1)
    for name in ("seta", "setb"):
        add(f"{name}-backup", "--repository", "main", "--operation", "backup",
            "--cron", "0 2 * * *", "--source", src, "--prefix", name)  # fmt: skip
        add(f"{name}-prune", "--repository", "main", "--operation", "prune",
            "--cron", "0 3 * * *", "--prefix", name, "--policy", "last1")  # fmt: skip
    for _ in range(3):
        for name in ("seta", "setb"):
            assert cli("borg_schedule", "run", f"{name}-backup").code == 0
        time.sleep(1.1)  # archive names carry the second
    assert Archive.objects.filter(name__startswith="seta-").count() == 3
    preview = cli("borg_schedule", "run", "seta-prune", "--dry-run")
    assert preview.code == 0, preview.err
    assert preview.out.count("would be pruned: seta-") == 2
    assert "setb" not in preview.out
    assert Archive.objects.filter(name__startswith="seta-").count() == 3  # a dry run
    assert cli("borg_schedule", "run", "seta-prune").code == 0
    assert Archive.objects.filter(name__startswith="seta-").count() == 1
    assert Archive.objects.filter(name__startswith="setb-").count() == 3
    job = Job.objects.filter(kind="prune", schedule__name="seta-prune").latest("pk")
    assert job.result["compacted"] is True
    assert job.result["globs"] == [prefix_glob("seta")]
    assert all(name.startswith("seta-") for name in job.result["pruned"])


def test_transient_failures_are_retried_with_a_growing_wait(roots, passfile, settings):
    """A lock held outside the app (borg with-lock) makes a scheduled check fail with a lock
    timeout: it is retried later, with a longer wait each time, up to the limit."""
    settings.BORG_LOCK_WAIT = 1
    settings.SCHEDULE_RETRIES = 2
    settings.SCHEDULE_RETRY_WAIT = 60
    repo = make_repo(roots, passfile, "main")
    schedule = add("chk", "--repository", "main", "--operation", "check", "--cron", "0 3 * * *")
    holder = subprocess.Popen(
        [os.path.join(os.path.dirname(os.sys.executable), "borg"), "with-lock",
         repo.location, "sleep", "60"],
        env={**roots.env, "BORG_PASSPHRASE": PASSPHRASE},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_for(lambda: (roots.repos / "main" / "lock.exclusive").exists(), 30)
        first = Job.objects.get(pk=scheduling.run_due(schedule.pk)["jobs"][0])
        jobs.run_queued(first.pk)
        first.refresh_from_db()
        assert (first.status, first.error_code) == ("failed", "lock_timeout")
        retry = Job.objects.get(retry_of=first)
        assert retry.attempt == 2 and retry.status == "queued"
        wait = (retry.not_before - first.finished_at).total_seconds()
        assert 59 <= wait <= 61
        assert not jobs.claim(retry)  # not before its time
        assert reconcile.dispatch_due() == 0
        Job.objects.filter(pk=retry.pk).update(not_before=timezone.now())
        jobs.run_queued(retry.pk)
        retry.refresh_from_db()
        assert retry.error_code == "lock_timeout"
        third = Job.objects.get(retry_of=retry)
        assert third.attempt == 3
        assert 119 <= (third.not_before - retry.finished_at).total_seconds() <= 121
        Job.objects.filter(pk=third.pk).update(not_before=timezone.now())
        jobs.run_queued(third.pk)
        assert not Job.objects.filter(retry_of=third).exists()  # the limit is reached
    finally:
        holder.kill()
        holder.wait()
    # a refusal that no wait can fix is never retried
    repo.set_passphrase("not the passphrase")
    repo.save()
    job = Job.objects.get(pk=scheduling.run_due(schedule.pk)["jobs"][0])
    jobs.run_queued(job.pk)
    job.refresh_from_db()
    assert job.error_code == "wrong_passphrase"
    assert not Job.objects.filter(retry_of=job).exists()


# --- verify-restore (REL-17) -------------------------------------------------------------------


def test_verify_restore_passes_then_names_a_changed_file_and_a_damaged_one(
    roots, passfile, tmp_path
):
    make_repo(roots, passfile, "main")
    src = write_files(
        tmp_path / "src",
        {"small.txt": "hello", "docs/b.txt": "bee", "big1.bin": os.urandom(1_000_000)},
    )
    add("nightly", "--repository", "main", "--operation", "backup", "--cron", "0 2 * * *",
        "--source", src, "--prefix", "vr")  # fmt: skip
    add("verify", "--repository", "main", "--operation", "verify-restore",
        "--cron", "0 5 * * 0", "--prefix", "vr", "--sample-files", "50")  # fmt: skip
    assert cli("borg_schedule", "run", "nightly").code == 0
    ok = cli("borg_schedule", "run", "verify", "--json")
    assert ok.code == 0, ok.out + ok.err
    result = json.loads(ok.out)[0]["result"]
    assert result["sampled"] == 3 and result["problems"] == []
    assert result["bytes"] == 1_000_000 + 5 + 3
    assert not any((roots.restore / ".verify").iterdir())  # the sandbox is cleaned up
    # a source file changed after the backup
    (src / "docs" / "b.txt").write_text("changed")
    changed = cli("borg_schedule", "run", "verify", "--json")
    assert changed.code == 2
    job = Job.objects.filter(kind="verify_restore").latest("pk")
    assert job.status == "failed" and job.error_code == "verify_failed"
    assert f"{str(src).lstrip('/')}/docs/b.txt: differs from the source as it is now" in (
        job.error_message
    )
    assert job.result["problems"] == [
        {
            "path": f"{str(src).lstrip('/')}/docs/b.txt",
            "problem": "differs from the source as it is now",
        }
    ]
    (src / "docs" / "b.txt").write_text("bee")
    # a damaged chunk in the repository: flip a byte inside the big file's data
    segments = sorted(
        (roots.repos / "main" / "data").rglob("[0-9]*"), key=lambda p: p.stat().st_size
    )
    segment = segments[-1]
    data = bytearray(segment.read_bytes())
    data[len(data) // 2] ^= 0xFF
    segment.write_bytes(bytes(data))
    damaged = cli("borg_schedule", "run", "verify")
    assert damaged.code == 2
    job = Job.objects.filter(kind="verify_restore").latest("pk")
    assert job.error_code == "verify_failed"
    problems = job.result["problems"]
    assert [p["path"] for p in problems] == [f"{str(src).lstrip('/')}/big1.bin"]
    assert problems[0]["problem"].startswith("damaged in the repository")


# --- a real django-q2 cluster ------------------------------------------------------------------


@pytest.mark.slow
def test_a_due_schedule_runs_through_a_real_qcluster_once(roots, passfile, tmp_path, workers):
    make_repo(roots, passfile, "main")
    src = random_tree(tmp_path / "src", 3, 10_000)
    schedule = add("nightly", "--repository", "main", "--operation", "backup",
                   "--cron", "0 2 * * *", "--source", src, "--prefix", "nightly")  # fmt: skip
    time_travel(schedule)
    workers()
    # django-q2's scheduler looks every 30 s
    job = wait_for(
        lambda: Job.objects.filter(schedule=schedule, status__in=Job.FINISHED).first(),
        timeout=120,
        interval=0.5,
    )
    assert job.status == "succeeded", job.error_message
    assert job.trigger == "schedule"
    archive = Archive.objects.get(repository__name="main")
    assert archive.name.startswith("nightly-") and archive.nfiles == 3
    time.sleep(31)  # another scheduler pass: the slot is in the future now
    assert Job.objects.filter(schedule=schedule).count() == 1  # exactly one run
    schedule.refresh_from_db()
    assert schedule.last_outcome == "succeeded" and schedule.last_success_at is not None
    assert mirror_of(schedule).next_run > timezone.now()


@pytest.mark.slow
def test_one_schedule_on_two_repositories_runs_in_parallel_two_on_one_never(
    roots, passfile, tmp_path, workers
):
    for name in ("a", "b"):
        make_repo(roots, passfile, name)
    src = random_tree(tmp_path / "src", 20, 500_000)
    both = add("both", "--repository", "a", "--repository", "b", "--operation", "backup",
               "--cron", "0 2 * * *", "--source", src, "--prefix", "both",
               "--compression", SLOW)  # fmt: skip
    first = add("first", "--repository", "a", "--operation", "backup", "--cron", "0 2 * * *",
                "--source", src, "--prefix", "first", "--compression", SLOW)  # fmt: skip
    second = add("second", "--repository", "a", "--operation", "backup", "--cron", "0 2 * * *",
                 "--source", src, "--prefix", "second", "--compression", SLOW)  # fmt: skip
    watch = [str(roots.repos / "a"), str(roots.repos / "b")]
    peaks = {path: 0 for path in watch}
    together = []
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            found = borg_processes_by_repo(watch)
            for path, processes in found.items():
                peaks[path] = max(peaks[path], len(processes))
            if all(found.values()):
                together.append(time.monotonic())
            time.sleep(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    workers()
    try:
        made = scheduling.run_due(both.pk)["jobs"]
        wait_for(
            lambda: Job.objects.filter(pk__in=made, status__in=Job.FINISHED).count() == 2, 300, 0.5
        )
        assert together, "the two repositories never ran at the same time"
        made = scheduling.run_due(first.pk)["jobs"] + scheduling.run_due(second.pk)["jobs"]
        wait_for(
            lambda: Job.objects.filter(pk__in=made, status__in=Job.FINISHED).count() == 2, 300, 0.5
        )
    finally:
        stop.set()
        sampler.join()
    assert peaks[watch[0]] == 1 and peaks[watch[1]] == 1
    runs = Job.objects.filter(schedule__in=[both, first, second])
    assert sorted(j.status for j in runs) == ["succeeded"] * 4
    on_a = sorted((j.started_at, j.finished_at) for j in runs.filter(schedule__in=[first, second]))
    assert on_a[0][1] <= on_a[1][0]  # one after the other


@pytest.mark.slow
def test_worker_killed_mid_scheduled_backup(roots, passfile, tmp_path, workers):
    """REL-01, REL-09, REL-14: kill -9 of the whole worker mid-backup; the run ends
    interrupted, no second borg starts for it, the next scheduled run succeeds."""
    repo = make_repo(roots, passfile, "main")
    src = random_tree(tmp_path / "src", 40, 1_000_000)
    schedule = add("nightly", "--repository", "main", "--operation", "backup",
                   "--cron", "0 2 * * *", "--source", src, "--prefix", "nightly",
                   "--compression", SLOW)  # fmt: skip
    time_travel(schedule)
    cluster = workers()
    running = wait_for(
        lambda: Job.objects.filter(
            schedule=schedule, status="running", borg_pid__isnull=False
        ).first(),
        timeout=120,
        interval=0.5,
    )
    os.killpg(cluster.pid, signal.SIGKILL)  # sentinel, workers, everything but borg's session
    cluster.wait()
    workers()  # the restart reconciles: the run is interrupted, its borg stopped
    wait_for(lambda: Job.objects.get(pk=running.pk).status == "interrupted", 60, 0.5)
    wait_for(lambda: not borg_processes_by_repo([repo.location])[repo.location], 60, 0.2)
    for path in src.iterdir():
        if path.name != "f0000":
            path.unlink()
    time_travel(schedule, timedelta(minutes=1))
    nxt = wait_for(
        lambda: Job.objects.filter(schedule=schedule, status__in=["succeeded", "failed"]).first(),
        timeout=120,
        interval=0.5,
    )
    assert nxt.status == "succeeded", nxt.error_message
    statuses = sorted(Job.objects.filter(schedule=schedule).values_list("status", flat=True))
    assert statuses == ["interrupted", "succeeded"]  # no second borg for the killed run
    assert settings.Q_CLUSTER["max_attempts"] == 1 and settings.Q_CLUSTER["catch_up"] is False


def test_sync_schedules_repairs_the_mirror_and_keeps_a_pending_run(roots, passfile):
    make_repo(roots, passfile, "main")
    kept = add("kept", "--repository", "main", "--operation", "compact", "--cron", "0 4 * * *")
    lost = add("lost", "--repository", "main", "--operation", "compact", "--cron", "0 5 * * *")
    time_travel(kept, timedelta(minutes=5))  # due: a repair must not swallow this run
    due = mirror_of(kept).next_run
    QSchedule.objects.filter(name=scheduling.mirror_name(lost.pk)).delete()
    QSchedule.objects.create(name="opscenter-schedule-999", func=scheduling.TASK, args="999")
    QSchedule.objects.create(
        name=scheduling.mirror_name(kept.pk), func=scheduling.TASK, args=str(kept.pk)
    )  # a duplicate
    assert len(scheduling.out_of_sync()) == 3
    result = cli("sync_schedules", "--json")
    assert json.loads(result.out) == {"schedules": 2, "repaired": 2, "removed": 1}
    assert scheduling.out_of_sync() == []
    assert QSchedule.objects.filter(func=scheduling.TASK).count() == 2
    assert mirror_of(kept).next_run == due
    assert mirror_of(lost).next_run > timezone.now()


def test_run_now_from_the_api_and_the_admin(roots, passfile, tmp_path, client):
    from django.contrib.auth.models import User

    make_repo(roots, passfile, "main")
    RetentionPolicy.objects.create(name="last1", keep_last=1)
    schedule = add("chk", "--repository", "main", "--operation", "check", "--cron", "0 3 * * *")
    prune = add("p", "--repository", "main", "--operation", "prune", "--cron", "0 3 * * *",
                "--prefix", "x", "--policy", "last1")  # fmt: skip
    viewer, operator = client_for("viewer"), client_for("operator")
    assert viewer.post(f"/api/v1/schedules/{schedule.pk}/run/").status_code == 403
    response = operator.post(f"/api/v1/schedules/{schedule.pk}/run/")
    assert response.status_code == 202
    [job] = response.json()["jobs"]
    assert (job["kind"], job["repository_name"], job["trigger"]) == ("check", "main", "api")
    again = operator.post(f"/api/v1/schedules/{schedule.pk}/run/").json()["jobs"]
    assert again[0]["status"] == "skipped"  # the first is still queued
    assert operator.post(f"/api/v1/schedules/{schedule.pk}/dry-run/").status_code == 400
    dry = operator.post(f"/api/v1/schedules/{prune.pk}/dry-run/").json()["jobs"]
    assert Job.objects.get(pk=dry[0]["id"]).params["dry_run"] is True
    body = viewer.get(f"/api/v1/schedules/{schedule.pk}/").json()
    assert body["cron_description"] == "At 03:00" and body["next_run"]
    admin = User.objects.create_superuser("root", password="x" * 20)
    client.force_login(admin)
    Job.objects.filter(schedule=schedule).update(status="succeeded")
    page = client.post(
        "/admin/borgapp/schedule/",
        {"action": "run_now", "_selected_action": [schedule.pk]},
        follow=True,
    )
    assert page.status_code == 200
    latest = Job.objects.filter(schedule=schedule).latest("pk")
    assert latest.trigger == "admin" and latest.status == "queued"
    text = re.sub(r"<[^>]+>", "", page.content.decode())
    assert f"Chk: main: job {latest.pk} queued" in text  # capitalised by the admin


def test_a_policy_in_use_cannot_be_deleted(roots, passfile):
    make_repo(roots, passfile, "main")
    policy = RetentionPolicy.objects.create(name="last1", keep_last=1)
    add("p", "--repository", "main", "--operation", "prune", "--cron", "0 3 * * *",
        "--prefix", "x", "--policy", "last1")  # fmt: skip
    response = client_for("admin").delete(f"/api/v1/retention-policies/{policy.pk}/")
    assert response.status_code == 409
    assert response.json() == {
        "success": False,
        "error": "in_use",
        "message": "Still in use by: p. Change or remove those first.",
    }
    removed = cli("borg_policy", "remove", "last1")
    assert removed.code == 2 and "used by: p" in removed.err
    assert RetentionPolicy.objects.filter(pk=policy.pk).exists()
