"""The fleet's first part (issue 15): hosts enroll with a one-time token, agents run as their
own processes with their own data folders, take only their host's backups, run borg there and
report; the passphrase travels only in the answer that hands a job to its agent."""

import json
import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
from django.utils import timezone

from tests.helpers import PASSPHRASE, ROOT, cli, stop_process, wait_for, write_files

pytestmark = pytest.mark.django_db(transaction=True)
BORG = str(ROOT / ".venv" / "bin" / "borg")
CANARY = "canary-Passphrase-7f3c91"


def post(client, path, data, credential=None):
    headers = {"HTTP_AUTHORIZATION": f"Agent {credential}"} if credential else {}
    return client.post(f"/agent/v1/{path}", json.dumps(data), "application/json", **headers)


def test_tokens_and_credentials(client):
    from borgapp import fleet
    from borgapp.models import Host

    host, token = fleet.add_host("web1")
    assert host.state == "pending" and token not in host.token_hash
    refused = post(client, "enroll", {"token": "not-the-token"})
    assert refused.status_code == 401
    Host.objects.filter(pk=host.pk).update(token_expires=timezone.now() - timedelta(seconds=1))
    expired = post(client, "enroll", {"token": token})
    assert expired.status_code == 401 and expired.json() == refused.json()  # says no more
    token = fleet.issue_token(host)
    answer = post(client, "enroll", {"token": token, "agent_version": "t", "borg_version": "1"})
    assert answer.status_code == 200
    credential = answer.json()["credential"]
    assert answer["Cache-Control"] == "no-store"
    host.refresh_from_db()
    assert host.state == "active" and host.credential_hash == fleet.digest(credential)
    assert post(client, "enroll", {"token": token}).status_code == 401  # used once
    assert post(client, "poll", {"wait": 0}, credential).status_code == 204
    assert post(client, "poll", {"wait": 0}, "a-guess").status_code == 401
    assert (
        client.get("/api/v1/repositories/", HTTP_AUTHORIZATION=f"Agent {credential}").status_code
        == 401
    )
    assert (
        client.get("/api/v1/repositories/", HTTP_AUTHORIZATION=f"Token {credential}").status_code
        == 401
    )
    fleet.revoke(host)
    assert post(client, "poll", {"wait": 0}, credential).status_code == 401
    assert post(client, "enroll", {"token": token}).status_code == 401


def test_a_hosts_job_is_never_run_by_the_center(repo, roots, tmp_path):
    from borgapp import fleet, intake, jobs
    from borgapp.models import Job

    host, _ = fleet.add_host("web1")
    refused = cli("borg_backup", "main", "--source", tmp_path, "--host", "web1")
    assert refused.code == 2 and "waiting for its agent" in refused.err.lower()
    host.state = "active"
    host.save()
    job = intake.start("backup", repo, {"sources": [str(tmp_path)]}, trigger="cli", host=host)
    jobs.run_queued(job.pk)  # what a worker of the center would do with it
    job.refresh_from_db()
    assert job.status == Job.Status.QUEUED
    jobs.dispatch_next(repo.pk)
    assert Job.objects.get(pk=job.pk).status == Job.Status.QUEUED
    with pytest.raises(Exception, match="prune, compact, check and syncs run on the center"):
        intake.start("check", repo, {}, trigger="cli", host=host)


def a_repository(roots, tmp_path):
    from borgapp.models import Repository

    made = cli("borg_init", "r", "--location", roots.repos / "r", "--passphrase-file",
               write_files(tmp_path / "s", {"pw": PASSPHRASE}) / "pw")  # fmt: skip
    assert made.code == 0, made.err
    return Repository.objects.get(name="r")


def slow_source(tmp_path):
    """64 MiB that do not compress: with lzma a backup runs for seconds (time to act)."""
    src = tmp_path / "src"
    src.mkdir()
    for index in range(8):
        (src / f"big-{index}.bin").write_bytes(os.urandom(8 * 2**20))
    return src


def ended_job(job, timeout=60):
    """The job once its agent has reported its end."""
    from borgapp.models import Job

    return wait_for(
        lambda: Job.objects.filter(pk=job.pk).exclude(status__in=["queued", "running"]).first(),
        timeout=timeout,
    )


def agent_env():
    env = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/root"),
           "BORG_BINARY": BORG, "PYTHONPATH": str(ROOT)}  # fmt: skip
    return env


def start_agent(url, name, data, log, rsh=None, options=()):
    from borgapp import fleet

    _, token = fleet.add_host(name)
    enrolled = subprocess.run(
        [sys.executable, "-m", "agent", "enroll", "--center", url, "--data", data],
        input=token + "\n", env=agent_env(), cwd=ROOT, capture_output=True, text=True,
        timeout=60,
    )  # fmt: skip
    assert enrolled.returncode == 0, enrolled.stderr
    assert oct(os.stat(data / "credential").st_mode & 0o777) == "0o600"
    handle = open(log, "wb")  # noqa: SIM115 (the agent writes to it while it runs)
    env = {**agent_env(), **({"BORG_RSH": rsh} if rsh else {})}
    return subprocess.Popen(
        [sys.executable, "-m", "agent", "run", "--data", data, "--wait", "2", *options],
        env=env, cwd=ROOT, stdout=handle, stderr=subprocess.STDOUT,
    )  # fmt: skip


