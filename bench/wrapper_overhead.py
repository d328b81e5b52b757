#!/usr/bin/env python
"""PERF-03 and PERF-04: what the app adds on top of borg.

Backs up the same generated data set twice, side by side, on fresh repositories with the
same encryption and compression:

  bare    `borg create` run by hand (passphrase through a pipe, nothing else)
  app     `manage.py borg_backup` (Django start-up, job row, lease, --log-json progress
          parsing, catalog sync): the whole command as a script sees it

Then an unchanged re-run of each (the files cache makes it incremental). Prints the ratios:

  PERF-03  first backup, app / bare        target <= 1.03
  PERF-04  unchanged re-run, app / bare    target <= 1.5

Usage: .venv/bin/python bench/wrapper_overhead.py [--size-mb 1024] [--files 20000] [--rounds 5]
"""

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BORG = str(ROOT / ".venv" / "bin" / "borg")
PYTHON = str(ROOT / ".venv" / "bin" / "python")
PASSPHRASE = "bench passphrase"


def make_data(path: Path, size_mb: int, files: int, seed: int = 7) -> None:
    """A mix like a server's data: half compressible text, half incompressible binary."""
    rng = random.Random(seed)
    words = [rng.randbytes(rng.randint(3, 9)).hex().encode() for _ in range(5000)]
    per_file = size_mb * 1024 * 1024 // files
    for index in range(files):
        folder = path / f"d{index % 97:02d}" / f"e{index % 13}"
        folder.mkdir(parents=True, exist_ok=True)
        if index % 2:
            content = os.urandom(per_file)
        else:
            content = b" ".join(rng.choice(words) for _ in range(per_file // 8))[:per_file]
        (folder / f"f{index:06d}").write_bytes(content)


def bare_borg(args, base_dir: Path) -> float:
    os.sync()  # start every timed run with no dirty pages from the previous one
    read_fd, write_fd = os.pipe()
    os.write(write_fd, PASSPHRASE.encode())
    os.close(write_fd)
    env = {
        "PATH": os.environ["PATH"],
        "LANG": "C.UTF-8",
        "BORG_BASE_DIR": str(base_dir),
        "BORG_PASSPHRASE_FD": str(read_fd),
    }
    started = time.perf_counter()
    subprocess.run(
        [BORG, *args],
        env=env,
        pass_fds=(read_fd,),
        check=True,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    elapsed = time.perf_counter() - started
    os.close(read_fd)
    return elapsed


def app(args, env) -> tuple[float, dict]:
    os.sync()
    started = time.perf_counter()
    proc = subprocess.run(
        [PYTHON, str(ROOT / "manage.py"), *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
    )
    elapsed = time.perf_counter() - started
    if proc.returncode != 0:
        sys.exit(f"app command failed: {args}\n{proc.stderr}")
    return elapsed, (json.loads(proc.stdout) if "--json" in args else {})


def run_bare(work: Path, src: Path, round_no: int) -> dict:
    base = work / f"bare-base-{round_no}"
    repo = work / f"bare-repo-{round_no}"
    bare_borg(["init", "--encryption=repokey-blake2", str(repo)], base)
    first = bare_borg(["create", "--compression=lz4", f"{repo}::a1", str(src)], base)
    again = bare_borg(["create", "--compression=lz4", f"{repo}::a2", str(src)], base)
    return {"first_bare": first, "again_bare": again}


def run_app(work: Path, src: Path, round_no: int) -> dict:
    data = work / f"app-data-{round_no}"
    repos = data / "repos"
    repos.mkdir(parents=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BORG_", "OPSCENTER_"))}
    env.update(
        OPSCENTER_DATA_DIR=str(data),
        OPSCENTER_REPOSITORY_ROOTS=str(repos),
        BORG_PASSPHRASE=PASSPHRASE,
    )
    app(["migrate", "-v0"], env)
    app(["borg_init", "bench", "--location", str(repos / "bench")], env)
    first, first_job = app(["borg_backup", "bench", "--source", str(src), "--json"], env)
    again, again_job = app(["borg_backup", "bench", "--source", str(src), "--json"], env)
    return {
        "first_app": first,
        "first_job": first_job["duration"],
        "again_app": again,
        "again_job": again_job["duration"],
    }


def one_round(work: Path, src: Path, round_no: int) -> dict:
    # alternate which side goes first, so neither always meets the other's dirty pages
    if round_no % 2:
        figures = {**run_app(work, src, round_no), **run_bare(work, src, round_no)}
    else:
        figures = {**run_bare(work, src, round_no), **run_app(work, src, round_no)}
    figures["ratio_first"] = figures["first_app"] / figures["first_bare"]
    figures["ratio_first_job"] = figures["first_job"] / figures["first_bare"]
    figures["ratio_again"] = figures["again_app"] / figures["again_bare"]
    figures["ratio_again_job"] = figures["again_job"] / figures["again_bare"]
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=1024)
    parser.add_argument("--files", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--workdir", default=None, help="where to put data (default: /tmp)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="opscenter-bench-", dir=args.workdir) as tmp:
        work = Path(tmp)
        src = work / "src"
        print(f"generating {args.size_mb} MB in {args.files} files ...", flush=True)
        make_data(src, args.size_mb, args.files)
        rounds = []
        for number in range(args.rounds):
            figures = one_round(work, src, number)
            rounds.append(figures)
            shown = ", ".join(f"{k}={v:.2f}" for k, v in figures.items())
            print(f"round {number + 1}: {shown}", flush=True)
        median = {key: statistics.median(r[key] for r in rounds) for key in rounds[0]}
    print()
    print(f"medians of {args.rounds} rounds, {args.size_mb} MB in {args.files} files:")
    print(
        f"first backup   bare {median['first_bare']:.2f}s   app {median['first_app']:.2f}s "
        f"(job {median['first_job']:.2f}s)"
    )
    print(
        f"unchanged run  bare {median['again_bare']:.2f}s   app {median['again_app']:.2f}s "
        f"(job {median['again_job']:.2f}s)"
    )
    print("median of the per-round ratios (app over bare in the same round):")
    print(f"PERF-03 first backup, whole command:  {median['ratio_first']:.3f}   (target <= 1.03)")
    print(f"PERF-03 first backup, job only:       {median['ratio_first_job']:.3f}")
    print(f"PERF-04 unchanged run, whole command: {median['ratio_again']:.3f}   (target <= 1.5)")
    print(f"PERF-04 unchanged run, job only:      {median['ratio_again_job']:.3f}")


if __name__ == "__main__":
    main()
