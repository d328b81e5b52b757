#!/usr/bin/env python
"""What a database source costs: a PostgreSQL database dumped into a backup through the app,
beside the same dump tool alone and the hand-made pipeline.

Starts a private PostgreSQL server (Debian's packages, as the tests do), fills a database of
--size-mb, then per round:

  devnull  pg_dump --format=custom into /dev/null            (the dump tool alone: the floor)
  hand     pg_dump --format=custom | borg create REPO::a -   (what an operator would script)
  app      manage.py borg_backup REPO --database SOURCE      (named pipe, --read-special, job
                                                              row, lease, catalog: the whole
                                                              command as a script sees it)

While the app runs, a sampler adds up the regular files in the app's scratch folders (its
TMPDIR): the peak is the extra disk space the dump took on its way into borg.

Prints the medians and ratios (target: app / hand <= 1.1; extra disk: none).

Usage (as root: the server runs as the postgres user):
  .venv/bin/python bench/dump_overhead.py [--size-mb 1024] [--rounds 3]
"""

import argparse
import glob
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from common import free_port

ROOT = Path(__file__).resolve().parent.parent
BORG = str(ROOT / ".venv" / "bin" / "borg")
PYTHON = str(ROOT / ".venv" / "bin" / "python")
PASSPHRASE = "bench passphrase"
PG_PASSWORD = "bench-pg-password"