def test_agents_back_up_their_own_hosts(roots, tmp_path, web_server, sshd, settings):
    """Three agents, each its own process, data folder and identity, back up their own
    sources at once, two into a local repository and one into an ssh repository through its
    own append-only key; each archive holds its host's files only; the canary passphrase is
    nowhere on the agents' side."""
    from borgapp import fleet, intake
    from borgapp.models import Archive, Host, Job, Repository

    url, _ = web_server
    settings.BORG_RSH = sshd["rsh"]  # the center's own key, for the ssh repository's init
    passfile = write_files(tmp_path / "secret", {"pw": CANARY}) / "pw"
    offsite = f"ssh://root@127.0.0.1:{sshd['port']}{sshd['home']}/repos/offsite"
    for name, location in (("fleet", roots.repos / "fleet"), ("offsite", offsite)):
        made = cli("borg_init", name, "--location", location, "--passphrase-file", passfile)
        assert made.code == 0, made.err
    repo = Repository.objects.get(name="fleet")
    repos = {"web1": repo, "db1": repo, "mail1": Repository.objects.get(name="offsite")}
    known = f"-oStrictHostKeyChecking=yes -oUserKnownHostsFile={sshd['home']}/known_hosts"
    agents, made_jobs = {}, {}
    for name in repos:
        data = tmp_path / f"agent-{name}"
        src = write_files(tmp_path / f"host-{name}" / "srv", {f"{name}.txt": f"data of {name}",
                                                              "common/x.conf": name})  # fmt: skip
        proc = start_agent(url, name, data, tmp_path / f"{name}.log",
                           rsh=f"ssh -oBatchMode=yes {known}")  # fmt: skip
        agents[name] = (proc, data, src)
    line = fleet.authorized_keys_line(Host.objects.get(name="mail1"), offsite)
    with open(sshd["home"] / "authorized_keys", "a") as handle:
        handle.write(line.replace("borg serve", f"{BORG} serve") + "\n")
    try:
        for name, (_, _, src) in agents.items():
            host = Host.objects.get(name=name)
            assert host.state == "active" and host.borg_version.startswith("1.")
            made_jobs[name] = intake.start("backup", repos[name], {"sources": [str(src)],
                                           "prefix": name}, trigger="cli", host=host)  # fmt: skip
        for name, job in made_jobs.items():
            done = ended_job(job, timeout=120)
            assert done.status == "succeeded", (done.error_message, done.log_tail)
            assert done.worker_host == f"agent:{name}"
            archive = Archive.objects.get(name=done.result["archive_name"])
            assert archive.nfiles == 2
            env = {**roots.env, "BORG_PASSPHRASE": CANARY, "BORG_RSH": sshd["rsh"]}
            listed = subprocess.run(
                [BORG, "list", "--short", f"{repos[name].location}::{archive.name}"],
                env=env, capture_output=True, text=True, check=True,
            ).stdout  # fmt: skip
            assert f"{name}.txt" in listed
            assert all(f"{other}.txt" not in listed for other in repos if other != name)
        # restores run on the right host, into its agent's own restore root only
        web1 = Host.objects.get(name="web1")
        archive = Job.objects.get(pk=made_jobs["web1"].pk).result["archive_name"]
        target = tmp_path / "agent-web1" / "restore" / "back"
        restore = intake.start("extract", repo, {"archive": archive, "target": str(target)},
                               trigger="cli", host=web1)  # fmt: skip
        ended = ended_job(restore, timeout=60)
        assert ended.status == "succeeded", ended.error_message
        assert ended.result["files"] == 2 and ended.worker_host == "agent:web1"
        src = agents["web1"][2]
        assert (target / str(src).lstrip("/") / "web1.txt").read_text() == "data of web1"
        outside = intake.start("extract", repo, {"archive": archive, "target": "/etc/nope"},
                               trigger="cli", host=web1)  # fmt: skip
        refused = ended_job(outside, timeout=60)
        assert refused.status == "failed" and "not under an allowed root" in refused.error_message
        assert not os.path.exists("/etc/nope")
    finally:
        for proc, _, _ in agents.values():
            stop_process(proc)
    repo.refresh_from_db()
    assert repo.lease_job_id is None
    for name, (_, data, _) in agents.items():
        for folder, _, files in os.walk(data):
            for file in files:
                path = os.path.join(folder, file)
                if os.path.isfile(path):
                    with open(path, "rb") as handle:
                        assert CANARY.encode() not in handle.read(), path
        assert CANARY.encode() not in (tmp_path / f"{name}.log").read_bytes()


def test_admin_adds_a_host_and_sees_its_token_once(client):
    import re

    from borgapp.models import Host
    from tests.helpers import staff

    client.force_login(staff("admin"))
    page = client.post("/admin/borgapp/host/add/", {"name": "files1"})
    assert page.status_code == 200 and "no-store" in page["Cache-Control"]
    token = re.search(r'<code id="host-token">([^<]+)</code>', page.content.decode()).group(1)
    host = Host.objects.get(name="files1")
    assert host.state == "pending" and token not in host.token_hash
    assert token not in client.get(f"/admin/borgapp/host/{host.pk}/change/").content.decode()
    assert post(client, "enroll", {"token": token}).status_code == 200
    client.force_login(staff("viewer"))
    assert client.post("/admin/borgapp/host/add/", {"name": "nope"}).status_code == 403


