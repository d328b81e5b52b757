#!/usr/bin/env python
"""Issue 15: one center on PostgreSQL serving a fleet of agents.

Part 1, simulated agents: N agents (100) run the real agent's code (`agent.main.run`: enroll,
long poll, progress, report) in threads of this process, each its own host, data folder and
credential, with bench/stub_borg.py in place of borg. Against a center served as `make run`
serves it (gunicorn, 2 processes, opscenter/serving.py) on a private PostgreSQL, it prints:
  - the center's CPU while idle, without agents and with them (per idle agent);
  - the API's archive-list p95 (100-row pages of 10,000 catalog rows), without and with them;
  - dispatch latency: from a job's creation to its agent having it (median, p95; target
    p95 < 1 s), for jobs made one at a time for random hosts.
Part 2, real agents: R agents (10) as separate `python -m agent run` processes with real borg,
each backing up its own source (nested folders, 2,000 files) into its own repository, all
at once: the wall time until all succeeded and each backup's time.

Usage: .venv/bin/python bench/fleet.py [--agents 100] [--jobs 200] [--real 10]
"""

import argparse
import io
import json
import os
import random
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from argparse import Namespace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from api_list import manage  # noqa: E402 (bench/ is this script's folder)
from common import free_port, stop, wait_until_up  # noqa: E402

from borgapp import procs  # noqa: E402
from tests.backends import postgres_server  # noqa: E402

PYTHON = str(ROOT / ".venv" / "bin" / "python")
BORG = str(ROOT / ".venv" / "bin" / "borg")
STUB = str(ROOT / "bench" / "stub_borg.py")
PASSPHRASE = "bench fleet passphrase"
TICKS = os.sysconf("SC_CLK_TCK")


