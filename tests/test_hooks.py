"""Hooks around a schedule's jobs, end to end with real borg and real programs: the order they
run in, what a failure does, the timeout, and that no secret reaches a hook."""

import json
import time
from pathlib import Path

import pytest
from django.conf import settings

from borgapp.models import Archive, Job, Repository, Schedule
from tests.helpers import PASSPHRASE, cli, write_files

pytestmark = pytest.mark.django_db


def script(path: Path, body: str) -> str:
    """An executable shell script (the hook is the program; no shell runs the command)."""
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)
    return str(path)


@pytest.fixture
def marks(tmp_path):
    """A hook that appends its stage and the job's facts to a file, and prints a line."""
    log = tmp_path / "marks.log"
    recorder = script(
        tmp_path / "mark",
        f'echo "$OPSCENTER_HOOK $OPSCENTER_OUTCOME $OPSCENTER_ARCHIVE $1" >> {log}\n'
        'echo "hook $OPSCENTER_HOOK says hello"\n',
    )
    return log, recorder


def backup_schedule(src, **hooks) -> Schedule:
    schedule = Schedule(
        name="nightly", operation="backup", cron="0 2 * * *", source_paths=[str(src)],
        archive_prefix="files", **hooks,
    )  # fmt: skip
    schedule.full_clean()
    schedule.save()
    schedule.repositories.set(Repository.objects.filter(name="main"))
    return schedule


def run(name="nightly"):
    result = cli("borg_schedule", "run", name)
    return result, Job.objects.filter(kind="backup").latest("pk")


def test_hooks_run_in_order_around_a_successful_backup(repo, tmp_path, marks):
    log, mark = marks
    src = write_files(tmp_path / "src", {"a.txt": "alpha"})
    backup_schedule(
        src,
        hooks_before=[f"{mark} first", f"{mark} 'second one'"],
        hooks_after_success=[f"{mark} ok"],
        hooks_after_failure=[f"{mark} bad"],
        hooks_always_after=[f"{mark} last"],
    )
    result, job = run()
    assert result.code == 0, result.err
    archive = Archive.objects.get(repository=repo).name
    assert log.read_text().splitlines() == [
        "before   first",  # no outcome and no archive yet
        "before   second one",  # quoted: one argument, as a shell would split it
        f"after_success succeeded {archive} ok",
        f"always_after succeeded {archive} last",
    ]
    assert [entry["name"] for entry in job.hook_log] == [
        "before hook 1 (mark)", "before hook 2 (mark)", "after-success hook 1 (mark)",
        "always-after hook 1 (mark)",
    ]  # fmt: skip
    assert job.hook_log[0]["output"] == ["hook before says hello"]
    assert all(entry["exit"] == 0 for entry in job.hook_log)


def test_a_failing_before_hook_stops_borg_and_the_after_hooks_still_run(repo, tmp_path, marks):
    log, mark = marks
    src = write_files(tmp_path / "src", {"a.txt": "alpha"})
    broken = script(tmp_path / "stop-db", 'echo "cannot stop the database: busy"\nexit 3\n')
    backup_schedule(
        src,
        hooks_before=[broken, f"{mark} never"],
        hooks_after_success=[f"{mark} ok"],
        hooks_after_failure=[f"{mark} bad"],
        hooks_always_after=[f"{mark} last"],
    )
    result, job = run()
    assert result.code == 2
    assert (job.status, job.error_code) == ("failed", "hook_failed")
    assert "before hook 1 (stop-db) exited with 3: borg did not run" in job.error_message
    assert "cannot stop the database: busy" in job.error_message
    assert not Archive.objects.filter(repository=repo).exists()  # borg never ran
    assert log.read_text().splitlines() == [
        "after_failure failed  bad",
        "always_after failed  last",
    ]
    page = cli("borg_jobs", "--json").out
    assert "hook_failed" in page


def test_a_failing_after_hook_turns_success_into_a_warning(repo, tmp_path, marks):
    _, mark = marks
    src = write_files(tmp_path / "src", {"a.txt": "alpha"})
    backup_schedule(src, hooks_after_success=[script(tmp_path / "notify", "exit 1\n")],
                    hooks_always_after=[f"{mark} last"])  # fmt: skip
    result, job = run()
    assert result.code == 1  # a warning
    assert job.status == "warning"
    assert "after-success hook 1 (notify) exited with 1" in job.error_message
    assert Archive.objects.filter(repository=repo).count() == 1  # the backup itself is good
    assert job.hook_log[-1]["name"] == "always-after hook 1 (mark)"  # the rest still ran