def test_a_late_report_of_a_lost_job_is_recorded_once(roots, tmp_path, client, settings):
    """The link was down while borg finished: the job was marked lost (its lease freed),
    then the agent's report arrives. The archive is recorded once, the job ends succeeded,
    and the same report again is refused."""
    from borgapp import borg, fleet, intake, operations, reconcile
    from borgapp.models import Archive, Job, Repository

    repo = a_repository(roots, tmp_path)
    host, token = fleet.add_host("web1")
    credential = post(client, "enroll", {"token": token}).json()["credential"]
    host.refresh_from_db()
    src = write_files(tmp_path / "src", {"a.txt": "a"})
    job = intake.start("backup", repo, {"sources": [str(src)]}, trigger="cli", host=host)
    handed = post(client, "poll", {"wait": 0}, credential).json()["job"]
    assert handed["id"] == job.pk and handed["passphrase"] == PASSPHRASE
    settings.AGENT_JOB_GRACE = 0
    Job.objects.filter(pk=job.pk).update(heartbeat_at=timezone.now() - timedelta(seconds=5))
    reconcile.repair()
    job.refresh_from_db()
    assert (job.status, job.error_code) == ("interrupted", "host_lost")
    assert Repository.objects.get(pk=repo.pk).lease_job_id is None
    # what the agent ran meanwhile, through the same door
    command = borg.create_cmd(repo.location, handed["archive"], [str(src)])
    created = borg.run(command, operations.borg_config(), passphrase=handed["passphrase"])
    report = {"outcome": "succeeded", "created": created.json(), "tail": [],
              "hostname": "web1.example.net", "username": "backup"}  # fmt: skip
    assert post(client, f"jobs/{job.pk}/done", report, credential).status_code == 200
    job.refresh_from_db()
    assert job.status == "succeeded" and job.result["archive_name"] == handed["archive"]
    assert Archive.objects.filter(repository=repo, name=handed["archive"]).count() == 1
    # the catalog says where borg ran: on the host, not on the center
    recorded = Archive.objects.get(repository=repo, name=handed["archive"])
    assert (recorded.hostname, recorded.username) == ("web1.example.net", "backup")
    again = post(client, f"jobs/{job.pk}/done", report, credential)
    assert again.status_code == 404
    other, other_token = fleet.add_host("db1")
    other_credential = post(client, "enroll", {"token": other_token}).json()["credential"]
    assert post(client, f"jobs/{job.pk}/progress", {}, other_credential).status_code == 404


def test_silent_host_raises_an_alert(settings):
    from borgapp import alerts, fleet
    from borgapp.models import Host

    host, _ = fleet.add_host("far1")
    Host.objects.filter(pk=host.pk).update(
        state="active", last_seen=timezone.now() - timedelta(hours=2)
    )
    settings.HOST_SILENT_AFTER = 900
    found = alerts.conditions()
    reason = found[("host_silent", None)]
    assert "far1" in reason and "15 minutes" in reason


def test_cancel_reaches_a_running_agent_job(roots, tmp_path, web_server):
    """A cancel asked for at the center stops borg on the host within seconds; the agent
    goes on serving and its next backup succeeds."""
    import time

    from borgapp import intake, jobs
    from borgapp.models import Host, Job, Repository
    from tests.helpers import SLOW

    url, _ = web_server
    repo = a_repository(roots, tmp_path)
    src = slow_source(tmp_path)
    proc = start_agent(url, "web1", tmp_path / "agent", tmp_path / "agent.log")
    try:
        host = Host.objects.get(name="web1")
        job = intake.start("backup", repo, {"sources": [str(src)], "compression": SLOW},
                           trigger="cli", host=host)  # fmt: skip
        wait_for(lambda: Job.objects.filter(pk=job.pk, status="running",
                                            progress_bytes__gt=0).exists(), timeout=60)  # fmt: skip
        asked = time.monotonic()
        jobs.cancel(job)
        done = wait_for(lambda: Job.objects.filter(pk=job.pk).exclude(status="running").first(),
                        timeout=30)  # fmt: skip
        assert done.status == "cancelled", (done.status, done.error_message)
        assert time.monotonic() - asked < 10
        assert Repository.objects.get(pk=repo.pk).lease_job_id is None
        small = write_files(tmp_path / "small", {"a.txt": "a"})
        again = intake.start("backup", repo, {"sources": [str(small)]}, trigger="cli", host=host)
        ended = ended_job(again, timeout=60)
        assert ended.status == "succeeded", ended.error_message
    finally:
        stop_process(proc)


