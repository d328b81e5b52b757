#!/usr/bin/env python
"""Build (once) a real borg repository holding N archives, for PERF-01 and PERF-02.

Each archive is a real `borg create` of a small, slightly changing tree, made one after the
other (borg allows one writer). To make 10,000 of them in about half an hour rather than
three hours, the creates run through borg's own command-line entry point inside this one
Python process (`borg.archiver.Archiver`), which saves borg's start-up per archive; the
repository is exactly what the `borg` command makes (`borg check` passes on it). The
result is kept under --dest and reused; a re-run continues where an interrupted one stopped.

Usage: .venv/bin/python bench/make_archives.py [--count 10000] [--dest /var/tmp/opscenter-bench]
Prints the repository path.
"""

import argparse
import os
import sys
import time
from pathlib import Path

PASSPHRASE = "bench passphrase"


def borg(*argv: str) -> None:
    from borg.archiver import Archiver

    archiver = Archiver()
    rc = archiver.run(archiver.get_args(["borg", *argv], None))
    if rc not in (0, None):
        raise SystemExit(f"borg {argv[0]} failed with rc {rc}")


def _has_archive(repo: Path, name: str) -> bool:
    from borg.archiver import Archiver

    archiver = Archiver()
    argv = ["borg", "list", "--short", "--glob-archives", name, "--", str(repo)]
    from contextlib import redirect_stdout
    from io import StringIO

    out = StringIO()
    with redirect_stdout(out):
        archiver.run(archiver.get_args(argv, None))
    return bool(out.getvalue().strip())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--count", type=int, default=10000)
    parser.add_argument("--dest", default="/var/tmp/opscenter-bench")
    args = parser.parse_args()
    dest = Path(args.dest)
    repo = dest / f"repo-{args.count}"
    done = dest / f"repo-{args.count}.done"
    src = dest / "src"
    if done.exists():
        print(repo)
        return
    os.environ.update(BORG_BASE_DIR=str(dest / "borg-base"), BORG_PASSPHRASE=PASSPHRASE, TZ="UTC")
    dest.mkdir(parents=True, exist_ok=True)
    src.mkdir(exist_ok=True)
    if not repo.exists():
        borg("init", "--encryption=repokey-blake2", "--", str(repo))
    existing = 0
    while (repo / "data").exists() and existing < args.count:
        # the names are bench-000000, bench-000001, ...: find the first one missing
        if not _has_archive(repo, f"bench-{existing:06d}"):
            break
        existing += 1000
    existing = max(0, existing - 1000)
    while existing < args.count and _has_archive(repo, f"bench-{existing:06d}"):
        existing += 1
    started = time.monotonic()
    for index in range(existing, args.count):
        (src / "counter").write_text(f"{index}\n")
        borg("create", "--compression=lz4", "--", f"{repo}::bench-{index:06d}", str(src))
        if index % 500 == 0:
            rate = (index - existing + 1) / (time.monotonic() - started)
            print(f"{index} archives, {rate:.1f}/s", file=sys.stderr, flush=True)
    done.write_text("ok\n")
    print(repo)


if __name__ == "__main__":
    main()
