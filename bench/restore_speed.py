#!/usr/bin/env python
"""How fast restores come back through the app, beside bare borg on the same archive.

Builds a tree of --size-mb (incompressible files, nested four folders deep), backs it up once,
then per round (medians printed):

  bare extract     borg extract REPO::A                      (in an empty folder)
  app extract      manage.py borg_extract ... --target T     (the command as a script sees
                                                              it: Django's start, the job row,
                                                              the lease, the held target) and
                   the job's own duration (borg's part and the app's checks around it)
  bare export      borg export-tar REPO::A - > /dev/null, and through `| cat > /dev/null`
                   (what a pipe to any reader costs, the app's included)
  app download     GET /api/v1/archives/ID/download/?path=..&format=tar to the last byte,
                   from the app as `make run` serves it (gunicorn, hypercorn), read by curl

Then an archive of --files small files: the time to the first byte of one file's download
(the first file of the archive and the last one borg reaches), over the same server.

Targets (issue 14): app / bare within 1.05x; first byte of a single file under 2 s.

Usage: .venv/bin/python bench/restore_speed.py [--size-mb 1024] [--files 100000] [--rounds 3]
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

from common import free_port, wait_until_up

ROOT = Path(__file__).resolve().parent.parent
BORG = str(ROOT / ".venv" / "bin" / "borg")
PYTHON = str(ROOT / ".venv" / "bin" / "python")
PASSPHRASE = "bench passphrase"


def build_tree(top: Path, size_mb: int) -> None:
    """size_mb files of 1 MiB in 4-deep folders, random bytes (nothing to compress)."""
    for index in range(size_mb):
        folder = top / f"a{index % 4}" / f"b{index % 7}" / f"c{index % 11}" / f"d{index % 13}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"file-{index:05d}.bin").write_bytes(os.urandom(2**20))


def build_many(top: Path, count: int) -> None:
    for index in range(count):
        folder = top / f"dir-{index // 1000:03d}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"f{index:06d}.txt").write_bytes(f"small file {index}\n".encode())


class App:
    """One install: a data folder, a repository, the manage.py commands, and its web server."""

    def __init__(self, work: Path):
        self.work = work
        self.repos, self.restore = work / "repos", work / "restore"
        for folder in (self.repos, self.restore, work / "data"):
            folder.mkdir()
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("BORG_", "OPSC"))}
        self.env.update(
            OPSCENTER_DATA_DIR=str(work / "data"),
            OPSCENTER_REPOSITORY_ROOTS=str(self.repos),
            OPSCENTER_RESTORE_ROOTS=str(self.restore),
            OPSCENTER_DOWNLOAD_LEASE_WAIT="60",
        )
        self.server = None

    def manage(self, *args) -> str:
        proc = subprocess.run([PYTHON, str(ROOT / "manage.py"), *map(str, args)], env=self.env,
                              cwd=ROOT, capture_output=True, text=True)  # fmt: skip
        if proc.returncode != 0:
            sys.exit(f"manage.py {args[0]} failed: {proc.stderr}")
        return proc.stdout

    def borg_env(self) -> dict:
        return {**self.env, "BORG_PASSPHRASE": PASSPHRASE,
                "BORG_BASE_DIR": str(self.work / "data" / "borg")}  # fmt: skip

    def serve(self) -> tuple[str, str]:
        """gunicorn as `make run` starts it; returns (base URL, an admin's API token)."""
        self.manage("collectstatic", "--noinput", "-v0")
        port = free_port()
        log = open(self.work / "web.log", "w")  # noqa: SIM115 (kept open while it serves)
        self.server = subprocess.Popen(
            [str(ROOT / ".venv" / "bin" / "gunicorn"), "opscenter.wsgi",
             "--config", "opscenter/gunicorn.conf.py"],
            env={**self.env, "GUNICORN_BIND": f"127.0.0.1:{port}", "WEB_WORKERS": "2"},
            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        token = self.manage(
            "shell", "-c",
            "from django.contrib.auth.models import User;"
            "from rest_framework.authtoken.models import Token;"
            "u=User.objects.create_superuser('bench', password='bench-password-1');"
            "print(Token.objects.create(user=u).key)",
        ).split()[-1]  # fmt: skip
        base = f"http://127.0.0.1:{port}"
        wait_until_up(base)
        return base, token

    def stop(self) -> None:
        if self.server is not None:
            os.killpg(self.server.pid, 15)
            self.server.wait(timeout=30)


def timed(func) -> float:
    os.sync()  # the previous run's writes are on disk before this one is timed
    start = time.perf_counter()
    func()
    return time.perf_counter() - start


def fetch(url: str, token: str, first_byte_only: bool = False) -> tuple[float, float, int]:
    """(seconds to the first body byte, seconds to the last, bytes)."""
    request = urllib.request.Request(url, headers={"Authorization": f"Token {token}"})
    start = time.perf_counter()
    with urllib.request.urlopen(request, timeout=600) as answer:
        data = answer.read(1)
        first = time.perf_counter() - start
        total = len(data)
        while not first_byte_only:
            chunk = answer.read(1 << 20)
            if not chunk:
                break
            total += len(chunk)
        if first_byte_only:
            total += len(answer.read())
    return first, time.perf_counter() - start, total


def export_through_cat(app: App, location: str) -> None:
    """borg export-tar REPO::A - | cat > /dev/null, without a shell."""
    with open(os.devnull, "wb") as sink:
        cat = subprocess.Popen(["cat"], stdin=subprocess.PIPE, stdout=sink)
        subprocess.run([BORG, "export-tar", location, "-"], stdout=cat.stdin,
                       env=app.borg_env(), check=True)  # fmt: skip
        cat.stdin.close()
        cat.wait()


def curl(url: str, token: str) -> float:
    """The whole download to /dev/null with curl (a client that costs little CPU: the
    machine's cores go to borg and the server, as on a real server with a remote client)."""
    out = subprocess.run(
        ["curl", "-sS", "--fail", "-o", "/dev/null", "-w", "%{time_total} %{size_download}",
         "-H", f"Authorization: Token {token}", url],
        capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    curl.size = int(out[1])
    return float(out[0])


def idle(base: str, token: str) -> None:
    """Wait until no job runs: a single file's download answers before borg has read to the
    archive's end, and the next download of the repository would wait for its lease."""
    request = urllib.request.Request(
        f"{base}/api/v1/jobs/?status=running", headers={"Authorization": f"Token {token}"}
    )
    while json.loads(urllib.request.urlopen(request).read())["count"]:
        time.sleep(0.2)


def archive_id(app: App, name: str) -> int:
    out = app.manage("shell", "-c", f"from borgapp.models import Archive;"
                     f"print(Archive.objects.get(name={name!r}).pk)")  # fmt: skip
    return int(out.split()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size-mb", type=int, default=1024)
    parser.add_argument("--files", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--work", default=os.environ.get("TMPDIR", "/var/tmp"))
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="restore-bench-", dir=args.work))
    app = App(work)
    try:
        run(app, work, args)
    finally:
        app.stop()
        shutil.rmtree(work, ignore_errors=True)


def run(app: App, work: Path, args) -> None:
    src = work / "src" / "srv" / "share"
    build_tree(src, args.size_mb)
    pw = work / "pw"
    pw.write_text(PASSPHRASE + "\n")
    app.manage("migrate", "-v0")
    app.manage("borg_init", "bench", "--location", app.repos / "bench", "--passphrase-file", pw)
    made = json.loads(app.manage("borg_backup", "bench", "--source", src, "--json"))
    name = made["result"]["archive_name"]
    location = f"{app.repos / 'bench'}::{name}"
    base, token = app.serve()
    folder = str(src).lstrip("/")
    url = f"{base}/api/v1/archives/{archive_id(app, name)}/download/?path={folder}&format=tar"
    figures = {key: [] for key in ("bare_extract", "app_extract", "app_job", "bare_export",
                                   "bare_export_cat", "app_download")}  # fmt: skip
    for round_no in range(args.rounds):
        bare_dir = work / f"bare-{round_no}"
        bare_dir.mkdir()
        figures["bare_extract"].append(timed(lambda d=bare_dir: subprocess.run(
            [BORG, "extract", location], cwd=d, env=app.borg_env(), check=True)))  # fmt: skip
        shutil.rmtree(bare_dir)
        target = app.restore / f"app-{round_no}"
        os.sync()
        start = time.perf_counter()
        out = json.loads(app.manage("borg_extract", "bench", name, "--target", target, "--json"))
        figures["app_extract"].append(time.perf_counter() - start)
        figures["app_job"].append(out["duration"])
        shutil.rmtree(target)
        with open(os.devnull, "wb") as sink:
            figures["bare_export"].append(timed(lambda s=sink: subprocess.run(
                [BORG, "export-tar", location, "-"], stdout=s, env=app.borg_env(),
                check=True)))  # fmt: skip
        figures["bare_export_cat"].append(timed(lambda: export_through_cat(app, location)))
        os.sync()
        figures["app_download"].append(curl(url, token))
    med = {key: statistics.median(values) for key, values in figures.items()}
    print(f"tree: {args.size_mb} MiB in {args.size_mb} files; {args.rounds} rounds (medians)")
    print(f"  bare borg extract          {med['bare_extract']:7.2f} s")
    print(f"  app borg_extract (command) {med['app_extract']:7.2f} s  "
          f"ratio {med['app_extract'] / med['bare_extract']:.3f}")  # fmt: skip
    print(f"  app extract job duration   {med['app_job']:7.2f} s  "
          f"ratio {med['app_job'] / med['bare_extract']:.3f}")  # fmt: skip
    print(f"  bare borg export-tar       {med['bare_export']:7.2f} s")
    print(
        f"  bare export-tar | cat      {med['bare_export_cat']:7.2f} s  (any reader of borg's "
        "stream pays for this pipe)"
    )
    print(
        f"  app download (HTTP, tar)   {med['app_download']:7.2f} s  "
        f"ratio {med['app_download'] / med['bare_export']:.3f}  ({curl.size / 2**20:,.0f} MiB)"
    )

    many = work / "src" / "srv" / "many"
    build_many(many, args.files)
    made = json.loads(app.manage("borg_backup", "bench", "--source", many, "--prefix", "many",
                                 "--json"))  # fmt: skip
    many_id = archive_id(app, made["result"]["archive_name"])
    for label, index in (("first", 0), ("last", args.files - 1)):
        path = f"{str(many).lstrip('/')}/dir-{index // 1000:03d}/f{index:06d}.txt"
        firsts = []
        for _ in range(args.rounds):
            idle(base, token)
            one = f"{base}/api/v1/archives/{many_id}/download/?path={path}"
            firsts.append(fetch(one, token, first_byte_only=True)[0])
        print(f"  first byte, {label} file of {args.files:,}: "
              f"{statistics.median(firsts):.2f} s (target < 2 s)")  # fmt: skip


if __name__ == "__main__":
    main()