def test_an_agents_key_only_appends_to_its_repository(roots, tmp_path, web_server, sshd, settings):
    """The agent makes its ssh key at enrollment; the center writes the authorized_keys line
    that limits it to `borg serve --append-only --restrict-to-repository`. With it the host
    backs up, but cannot delete the repository or reach another one; the center's own key
    still prunes."""
    from borgapp import fleet, intake
    from borgapp.models import Host, Repository

    url, _ = web_server
    settings.BORG_RSH = sshd["rsh"]
    location = f"ssh://root@127.0.0.1:{sshd['port']}{sshd['home']}/repos/fleet"
    made = cli("borg_init", "fleet", "--location", location, "--passphrase-file",
               write_files(tmp_path / "s", {"pw": PASSPHRASE}) / "pw")  # fmt: skip
    assert made.code == 0, made.err
    repo = Repository.objects.get(name="fleet")
    data = tmp_path / "agent"
    known = f"-oStrictHostKeyChecking=yes -oUserKnownHostsFile={sshd['home']}/known_hosts"
    proc = start_agent(url, "web1", data, tmp_path / "agent.log",
                       rsh=f"ssh -oBatchMode=yes {known}")  # fmt: skip
    try:
        host = Host.objects.get(name="web1")
        assert host.ssh_public_key.startswith("ssh-ed25519 ")
        line = fleet.authorized_keys_line(host, location)
        assert line.startswith('command="borg serve --append-only --restrict-to-repository ')
        assert cli("borg_host", "ssh-line", "web1", "fleet").out.strip() == line
        with open(sshd["home"] / "authorized_keys", "a") as handle:
            handle.write(line.replace("borg serve", f"{BORG} serve") + "\n")
        src = write_files(tmp_path / "src", {"a.txt": "appended"})
        job = intake.start("backup", repo, {"sources": [str(src)], "prefix": "web1"},
                           trigger="cli", host=host)  # fmt: skip
        done = ended_job(job, timeout=120)
        assert done.status == "succeeded", (done.error_message, done.log_tail)
    finally:
        stop_process(proc)
    as_host = {**roots.env, "BORG_PASSPHRASE": PASSPHRASE,
               "BORG_RSH": f"ssh -oBatchMode=yes {known} -i {data}/ssh/id_ed25519 "
                           "-oIdentitiesOnly=yes"}  # fmt: skip
    gone = subprocess.run([BORG, "delete", "--force", location], env=as_host,
                          capture_output=True, text=True, input="YES\n")  # fmt: skip
    assert gone.returncode != 0  # the repository itself cannot be deleted in append-only mode
    assert "append-only" in gone.stderr.lower() or "append_only" in gone.stderr.lower(), gone.stderr
    still = subprocess.run([BORG, "list", location], env=as_host, capture_output=True)
    assert still.returncode == 0
    elsewhere = location.replace("/repos/fleet", "/repos/other")
    refused = subprocess.run([BORG, "init", "-e", "none", elsewhere], env=as_host,
                             capture_output=True, text=True)  # fmt: skip
    assert refused.returncode != 0  # restricted to its one repository
    assert "not allowed" in refused.stderr.lower() or "restrict" in refused.stderr.lower(), (
        refused.stderr
    )
    pruned = cli("borg_prune", "fleet", "--prefix", "web1", "--keep-within", "1H", "--json")
    assert pruned.code == 0, pruned.err


def agent_mid_backup(roots, tmp_path, url):
    """An agent (web1) whose backup of 64 MiB with lzma is running and has sent progress:
    (repository, agent's data folder, agent process, host, job)."""
    from borgapp import intake
    from borgapp.models import Host, Job
    from tests.helpers import SLOW

    repo = a_repository(roots, tmp_path)
    src = slow_source(tmp_path)
    data = tmp_path / "agent"
    proc = start_agent(url, "web1", data, tmp_path / "agent.log")
    host = Host.objects.get(name="web1")
    job = intake.start("backup", repo, {"sources": [str(src)], "compression": SLOW},
                       trigger="cli", host=host)  # fmt: skip
    wait_for(lambda: Job.objects.filter(pk=job.pk, status="running",
                                        progress_bytes__gt=0).exists(), timeout=60)  # fmt: skip
    return repo, data, proc, host, job


def test_stopping_an_agent_mid_backup_leaves_nothing_running(roots, tmp_path, web_server):
    """systemctl stop (SIGTERM) of an agent mid-backup: borg is stopped on the host, the job
    ends interrupted at once (lease free), nothing is recorded; a restarted agent's next
    backup succeeds. A killed agent (SIGKILL) is the next test."""
    import signal

    from borgapp import intake, procs
    from borgapp.models import Archive, Repository
    from tests.helpers import borg_processes_by_repo

    repo, data, proc, host, job = agent_mid_backup(roots, tmp_path, web_server[0])
    # while borg runs: the passphrase is in no argv and no environment, agent's or borg's
    family = procs.descendants(proc.pid)
    assert len(family) >= 2  # the agent and its borg
    for pid in family:
        for part in ("cmdline", "environ"):
            assert PASSPHRASE.encode() not in Path(f"/proc/{pid}/{part}").read_bytes(), (pid, part)
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=30)
    where = str(roots.repos / "r")
    assert borg_processes_by_repo([where])[where] == []
    job.refresh_from_db()
    assert job.status == "interrupted" and "stopped" in job.error_message
    assert Repository.objects.get(pk=repo.pk).lease_job_id is None
    assert not Archive.objects.filter(repository=repo, is_checkpoint=False).exists()
    again = restart_agent(data, tmp_path / "agent2.log")
    try:
        small = write_files(tmp_path / "small", {"a.txt": "a"})
        second = intake.start("backup", repo, {"sources": [str(small)]}, trigger="cli", host=host)
        ended = ended_job(second, timeout=60)
        assert ended.status == "succeeded", ended.error_message
    finally:
        stop_process(again)