def cpu_of(pids) -> dict[int, float]:
    """CPU seconds (user + system) each process has used so far."""
    used = {}
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        used[pid] = (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime
    return used


class CpuMeter:
    """Cores used by process families (a root and its descendants) between start() and
    stop(): per process, what it used since it was first seen (a process that ended in
    between loses its last part: never a negative figure)."""

    def __init__(self, roots: dict[str, int]):
        self.roots = roots

    def start(self) -> None:
        self.began = time.monotonic()
        self.before = {name: cpu_of(procs.descendants(pid)) for name, pid in self.roots.items()}

    def stop(self) -> dict[str, float]:
        seconds = time.monotonic() - self.began
        used = {}
        for name, pid in self.roots.items():
            after = cpu_of(procs.descendants(pid))
            spent = sum(cpu - self.before[name].get(p, 0.0) for p, cpu in after.items())
            used[name] = spent / seconds
        return used


def idle_cpu(roots: dict[str, int], seconds: float) -> dict[str, float]:
    meter = CpuMeter(roots)
    meter.start()
    time.sleep(seconds)
    return meter.stop()


def postmaster(port: int) -> int:
    """The pid of the PostgreSQL server listening on this port."""
    for entry in Path("/proc").iterdir():
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv and argv[0].endswith(b"/postgres") and str(port).encode() in argv:
            return int(entry.name)
    sys.exit("the PostgreSQL server was not found")


def percentile(values, share: float) -> float:
    ordered = sorted(values)
    return ordered[max(int(round(len(ordered) * share)) - 1, 0)]


def api_list_times(base: str, key: str, count: int) -> list[float]:
    times = []
    for number in range(count):
        request = urllib.request.Request(
            f"{base}/api/v1/archives/?repository=fleet-0&page={1 + number % 50}",
            headers={"Authorization": f"Token {key}"},
        )
        began = time.perf_counter()
        with urllib.request.urlopen(request, timeout=60) as answer:
            page = json.loads(answer.read())
        times.append(time.perf_counter() - began)
        assert len(page["results"]) == 100, page
    return times


def start_web(env, port):
    return subprocess.Popen(
        [str(ROOT / ".venv" / "bin" / "gunicorn"), "opscenter.wsgi", "--config",
         "opscenter/gunicorn.conf.py"],
        env={**env, "GUNICORN_BIND": f"127.0.0.1:{port}", "WEB_WORKERS": "2"}, cwd=ROOT,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip


def enroll(url: str, name: str, data: Path, env) -> None:
    """`python -m agent enroll` as a child process, the token on its stdin."""
    from borgapp import fleet

    _, token = fleet.add_host(name)
    subprocess.run([PYTHON, "-m", "agent", "enroll", "--center", url, "--data", str(data)],
                   input=token + "\n", env=env, cwd=ROOT, check=True, capture_output=True,
                   text=True)  # fmt: skip


def simulated(args, url, work, base_env, web, postmaster, key) -> dict:
    """Part 1. Returns the figures."""
    import agent.main as agent_main
    from borgapp import intake
    from borgapp.models import Archive, Host, Job, Repository

    figures = {}
    repos = []
    for index in range(args.agents):
        repo = Repository(name=f"fleet-{index}", location=str(work / "repos" / f"r{index}"),
                          state=Repository.State.READY)  # fmt: skip
        repo.set_passphrase(PASSPHRASE)
        repo.save()
        repos.append(repo)
    Archive.objects.bulk_create(
        Archive(repository=repos[0], name=f"a-{n:05d}", borg_id=f"{n:064x}", nfiles=n)
        for n in range(10_000)
    )
    families = {"web": web.pid, "postgres": postmaster}
    time.sleep(5)
    figures["cpu_without"] = idle_cpu(families, args.idle_seconds)
    figures["list_without"] = api_list_times(url, key, args.requests)

    # the agents: enrolled by the real command, then the real run loop in threads with
    # BORG_BINARY pointing to the stub (this process's environment is theirs)
    agent_env = {**base_env, "BORG_BINARY": STUB, "PYTHONPATH": str(ROOT)}
    os.environ["BORG_BINARY"] = STUB
    received: dict[int, float] = {}
    real_execute = agent_main.execute

    def execute(center, job, *rest):
        received[job["id"]] = time.time()
        return real_execute(center, job, *rest)

    agent_main.execute = execute
    sys.stdout = io.StringIO()  # the agents' own messages; figures go to the real stdout
    datas = []
    for index in range(args.agents):
        data = work / "agents" / f"h{index}"
        enroll(url, f"h{index}", data, agent_env)
        datas.append(data)
    for data in datas:
        options = Namespace(data=str(data), wait=20.0, once=False, restore_root=[], inplace_root=[])
        threading.Thread(target=agent_main.run, args=(options,), daemon=True).start()
    time.sleep(25)  # every agent is in its long poll
    figures["cpu_with"] = idle_cpu(families, args.idle_seconds)
    figures["list_with"] = api_list_times(url, key, args.requests)

    hosts = list(Host.objects.order_by("name"))
    by_host = {repo.name.split("-")[1]: repo for repo in repos}
    made: dict[int, float] = {}

    def make(host) -> None:
        began = time.time()
        job = intake.start("backup", by_host[host.name[1:]], {"sources": ["/srv"]},
                           trigger="api", host=host)  # fmt: skip
        made[job.pk] = began

    def wait_all(pks, seconds=300):
        deadline = time.monotonic() + seconds
        while Job.objects.filter(pk__in=pks, status__in=["queued", "running"]).exists():
            if time.monotonic() > deadline:
                break
            time.sleep(0.2)

    # steady: one job every half second for a random host (what a fleet's schedules make)
    for _ in range(args.jobs):
        make(random.choice(hosts))
        time.sleep(0.5)
    wait_all(list(made))
    steady = [received[pk] - made[pk] for pk in made if pk in received]
    # a burst: one job for every host at the same moment (a schedule at 02:00 for all)
    burst_made = set()
    meter = CpuMeter(families)
    meter.start()
    began = time.monotonic()
    for host in hosts:
        make(host)
        burst_made.add(max(made))
    wait_all(list(burst_made))
    figures["burst_seconds"] = time.monotonic() - began
    figures["burst_cpu"] = meter.stop()
    figures["burst_cpu_seconds"] = {
        name: cores * figures["burst_seconds"] for name, cores in figures["burst_cpu"].items()
    }
    burst = [received[pk] - made[pk] for pk in burst_made if pk in received]
    sys.stdout = sys.__stdout__
    ended = dict(Job.objects.filter(pk__in=made).values_list("pk", "status"))
    figures["dispatch"] = steady
    figures["burst"] = burst
    figures["jobs_ok"] = sum(1 for status in ended.values() if status == "succeeded")
    figures["jobs_made"] = len(made)
    return figures


def real_agents(args, url, work, base_env) -> dict:
    """Part 2: separate agent processes with real borg, backing up at once."""
    from borgapp import intake
    from borgapp.models import Host, Job, Repository

    env = {**base_env, "BORG_BINARY": BORG, "PYTHONPATH": str(ROOT)}
    passfile = work / "pw"
    passfile.write_text(PASSPHRASE + "\n")
    procs, pairs = [], []
    for index in range(args.real):
        name = f"real{index}"
        src = work / "sources" / name
        for n in range(2000):
            path = src / f"d{n % 7}" / f"e{n % 5}" / f"f{n % 3}" / f"{name}-{n}.dat"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(os.urandom(4096 + n % 4096))
        manage(["borg_init", name, "--location", str(work / "repos" / name),
                "--passphrase-file", str(passfile)], base_env)  # fmt: skip
        data = work / "agents" / name
        enroll(url, name, data, env)
        log = open(work / f"{name}.log", "wb")  # noqa: SIM115
        procs.append(subprocess.Popen(
            [PYTHON, "-m", "agent", "run", "--data", str(data), "--wait", "20"],
            env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
        ))  # fmt: skip
        pairs.append((Host.objects.get(name=name), Repository.objects.get(name=name), src))
    time.sleep(3)
    began = time.monotonic()
    made = [intake.start("backup", repo, {"sources": [str(src)]}, trigger="api", host=host)
            for host, repo, src in pairs]  # fmt: skip
    while Job.objects.filter(pk__in=[j.pk for j in made], status__in=["queued", "running"]):
        time.sleep(0.5)
    wall = time.monotonic() - began
    for proc in procs:
        stop(proc)
    done = list(Job.objects.filter(pk__in=[j.pk for j in made]))
    return {
        "wall": wall,
        "ok": sum(1 for job in done if job.status == "succeeded"),
        "durations": [(job.finished_at - job.started_at).total_seconds() for job in done
                      if job.finished_at and job.started_at],
        "files": sorted({job.result.get("nfiles") for job in done if job.result}),
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--agents", type=int, default=100)
    parser.add_argument("--jobs", type=int, default=100, help="jobs made in the steady part")
    parser.add_argument("--real", type=int, default=10)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--idle-seconds", type=float, default=30.0)
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop: the servers are stopped too
    work = Path(tempfile.mkdtemp(prefix="opscenter-fleet-bench-"))
    password = secrets.token_hex(16)
    with postgres_server(password) as server:
        import psycopg

        with psycopg.connect(
            host=server["host"],
            port=server["port"],
            user=server["user"],
            password=password,
            dbname="postgres",
            autocommit=True,
        ) as conn:
            conn.execute("CREATE DATABASE opscenter")  # fmt: skip
        database = (f"postgres://{server['user']}:{password}@{server['host']}:{server['port']}"
                    "/opscenter")  # fmt: skip
        env = {k: v for k, v in os.environ.items() if not k.startswith(("BORG_", "OPSCENTER_"))}
        env.update(OPSCENTER_DATA_DIR=str(work / "data"), DATABASE_URL=database,
                   OPSCENTER_REPOSITORY_ROOTS=str(work / "repos"),
                   OPSCENTER_ALERT_WATCH_THREAD="0")  # fmt: skip
        (work / "repos").mkdir()
        manage(["migrate", "-v0"], env)
        manage(["collectstatic", "--noinput", "-v0"], env)
        os.environ.update(env)
        os.environ["DJANGO_SETTINGS_MODULE"] = "opscenter.settings"
        import django

        django.setup()
        from django.contrib.auth.models import User
        from rest_framework.authtoken.models import Token

        user = User.objects.create_superuser("bench", password="bench-password-123")
        key = Token.objects.create(user=user).key
        port = free_port()
        web = start_web(env, port)
        url = f"http://127.0.0.1:{port}"
        try:
            wait_until_up(url)
            sim = simulated(args, url, work, env, web, postmaster(server["port"]), key)
            real = real_agents(args, url, work, env) if args.real else None
        finally:
            stop(web)
    report(args, sim, real)
    shutil.rmtree(work, ignore_errors=True)


def report(args, sim, real) -> None:
    ms = 1000
    latencies = sim["dispatch"]
    without, with_ = sim["cpu_without"], sim["cpu_with"]
    print(f"center: 2 web processes (opscenter/serving.py), PostgreSQL; {args.agents} "
          f"simulated agents (agent.main.run in threads, bench/stub_borg.py for borg)")  # fmt: skip
    for name in ("web", "postgres"):
        extra = with_[name] - without[name]
        print(f"idle CPU {name:9} without agents {without[name] * 100:5.2f} % of a core, with "
              f"{args.agents}: {with_[name] * 100:5.2f} %  -> per idle agent "
              f"{extra / args.agents * 100:.3f} % of a core")  # fmt: skip
    for label, times in (("without agents", sim["list_without"]),
                         (f"with {args.agents} agents", sim["list_with"])):  # fmt: skip
        print(
            f"API archive list (100 rows of 10,000) {label:16} p50 "
            f"{statistics.median(times) * ms:6.1f} ms  p95 {percentile(times, 0.95) * ms:6.1f} ms"
        )
    print(f"dispatch, steady (one job every 0.5 s for a random host): {len(latencies)} "
          f"handed out, median {statistics.median(latencies) * ms:.0f} ms, p95 "
          f"{percentile(latencies, 0.95) * ms:.0f} ms, max {max(latencies) * ms:.0f} ms "
          f"(target p95 < 1000 ms)")  # fmt: skip
    burst, spent = sim["burst"], sim["burst_cpu_seconds"]
    print(f"dispatch, burst (one job for each of the {len(burst)} hosts at once): median "
          f"{statistics.median(burst) * ms:.0f} ms, p95 {percentile(burst, 0.95) * ms:.0f} ms; "
          f"all ended in {sim['burst_seconds']:.1f} s; center CPU per job: web "
          f"{spent['web'] / len(burst) * ms:.0f} ms, postgres "
          f"{spent['postgres'] / len(burst) * ms:.0f} ms")  # fmt: skip
    print(f"jobs: {sim['jobs_ok']} of {sim['jobs_made']} succeeded")
    if real:
        durations = real["durations"]
        print(f"{args.real} real agents backing up at once (2,000 files each, own repository): "
              f"{real['ok']}/{args.real} succeeded in {real['wall']:.1f} s wall; per backup "
              f"median {statistics.median(durations):.1f} s, max {max(durations):.1f} s; "
              f"files per archive {real['files']}")  # fmt: skip


if __name__ == "__main__":
    main()