def test_a_hanging_hook_is_killed_at_its_timeout(repo, tmp_path, marks):
    log, mark = marks
    src = write_files(tmp_path / "src", {"a.txt": "alpha"})
    pidfile = tmp_path / "sleeper.pid"
    # the hook starts a child of its own that would outlive it: the whole group goes
    hang = script(tmp_path / "hang", f"sleep 600 &\necho $! > {pidfile}\nwait\n")
    backup_schedule(src, hooks_before=[hang], hooks_always_after=[f"{mark} last"], hook_timeout=2)
    started = time.monotonic()
    result, job = run()
    assert time.monotonic() - started < 30
    assert (job.status, job.error_code) == ("failed", "hook_failed")
    assert "before hook 1 (hang) was stopped at its timeout after 2 s" in job.error_message
    assert job.hook_log[0]["timed_out"] is True
    child = int(pidfile.read_text())
    time.sleep(0.2)
    assert not Path(f"/proc/{child}").exists() or "Z" in _state(child)
    assert log.read_text().splitlines() == ["always_after failed  last"]
    assert not Archive.objects.filter(repository=repo).exists()


def _state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


def test_no_secret_reaches_a_hook_or_its_stored_output(repo, tmp_path, monkeypatch):
    """The hook sees the job's facts, never the passphrase or the app's encryption key: not in
    its environment, not in its argv; and what it prints is masked before it is kept."""
    monkeypatch.setenv("BORG_PASSPHRASE", PASSPHRASE)  # as a careless worker might have it
    monkeypatch.setenv("BORG_ENCRYPTION_KEY", settings.BORG_ENCRYPTION_KEYS[0])
    src = write_files(tmp_path / "src", {"a.txt": "alpha"})
    seen = tmp_path / "seen"
    spy = script(
        tmp_path / "spy",
        f"env > {seen}/env\ncat /proc/$$/cmdline > {seen}/argv\n"
        f"echo 'the passphrase might be {PASSPHRASE}'\necho password=hunter2\n",
    )
    seen.mkdir()
    backup_schedule(src, hooks_before=[spy], hooks_always_after=[spy])
    result, job = run()
    assert result.code == 0, result.err
    env = (seen / "env").read_text()
    assert PASSPHRASE not in env and settings.BORG_ENCRYPTION_KEYS[0] not in env
    assert "BORG_" not in env
    assert "OPSCENTER_REPOSITORY=main" in env and f"OPSCENTER_JOB_ID={job.pk}" in env
    assert PASSPHRASE not in (seen / "argv").read_text()
    stored = json.dumps(job.hook_log) + job.log_tail + job.error_message
    assert PASSPHRASE not in stored and "hunter2" not in stored
    assert "the passphrase might be ***" in stored


def test_a_manual_backup_with_a_schedules_settings_runs_its_hooks(client, repo, tmp_path, marks):
    from tests.helpers import staff, worker_runs

    log, mark = marks
    src = write_files(tmp_path / "src", {"a.txt": "alpha"})
    schedule = backup_schedule(src, hooks_before=[f"{mark} manual"])
    client.force_login(staff("operator"))
    posted = client.post(
        f"/admin/borgapp/repository/{repo.pk}/backup/",
        {"schedule": schedule.pk, "prefix": "manual", "compression": "lz4"},
    )
    assert posted.status_code == 302, posted.content.decode()[-3000:]
    job = worker_runs(Job.objects.filter(kind="backup").latest("pk").pk)
    assert job.status == "succeeded"
    assert log.read_text().splitlines() == ["before   manual"]


def test_a_typo_in_a_hook_is_refused_when_saved(repo, tmp_path):
    src = write_files(tmp_path / "src", {"a.txt": "alpha"})
    refused = cli(
        "borg_schedule", "add", "nightly", "--repository", "main", "--operation", "backup",
        "--cron", "0 2 * * *", "--source", src, "--before", "dokcer stop db",
    )  # fmt: skip
    assert refused.code == 2
    assert "Hook program 'dokcer' is not found on this server's PATH" in refused.err
    assert not Schedule.objects.exists()
    unclosed = cli(
        "borg_schedule", "add", "nightly", "--repository", "main", "--operation", "backup",
        "--cron", "0 2 * * *", "--source", src, "--before", "true 'unclosed",
    )  # fmt: skip
    assert unclosed.code == 2 and "cannot be split" in unclosed.err

    added = cli(
        "borg_schedule", "add", "nightly", "--repository", "main", "--operation", "backup",
        "--cron", "0 2 * * *", "--source", src, "--before", "echo hi ; rm -rf /",
        "--hook-timeout", "30",
    )  # fmt: skip
    assert added.code == 0, added.err
    schedule = Schedule.objects.get()
    # `;` is an argument, not a shell's separator: echo prints it
    assert schedule.hooks_before == [["echo", "hi", ";", "rm", "-rf", "/"]]
    shown = json.loads(cli("borg_schedule", "hooks", "nightly", "--json").out)
    assert shown["before"] == [["echo", "hi", ";", "rm", "-rf", "/"]] and shown["timeout"] == 30
    assert cli("borg_schedule", "hooks", "nightly", "--clear").code == 0
    assert Schedule.objects.get().has_hooks is False