def test_what_an_agent_sends_is_checked_like_any_input(roots, tmp_path, client):
    """Wrong types in progress and outcome reports: never a 500, nothing stored that does
    not fit, and a backup report without borg's archive fails its job with the reason."""
    from borgapp import fleet, intake
    from borgapp.models import Job

    repo = a_repository(roots, tmp_path)
    host, token = fleet.add_host("web1")
    credential = post(client, "enroll", {"token": token}).json()["credential"]
    host.refresh_from_db()
    job = intake.start("backup", repo, {"sources": [str(tmp_path)]}, trigger="cli", host=host)
    assert post(client, "poll", {"wait": 0}, credential).status_code == 200
    odd = {"progress_bytes": "lots", "progress_files": -5, "progress_path": ["x"] * 3,
           "progress_percent": 1e9, "progress_message": "m" * 10_000}  # fmt: skip
    answer = post(client, f"jobs/{job.pk}/progress", {"fields": odd}, credential)
    assert answer.status_code == 200 and answer.json() == {"cancel": False}
    job.refresh_from_db()
    assert job.progress_bytes is None and job.progress_files == 0
    assert job.progress_percent == 100.0 and len(job.progress_message) == 500
    assert post(client, "poll", {"wait": "soon"}, credential).status_code == 400
    bad = post(client, f"jobs/{job.pk}/done", {"outcome": ["succeeded"], "tail": 7,
                                              "created": "yes"}, credential)  # fmt: skip
    assert bad.status_code == 200 and bad.json() == {"status": "failed"}
    job.refresh_from_db()
    assert job.status == "failed"
    lying = intake.start("backup", repo, {"sources": [str(tmp_path)]}, trigger="cli", host=host)
    assert post(client, "poll", {"wait": 0}, credential).status_code == 200
    answer = post(client, f"jobs/{lying.pk}/done", {"outcome": "succeeded", "created": []},
                  credential)  # fmt: skip
    assert answer.json() == {"status": "failed"}
    lying.refresh_from_db()
    assert lying.error_code == "bad_report" and "could not be recorded" in lying.error_message
    assert Job.objects.filter(status="running").count() == 0
    assert post(client, "jobs/999999/done", {}, credential).status_code == 404


@pytest.fixture
def two_threads(roots):
    """A web server with two threads per process (listed before web_server, which reads it)."""
    roots.env["WEB_THREADS"] = "2"


def test_waiting_agents_hold_no_thread(roots, tmp_path, two_threads, web_server):
    """Twelve agents long-polling a server of 2 processes x 2 threads: the API still answers
    at once (a waiting poll holds no thread), a job made for one host reaches its agent within
    a second or so, and the others wait on until their time is up, then hear 204."""
    import threading
    import time
    import urllib.error
    import urllib.request

    from borgapp import fleet, intake
    from borgapp.models import Host

    url, _ = web_server
    repo = a_repository(roots, tmp_path)

    def call(path, data, credential=None, timeout=30):
        headers = {"Content-Type": "application/json"}
        if credential:
            headers["Authorization"] = f"Agent {credential}"
        request = urllib.request.Request(f"{url}/agent/v1/{path}", json.dumps(data).encode(),
                                         headers, method="POST")  # fmt: skip
        with urllib.request.urlopen(request, timeout=timeout) as answer:
            raw = answer.read()
            return answer.status, json.loads(raw) if raw else {}

    credentials = {}
    for index in range(12):
        _, token = fleet.add_host(f"h{index}")
        credentials[f"h{index}"] = call("enroll", {"token": token})[1]["credential"]
    answers = {}

    def poll(name):
        began = time.monotonic()
        answers[name] = (*call("poll", {"wait": 8}, credentials[name]), time.monotonic() - began)

    polls = [threading.Thread(target=poll, args=(name,)) for name in credentials]
    for thread in polls:
        thread.start()
    time.sleep(1.5)  # all twelve are waiting now
    began = time.monotonic()
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(f"{url}/api/v1/repositories/", timeout=10)
    assert refused.value.code == 401 and time.monotonic() - began < 2.0
    made = time.monotonic()
    job = intake.start("backup", repo, {"sources": [str(tmp_path)]}, trigger="cli",
                       host=Host.objects.get(name="h7"))  # fmt: skip
    wait_for(lambda: "h7" in answers, timeout=5)
    status, answer, _ = answers["h7"]
    assert status == 200 and answer["job"]["id"] == job.pk
    assert time.monotonic() - made < 2.5
    assert len(answers) == 1  # the others are still waiting
    for thread in polls:
        thread.join(timeout=20)
    assert {name: status for name, (status, _, _) in answers.items() if name != "h7"} == {
        name: 204 for name in credentials if name != "h7"
    }
    assert all(7 < took < 12 for name, (_, _, took) in answers.items() if name != "h7")


def test_a_killed_agent_stops_its_orphaned_borg_when_it_starts_again(roots, tmp_path, web_server):
    """kill -9 of an agent mid-backup: its borg runs on (own session), holding the lock. The
    agent started again stops that borg, reports the job interrupted at once (not after the
    grace period), and its next backup succeeds; nothing is recorded twice."""
    import signal

    from borgapp import intake
    from borgapp.models import Archive, Job, Repository
    from tests.helpers import borg_processes_by_repo

    repo, data, proc, host, job = agent_mid_backup(roots, tmp_path, web_server[0])
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    where = str(roots.repos / "r")
    assert borg_processes_by_repo([where])[where], "borg ran on without its agent"
    assert Job.objects.get(pk=job.pk).status == "running"
    again = restart_agent(data, tmp_path / "agent2.log")
    try:
        ended = ended_job(job, timeout=30)
        assert (ended.status, ended.error_code) == ("interrupted", "agent_restarted")
        assert borg_processes_by_repo([where])[where] == []
        assert Repository.objects.get(pk=repo.pk).lease_job_id is None
        small = write_files(tmp_path / "small", {"a.txt": "a"})
        second = intake.start("backup", repo, {"sources": [str(small)]}, trigger="cli", host=host)
        done = ended_job(second, timeout=90)
        assert done.status == "succeeded", (done.error_message, done.log_tail)
        # nothing left to deliver or stop (the files go once the center has answered)
        wait_for(lambda: not any((data / f).exists() for f in ("running.json", "report.json")),
                 timeout=10)  # fmt: skip
    finally:
        stop_process(again)
    assert Archive.objects.filter(repository=repo, is_checkpoint=False).count() == 1


