#!/usr/bin/env python
"""PERF-01: a 100-row page of `/api/v1/archives/` with 10,000 real archives in the catalog,
while a backup runs on the same repository, against the same list through `borg list`.

Uses the repository bench/make_archives.py builds (10,000 real `borg create` archives; run it
first, it takes about half an hour once). Copies it into a fresh data directory, imports it
through `manage.py borg_import` (its catalog sync is timed: PERF-02 at 10,000), starts gunicorn
and the worker on 127.0.0.1, starts a backup on that repository through the API, then times
N page requests with a token while the backup runs. Then, with the repository idle again, it
times `borg list --json` of the same repository.

Usage: .venv/bin/python bench/api_list.py [--archives 10000] [--requests 200]
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from common import free_port, stop

ROOT = Path(__file__).resolve().parent.parent
PYTHON = str(ROOT / ".venv" / "bin" / "python")
PASSPHRASE = "bench passphrase"


def manage(args, env, **kwargs):
    return subprocess.run(
        [PYTHON, str(ROOT / "manage.py"), *args],
        env=env,
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
        **kwargs,
    )


def make_token(env) -> str:
    script = """
import django, os
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "opscenter.settings")
django.setup()
from django.contrib.auth.models import User
from rest_framework.authtoken.models import Token
user = User.objects.create_superuser("bench", password="bench-password-123")
print(Token.objects.create(user=user).key)
"""
    return manage(["shell", "-c", script], env).stdout.strip().splitlines()[-1]


def request(url, key, data=None):
    req = urllib.request.Request(
        url,
        headers={"Authorization": f"Token {key}", "Content-Type": "application/json"},
        data=json.dumps(data).encode() if data else None,
    )
    started = time.perf_counter()
    with urllib.request.urlopen(req, timeout=60) as response:
        body = response.read()
    return time.perf_counter() - started, json.loads(body)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--archives", type=int, default=10000)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--dest", default="/var/tmp/opscenter-bench")
    args = parser.parse_args()
    built = Path(args.dest) / f"repo-{args.archives}"
    if not (Path(args.dest) / f"repo-{args.archives}.done").exists():
        sys.exit(f"No repository with {args.archives} archives yet: run bench/make_archives.py")
    work = Path(tempfile.mkdtemp(prefix="opscenter-bench-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BORG_", "OPSCENTER_"))}
    env.update(OPSCENTER_DATA_DIR=str(work / "data"), BORG_PASSPHRASE=PASSPHRASE)
    manage(["migrate", "-v0"], env)
    manage(["collectstatic", "--noinput", "-v0"], env)
    location = work / "data" / "repos" / "bench"
    shutil.copytree(built, location)
    started = time.perf_counter()
    manage(["borg_import", "bench", "--location", str(location)], env)
    import_seconds = time.perf_counter() - started
    key = make_token(env)
    src = work / "src"
    src.mkdir()
    for index in range(60):
        (src / f"f{index}").write_bytes(os.urandom(1_000_000))
    port = free_port()
    web = subprocess.Popen(
        [
            str(ROOT / ".venv" / "bin" / "gunicorn"),
            "opscenter.wsgi",
            "--bind",
            f"127.0.0.1:{port}",
            "--workers",
            "2",
        ],
        env=env,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    worker = subprocess.Popen(
        [PYTHON, str(ROOT / "manage.py"), "worker"],
        env=env,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}/api/v1"
    try:
        for _ in range(100):
            try:
                request(f"{base}/jobs/", key)
                break
            except OSError:
                time.sleep(0.2)
        _, job = request(
            f"{base}/repositories/bench/backup/",
            key,
            {"sources": [str(src)], "compression": "lzma,6"},
        )
        while request(f"{base}/jobs/{job['id']}/", key)[1]["status"] != "running":
            time.sleep(0.1)
        times = []
        for number in range(args.requests):
            elapsed, page = request(
                f"{base}/archives/?repository=bench&page={1 + number % 50}", key
            )
            assert len(page["results"]) == 100 and page["count"] >= args.archives
            times.append(elapsed)
        status = request(f"{base}/jobs/{job['id']}/", key)[1]["status"]
        while request(f"{base}/jobs/{job['id']}/", key)[1]["status"] in ("queued", "running"):
            time.sleep(0.5)
    finally:
        for proc in (web, worker):
            stop(proc)
    borg_env = {
        "PATH": os.environ["PATH"],
        "BORG_BASE_DIR": str(work / "data" / "borg"),
        "BORG_PASSPHRASE": PASSPHRASE,
    }
    borg_times = []
    for _ in range(5):
        started = time.perf_counter()
        subprocess.run(
            [
                str(ROOT / ".venv" / "bin" / "borg"),
                "list",
                "--json",
                str(work / "data" / "repos" / "bench"),
            ],
            env=borg_env,
            check=True,
            capture_output=True,
        )
        borg_times.append(time.perf_counter() - started)
    times.sort()
    p50 = statistics.median(times)
    p95 = times[int(len(times) * 0.95) - 1]
    borg_list = statistics.median(borg_times)
    print(
        f"{args.archives} real archives; import with catalog sync {import_seconds:.1f} s; "
        f"{args.requests} requests of a 100-row page while a backup ran (backup status "
        f"after the last request: {status})"
    )
    print(
        f"PERF-01 API page   p50 {p50 * 1000:.1f} ms   p95 {p95 * 1000:.1f} ms   "
        "(target p95 < 50 ms)"
    )
    print(
        f"borg list --json   median {borg_list * 1000:.0f} ms (after the backup; during it "
        "borg waits for the lock)"
    )
    print(
        f"ratio borg list / API: {borg_list / p50:.0f}x at the median, {borg_list / p95:.0f}x "
        "at p95   (target >= 100x)"
    )
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