def pg_bin(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    if not found:
        sys.exit("PostgreSQL's server is missing (make test installs it).")
    return found[-1]


def start_postgres(base: Path) -> int:
    shutil.chown(base, "postgres")
    pwfile = base / "pw"
    pwfile.write_text(PG_PASSWORD + "\n")
    shutil.chown(pwfile, "postgres")
    port = free_port()
    as_pg = ["runuser", "-u", "postgres", "--"]
    subprocess.run([*as_pg, pg_bin("initdb"), "-D", str(base / "data"), "-U", "admin",
                    "-A", "scram-sha-256", f"--pwfile={pwfile}", "--no-sync"],
                   check=True, capture_output=True)  # fmt: skip
    subprocess.run([*as_pg, pg_bin("pg_ctl"), "-D", str(base / "data"), "-w", "-l",
                    str(base / "log"), "-o", f"-p {port} -k {base} -c listen_addresses=127.0.0.1",
                    "start"], check=True, capture_output=True)  # fmt: skip
    return port


def stop_postgres(base: Path) -> None:
    subprocess.run(["runuser", "-u", "postgres", "--", pg_bin("pg_ctl"), "-D",
                    str(base / "data"), "-m", "fast", "stop"], capture_output=True)  # fmt: skip


def psql(port: int, sql: str, db: str = "postgres") -> None:
    env = {**os.environ, "PGPASSWORD": PG_PASSWORD}  # the bench's own server, by hand
    subprocess.run(["psql", "-h", "127.0.0.1", "-p", str(port), "-U", "admin", "-q", "-v",
                    "ON_ERROR_STOP=1", "-c", sql, db], env=env, check=True)  # fmt: skip


def fill(port: int, size_mb: int) -> None:
    rows = size_mb * 1024 * 1024 // 230
    psql(port, "CREATE DATABASE bench")
    psql(
        port,
        "CREATE TABLE big AS SELECT g AS id, md5(g::text) AS a, md5((g * 7)::text) AS b, "
        f"repeat(md5(random()::text), 4) AS c FROM generate_series(1, {rows}) g",
        "bench",
    )


def pg_env(work: Path, port: int) -> dict:
    passfile = work / "pgpass"
    passfile.write_text(f"127.0.0.1:{port}:*:admin:{PG_PASSWORD}\n")
    passfile.chmod(0o600)
    return {"PATH": os.environ["PATH"], "LANG": "C.UTF-8", "PGPASSFILE": str(passfile)}


def dump_argv(port: int, output: str | None) -> list[str]:
    """pg_dump as the app runs it; `output` None: to stdout (pg_dump takes no `-` for that)."""
    to = [f"--file={output}"] if output else []
    return ["pg_dump", "--host=127.0.0.1", f"--port={port}", "--username=admin", "--no-password",
            "--format=custom", "--no-sync", *to, "bench"]  # fmt: skip


def timed(func) -> float:
    os.sync()
    started = time.perf_counter()
    func()
    return time.perf_counter() - started


def devnull(work: Path, port: int) -> float:
    env = pg_env(work, port)
    return timed(lambda: subprocess.run(dump_argv(port, "/dev/null"), env=env, check=True))


def hand(work: Path, port: int, round_no: int) -> float:
    repo, base = work / f"hand-repo-{round_no}", work / f"hand-base-{round_no}"
    borg_env = {"PATH": os.environ["PATH"], "LANG": "C.UTF-8", "BORG_BASE_DIR": str(base),
                "BORG_PASSPHRASE": PASSPHRASE}  # fmt: skip
    subprocess.run([BORG, "init", "--encryption=repokey-blake2", str(repo)], env=borg_env,
                   check=True)  # fmt: skip
    env = pg_env(work, port)

    def pipeline():
        dump = subprocess.Popen(dump_argv(port, None), env=env, stdout=subprocess.PIPE)
        subprocess.run([BORG, "create", "--compression=lz4", f"{repo}::a", "-"],
                       stdin=dump.stdout, env=borg_env, check=True)  # fmt: skip
        dump.stdout.close()
        if dump.wait() != 0:
            sys.exit("pg_dump failed")

    return timed(pipeline)


def scratch_bytes(folder: Path) -> int:
    """Disk taken by the regular files under `folder` (the named pipes take none)."""
    total = 0
    for path, _, files in os.walk(folder):
        for name in files:
            try:
                st = os.lstat(os.path.join(path, name))
            except OSError:
                continue
            if st.st_mode & 0o170000 == 0o100000:
                total += st.st_blocks * 512
    return total


def app(work: Path, port: int, round_no: int) -> tuple[float, float, int]:
    data = work / f"app-data-{round_no}"
    repos = data / "repos"
    repos.mkdir(parents=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BORG_", "OPSCENTER_"))}
    scratch = work / f"app-tmp-{round_no}"  # the app's TMPDIR: where its scratch folders go
    scratch.mkdir()
    env.update(OPSCENTER_DATA_DIR=str(data), OPSCENTER_REPOSITORY_ROOTS=str(repos),
               BORG_PASSPHRASE=PASSPHRASE, TMPDIR=str(scratch))  # fmt: skip

    def manage(*args) -> str:
        proc = subprocess.run([PYTHON, str(ROOT / "manage.py"), *map(str, args)], env=env,
                              cwd=ROOT, capture_output=True, text=True)  # fmt: skip
        if proc.returncode != 0:
            sys.exit(f"manage.py {args[0]} failed: {proc.stderr}")
        return proc.stdout

    manage("migrate", "-v0")
    manage("borg_init", "bench", "--location", repos / "bench")
    pw = work / "db.pw"
    pw.write_text(PG_PASSWORD + "\n")
    manage("borg_database", "add", "bench-db", "--kind", "postgresql", "--port", port,
           "--user", "admin", "--database", "bench", "--password-file", pw)  # fmt: skip
    peak, stop = [0], threading.Event()

    def sample():
        while not stop.is_set():
            peak[0] = max(peak[0], scratch_bytes(scratch))
            time.sleep(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out = {}

    def backup():
        out.update(json.loads(manage("borg_backup", "bench", "--database", "bench-db", "--json")))

    elapsed = timed(backup)
    stop.set()
    sampler.join()
    return elapsed, out["duration"], peak[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="opscenter-bench-") as tmp:
        work = Path(tmp)
        base = Path(tempfile.mkdtemp(prefix="opscenter-bench-pg-"))  # the server's user enters
        port = start_postgres(base)
        try:
            print(f"filling a {args.size_mb} MB table ...", flush=True)
            fill(port, args.size_mb)
            rounds = []
            for number in range(args.rounds):
                figures = {"devnull": devnull(work, port), "hand": hand(work, port, number)}
                figures["app"], figures["app_job"], figures["scratch_peak"] = app(
                    work, port, number
                )
                rounds.append(figures)
                print(f"round {number + 1}: " + ", ".join(
                    f"{k}={v:.2f}" for k, v in figures.items()), flush=True)  # fmt: skip
        finally:
            stop_postgres(base)
            shutil.rmtree(base, ignore_errors=True)
    median = {key: statistics.median(r[key] for r in rounds) for key in rounds[0]}
    print()
    print(f"medians of {args.rounds} rounds, a {args.size_mb} MB PostgreSQL table:")
    print(f"pg_dump > /dev/null        {median['devnull']:.2f} s")
    print(f"pg_dump | borg create -    {median['hand']:.2f} s")
    print(f"app (whole command)        {median['app']:.2f} s   (job {median['app_job']:.2f} s)")
    print(f"app / hand-made pipeline   {median['app'] / median['hand']:.3f}   (target <= 1.1)")
    print(f"app job / hand             {median['app_job'] / median['hand']:.3f}")
    print(f"app / dump alone           {median['app'] / median['devnull']:.3f}")
    print(f"peak extra disk in the app's scratch folders: {int(median['scratch_peak'])} bytes "
          "(target: none)")  # fmt: skip


if __name__ == "__main__":
    main()