def restart_agent(data, log):
    handle = open(log, "wb")  # noqa: SIM115
    return subprocess.Popen(
        [sys.executable, "-m", "agent", "run", "--data", data, "--wait", "2"],
        env=agent_env(), cwd=ROOT, stdout=handle, stderr=subprocess.STDOUT,
    )  # fmt: skip


class Link:
    """A TCP link between the agents and the center that a test can cut and restore."""

    def __init__(self, target_port: int):
        import socket

        self.target = ("127.0.0.1", target_port)
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.conns: list = []
        self.listener = None
        self.restore()

    def restore(self):
        import socket
        import threading

        self.listener = socket.create_server(("127.0.0.1", self.port), reuse_port=True)
        threading.Thread(target=self._accept, args=(self.listener,), daemon=True).start()

    def cut(self):
        import socket

        self.listener.close()
        for conn in self.conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            conn.close()
        self.conns = []

    def _accept(self, listener):
        import socket
        import threading

        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            self.conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(source, sink):
        try:
            while chunk := source.recv(65536):
                sink.sendall(chunk)
        except OSError:
            pass
        finally:
            for end in (source, sink):
                try:
                    end.close()
                except OSError:
                    pass


def test_a_backup_that_ends_while_the_link_is_down_is_recorded_once(
    roots, tmp_path, web_server, settings
):
    """The link to the center is cut mid-backup: borg finishes on the host, the center marks
    the job lost after its grace (the lease freed). When the link is back the agent delivers
    the outcome it kept: the archive is recorded once, the job ends succeeded, and the next
    backup runs normally."""
    from borgapp import intake, reconcile
    from borgapp.models import Archive, Host, Job, Repository
    from tests.helpers import borg_processes_by_repo

    url, _ = web_server
    link = Link(int(url.rsplit(":", 1)[1]))
    repo = a_repository(roots, tmp_path)
    src = slow_source(tmp_path)
    data = tmp_path / "agent"
    proc = start_agent(f"http://127.0.0.1:{link.port}", "web1", data, tmp_path / "agent.log")
    host = Host.objects.get(name="web1")
    try:
        job = intake.start("backup", repo, {"sources": [str(src)], "compression": "zstd,3"},
                           trigger="cli", host=host)  # fmt: skip
        wait_for(lambda: Job.objects.filter(pk=job.pk, status="running").exists(), timeout=60)
        where = str(roots.repos / "r")
        # the job is "running" once the center has handed it over; cut before that answer
        # reached the agent, the agent would never have had it (seen on CI): wait for borg
        wait_for(lambda: borg_processes_by_repo([where])[where], timeout=60)
        link.cut()
        wait_for(lambda: not borg_processes_by_repo([where])[where], timeout=120)
        wait_for((data / "report.json").exists, timeout=30)  # the outcome waits on the host
        assert Job.objects.get(pk=job.pk).status == "running"  # the center has heard nothing
        settings.AGENT_JOB_GRACE = 0
        Job.objects.filter(pk=job.pk).update(heartbeat_at=timezone.now() - timedelta(seconds=5))
        reconcile.repair()
        assert Job.objects.get(pk=job.pk).error_code == "host_lost"
        assert Repository.objects.get(pk=repo.pk).lease_job_id is None
        link.restore()
        done = wait_for(lambda: Job.objects.filter(pk=job.pk, status="succeeded").first(),
                        timeout=30)  # fmt: skip
        assert (
            Archive.objects.filter(repository=repo, name=done.result["archive_name"]).count() == 1
        )
        # the agent forgets its copy once the center's answer is in (a moment after the row)
        wait_for(lambda: not (data / "report.json").exists(), timeout=10)
        small = write_files(tmp_path / "small", {"a.txt": "a"})
        second = intake.start("backup", repo, {"sources": [str(small)]}, trigger="cli", host=host)
        assert ended_job(second, timeout=90).status == "succeeded"
    finally:
        stop_process(proc)
        link.cut()
    assert Archive.objects.filter(repository=repo, is_checkpoint=False).count() == 2


def test_append_only_line_names_the_path_borg_serve_compares():
    """borg serve resolves /./PATH and /~/PATH against the account's home (where the forced
    command runs) and compares the realpath of --restrict-to-repository with the result: the
    line gets the home-relative path, or the repository would be refused to its own host."""
    from borgapp import fleet, validation
    from borgapp.models import Host

    key = "ssh-ed25519 " + "A" * 68 + " opscenter-agent"
    host = Host(name="web1", ssh_public_key=key)
    expected = {
        "ssh://b@vault:22/srv/borg/web1": "/srv/borg/web1",
        "ssh://b@vault:22/./borg/web1": "borg/web1",
        "ssh://b@vault:22/~/borg/web1": "borg/web1",
    }
    for location, path in expected.items():
        line = fleet.authorized_keys_line(host, location)
        assert line == (f'command="borg serve --append-only --restrict-to-repository {path}",'
                        f"restrict {key}")  # fmt: skip
    with pytest.raises(validation.InvalidInput, match="absolute path"):
        fleet.authorized_keys_line(host, "ssh://b@vault:22/~backup/web1")


