#!/usr/bin/env python
"""Build (once) a real borg repository holding N archives, for PERF-01 and PERF-02.

Each archive is a real `borg create` of a small, slightly changing tree, made one after the
other (borg allows one writer). About 0.4 s per archive here, so 10,000 take about an hour;
the result is kept under --dest and reused by bench/api_list.py and bench/catalog_sync.py.
A re-run continues where an interrupted build stopped.

Usage: .venv/bin/python bench/make_archives.py [--count 10000] [--dest /var/tmp/opscenter-bench]
"""

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BORG = str(ROOT / ".venv" / "bin" / "borg")
PASSPHRASE = "bench passphrase"


def borg(args, env, **kwargs):
    return subprocess.run([BORG, *args], env=env, check=True, capture_output=True, **kwargs)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--count", type=int, default=10000)
    parser.add_argument("--dest", default="/var/tmp/opscenter-bench")
    args = parser.parse_args()
    dest = Path(args.dest)
    repo = dest / f"repo-{args.count}"
    src = dest / "src"
    env = {
        "PATH": os.environ["PATH"],
        "BORG_BASE_DIR": str(dest / "borg-base"),
        "BORG_PASSPHRASE": PASSPHRASE,
        "TZ": "UTC",
    }
    dest.mkdir(parents=True, exist_ok=True)
    src.mkdir(exist_ok=True)
    if not repo.exists():
        borg(["init", "--encryption=repokey-blake2", "--", str(repo)], env)
    existing = len(borg(["list", "--short", "--", str(repo)], env, text=True).stdout.split())
    started = time.monotonic()
    for index in range(existing, args.count):
        (src / "counter").write_text(f"{index}\n")
        # Names as the app makes them: a prefix and a timestamp (made unique by the index).
        name = f"bench-{index:06d}"
        borg(["create", "--compression=lz4", "--", f"{repo}::{name}", str(src)], env)
        if index % 500 == 0:
            rate = (index - existing + 1) / (time.monotonic() - started)
            print(f"{index} archives, {rate:.1f}/s", file=sys.stderr, flush=True)
    (dest / f"repo-{args.count}.done").write_text("ok\n")
    print(repo)


if __name__ == "__main__":
    main()