# --- who sees and writes hooks -----------------------------------------------------------------

ROLES = ["viewer", "operator", "admin"]


def test_the_api_shows_hooks_to_admins_and_writes_them_for_nobody(repo, tmp_path):
    from tests.helpers import client_for

    src = write_files(tmp_path / "src", {"a.txt": "alpha"})
    schedule = backup_schedule(src, hooks_before=["/usr/bin/env true"], hook_timeout=42)
    url = f"/api/v1/schedules/{schedule.pk}/"
    clients = {role: client_for(role) for role in ROLES}
    for role, client in clients.items():
        shown = client.get(url).json()["hooks"]
        if role == "admin":
            assert shown["before"] == [["/usr/bin/env", "true"]] and shown["timeout"] == 42
        else:
            assert shown is None
        for body in (
            {"hooks_before": [["/bin/sh", "-c", "id > /tmp/pwned"]]},
            {"hooks": {"before": [["/bin/sh"]]}},
            {"hook_timeout": 1},
        ):
            answer = client.patch(url, body, format="json")
            assert answer.status_code == (400 if role == "admin" else 403), (role, body)
            if role == "admin":
                assert "the API does not write them" in json.dumps(answer.json())
        created = client.post(
            "/api/v1/schedules/",
            {"name": f"sneaky-{role}", "repositories": ["main"], "operation": "backup",
             "cron": "0 2 * * *", "source_paths": [str(src)],
             "hooks_always_after": [["/bin/sh", "-c", "id"]]},
            format="json",
        )  # fmt: skip
        assert created.status_code in (400, 403)
    schedule.refresh_from_db()
    assert schedule.hooks_before == [["/usr/bin/env", "true"]] and schedule.hook_timeout == 42
    assert Schedule.objects.count() == 1
    schema = clients["viewer"].get("/api/schema/?format=json").content.decode()
    assert "never through the API" in schema and "refused with 400" in schema


def test_admins_edit_hooks_in_the_admin_and_others_see_only_a_count(client, repo, tmp_path):
    from tests.helpers import staff

    src = write_files(tmp_path / "src", {"a.txt": "alpha"})
    schedule = backup_schedule(src)
    client.force_login(staff("admin"))
    page = client.get(f"/admin/borgapp/schedule/{schedule.pk}/change/").content.decode()
    assert 'name="hooks_before"' in page
    form = {
        "name": "nightly", "repositories": [repo.pk], "operation": "backup",
        "cron": "0 2 * * *", "timezone": "UTC", "enabled": "on", "source_paths": str(src),
        "archive_prefix": "files", "compression": "lz4", "compact_after_prune": "on",
        "check_scope": "both", "sample_files": 20, "sample_max_bytes": 1000,
        "hooks_before": "/usr/bin/env docker-stop 'the db'\n\n", "hooks_always_after": "true",
        "hook_timeout": 60,
    }  # fmt: skip
    saved = client.post(f"/admin/borgapp/schedule/{schedule.pk}/change/", form)
    assert saved.status_code == 302, saved.content.decode()[-2000:]
    schedule.refresh_from_db()
    assert schedule.hooks_before == [["/usr/bin/env", "docker-stop", "the db"]]
    assert schedule.hooks_always_after == [["true"]] and schedule.hook_timeout == 60
    page = client.get(f"/admin/borgapp/schedule/{schedule.pk}/change/").content.decode()
    assert "/usr/bin/env docker-stop &#x27;the db&#x27;" in page  # shown as it was typed

    typo = client.post(f"/admin/borgapp/schedule/{schedule.pk}/change/",
                       {**form, "hooks_before": "/usr/bin/dokcer stop db"})  # fmt: skip
    assert typo.status_code == 200
    assert "/usr/bin/dokcer does not exist or is not executable" in typo.content.decode()
    schedule.refresh_from_db()
    assert schedule.hooks_before == [["/usr/bin/env", "docker-stop", "the db"]]

    for role in ("viewer", "operator"):
        client.force_login(staff(role))
        page = client.get(f"/admin/borgapp/schedule/{schedule.pk}/change/").content.decode()
        assert "docker-stop" not in page
        assert "1 before, 1 always-after (shown to admins)" in page