@pytest.fixture
def short_agent_wait(roots):
    """Downloads wait 4 s for a host's agent (listed before web_server, which reads it)."""
    roots.env["OPSCENTER_DOWNLOAD_AGENT_WAIT"] = "4"


def test_a_download_runs_on_its_host_and_is_relayed(roots, tmp_path, short_agent_wait,
                                                    web_server, settings):  # fmt: skip
    """A download with a host: borg runs on that host's agent, which uploads the tar as borg
    writes it; the center relays it to the client as it arrives. Files and folders come back
    byte for byte (API and CLI); a missing path is a 404; a host whose agent is not running
    is a 504 after the wait; a client that leaves stops borg on the host and frees the
    repository."""
    import io
    import socket
    import tarfile
    import urllib.request

    from django.contrib.auth.models import User
    from rest_framework.authtoken.models import Token

    from borgapp import intake
    from borgapp.models import Archive, Host, Job, Repository
    from tests.helpers import borg_processes_by_repo

    url, _ = web_server
    settings.DOWNLOAD_AGENT_WAIT = 4
    repo = a_repository(roots, tmp_path)
    big = os.urandom(3 * 2**20 + 17)
    src = write_files(tmp_path / "host" / "srv" / "app", {"conf/app.ini": "x=1",
                                                          "data/notes.txt": "notes"})  # fmt: skip
    (src / "data" / "blob.bin").write_bytes(big)
    (src / "data" / "huge.bin").write_bytes(os.urandom(48 * 2**20))
    proc = start_agent(url, "web1", tmp_path / "agent", tmp_path / "agent.log")
    host = Host.objects.get(name="web1")
    key = Token.objects.create(user=User.objects.create_superuser("boss", password="x" * 20)).key
    try:
        made = intake.start("backup", repo, {"sources": [str(src)]}, trigger="cli", host=host)
        assert ended_job(made, timeout=120).status == "succeeded"
        archive = Archive.objects.get(repository=repo)
        folder = str(src).lstrip("/")

        def get(query, timeout=60):
            request = urllib.request.Request(
                f"{url}/api/v1/archives/{archive.pk}/download/?{query}",
                headers={"Authorization": f"Token {key}"},
            )
            try:
                with urllib.request.urlopen(request, timeout=timeout) as answer:
                    return answer.status, answer.headers, answer.read()
            except urllib.error.HTTPError as exc:
                return exc.code, exc.headers, exc.read()

        status, headers, body = get(f"path={folder}/data&format=tar.gz&host=web1")
        assert status == 200, body[:500]
        with tarfile.open(fileobj=io.BytesIO(body), mode="r:gz") as tar:
            assert tar.extractfile(f"{folder}/data/blob.bin").read() == big
            assert tar.extractfile(f"{folder}/data/notes.txt").read() == b"notes"
        job = Job.objects.get(pk=int(headers["X-Opscenter-Job"]))
        assert job.status == "succeeded" and job.worker_host == "agent:web1"
        assert job.host_id == host.pk and job.result["bytes"] > len(big)
        status, headers, body = get(f"path={folder}/data/blob.bin&host=web1")
        assert status == 200 and body == big and headers["Content-Length"] == str(len(big))
        status, _, body = get(f"path={folder}/nothing-here&host=web1")
        assert status == 404 and json.loads(body)["error"] == "path_not_found"
        assert get(f"path={folder}/data&host=nobody")[0] == 400

        out = tmp_path / "notes.txt"
        done = cli("borg_download", "r", archive.name, f"{folder}/data/notes.txt", "--host",
                   "web1", "--output", out)  # fmt: skip
        assert done.code == 0, done.err
        assert out.read_bytes() == b"notes"
        # the admin's Download page: a host field; the answer streams as it is relayed
        from django.test import Client
        from django.urls import reverse

        page = Client()
        page.force_login(User.objects.get(username="boss"))
        answer = page.post(reverse("admin:borgapp_archive_download", args=[archive.pk]),
                           {"paths": f"{folder}/data/notes.txt", "format": "auto",
                            "host": "web1"})  # fmt: skip
        assert answer.status_code == 200 and b"".join(answer.streaming_content) == b"notes"
        assert Job.objects.get(pk=int(answer["X-Opscenter-Job"])).worker_host == "agent:web1"

        # a client that reads a little, then leaves: borg stops on the host, the lease is free
        where = str(roots.repos / "r")
        port = int(url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.sendall(
                f"GET /api/v1/archives/{archive.pk}/download/?path={folder}/data/huge.bin"
                f"&host=web1 HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                f"Authorization: Token {key}\r\n\r\n".encode()
            )
            assert sock.recv(65536).startswith(b"HTTP/1.1 200 ")
        gone = wait_for(lambda: Job.objects.filter(kind="download", status="cancelled").first(),
                        timeout=60)  # fmt: skip
        assert gone.error_code == "client_gone"
        wait_for(lambda: not borg_processes_by_repo([where])[where], timeout=30)
        assert Repository.objects.get(pk=repo.pk).lease_job_id is None
    finally:
        stop_process(proc)
    # an agent that is not running: the client hears so after the wait, nothing stays queued
    status, _, body = get(f"path={folder}/data/notes.txt&host=web1", timeout=30)
    assert status == 504 and json.loads(body)["error"] == "host_unavailable"
    assert not Job.objects.filter(status__in=["queued", "running"]).exists()
    assert Repository.objects.get(pk=repo.pk).lease_job_id is None
    assert Host.objects.get(name="web1").state == "active"


def test_a_restore_in_place_runs_on_its_host(roots, tmp_path, web_server, settings):
    """A restore in place with a host: the agent previews, then restores, under its own
    --inplace-root folders only (the center's do not count); the report comes back to the
    job like a restore of the center's own."""
    from django.contrib.auth.models import User

    from borgapp import intake
    from borgapp.models import Archive, Host, Job
    from tests.helpers import client_for

    url, _ = web_server
    settings.INPLACE_ROOTS = []  # the center allows no restore in place of its own
    repo = a_repository(roots, tmp_path)
    hostroot = tmp_path / "hostroot"
    live = write_files(hostroot / "srv" / "www", {"index.html": "<h1>home</h1>",
                                                  "img/logo.svg": "<svg/>"})  # fmt: skip
    proc = start_agent(url, "web1", tmp_path / "agent", tmp_path / "agent.log",
                       options=["--inplace-root", str(hostroot)])  # fmt: skip
    host = Host.objects.get(name="web1")
    try:
        made = intake.start("backup", repo, {"sources": [str(live)]}, trigger="cli", host=host)
        assert ended_job(made, timeout=120).status == "succeeded"
        archive = Archive.objects.get(repository=repo)
        (live / "index.html").write_text("<h1>defaced</h1>")
        (live / "img" / "logo.svg").unlink()
        folder = str(live).lstrip("/")
        admin = client_for("admin")
        asked = {"paths": [folder], "policy": "if-different", "host": "web1"}
        answer = admin.post(f"/api/v1/archives/{archive.pk}/restore/", asked, format="json")
        assert answer.status_code == 202, answer.content
        preview = ended_job(Job.objects.get(pk=answer.json()["id"]), timeout=60)
        assert preview.status == "succeeded", preview.error_message
        assert preview.worker_host == "agent:web1" and preview.result["preview"] is True
        assert preview.result["created"]["count"] == 1
        assert [item["path"] for item in preview.result["replaced"]["items"]] == [
            f"{folder}/index.html"
        ]
        assert (live / "index.html").read_text() == "<h1>defaced</h1>"  # nothing written yet
        answer = admin.post(f"/api/v1/archives/{archive.pk}/restore/",
                            {**asked, "preview": False}, format="json")  # fmt: skip
        done = ended_job(Job.objects.get(pk=answer.json()["id"]), timeout=60)
        assert done.status == "succeeded", done.error_message
        assert (done.result["created"]["count"], done.result["replaced"]["count"]) == (1, 1)
        assert (live / "index.html").read_text() == "<h1>home</h1>"
        assert (live / "img" / "logo.svg").read_text() == "<svg/>"
        assert not list(hostroot.glob("srv/.opscenter-restore-*"))  # no staging left
        outside = cli("borg_restore", "r", archive.name, folder, "--target", str(tmp_path / "x"),
                      "--host", "web1", "--yes")  # fmt: skip
        assert outside.code != 0 and "not under an in-place root of this agent" in outside.err
        unknown = admin.post(f"/api/v1/archives/{archive.pk}/restore/",
                             {**asked, "host": "nobody"}, format="json")  # fmt: skip
        assert unknown.status_code == 400 and unknown.json()["error"] == "invalid_input"
        # the admin: the form names the host, and the preview's confirm button keeps it
        from django.test import Client
        from django.urls import reverse

        page = Client()
        page.force_login(User.objects.create_superuser("boss", password="x" * 20))
        form = {"paths": folder, "target": "/", "policy": "keep", "host": "web1"}
        page.post(reverse("admin:borgapp_archive_restore", args=[archive.pk]), form)
        queued = Job.objects.filter(kind="restore").latest("pk")
        assert queued.host_id == host.pk and queued.params["preview"] is True
        shown = ended_job(queued, timeout=60)
        assert shown.status == "succeeded", shown.error_message
        job_page = page.get(reverse("admin:borgapp_job_change", args=[shown.pk])).content.decode()
        assert '<input type="hidden" name="host" value="web1">' in job_page
    finally:
        stop_process(proc)


def test_a_hosts_restore_is_never_confirmed_onto_the_center(roots, tmp_path, client):
    """The confirm button of a host's preview names the host; if the host was revoked
    meanwhile (and no host is active, so the form shows no host field), the confirm is
    refused with the reason: it never runs on this server instead."""
    from django.contrib.auth.models import User
    from django.urls import reverse

    from borgapp import fleet
    from borgapp.models import Archive, Job

    repo = a_repository(roots, tmp_path)
    archive = Archive.objects.create(repository=repo, name="www-1", borg_id="1" * 64)
    host, _ = fleet.add_host("web1")
    fleet.revoke(host)
    client.force_login(User.objects.create_superuser("boss", password="x" * 20))
    url = reverse("admin:borgapp_archive_restore", args=[archive.pk])
    form = {"paths": "srv/www", "target": "/", "policy": "keep", "host": "web1", "confirm": "1"}
    page = client.post(url, form)
    assert page.status_code == 200
    assert "Host web1 is not active: nothing was started." in page.content.decode()
    assert not Job.objects.filter(kind="restore").exists()
