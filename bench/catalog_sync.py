#!/usr/bin/env python
"""PERF-02: the database side of a catalog sync (one bulk upsert of `borg list` output).

Times `catalog.apply_listing` for N archives: the first sync (all new), an unchanged
resync, and a resync after a prune removed a tenth and a backup added one. Add borg's own
`borg list --json` time (printed at the end, measured on a small repository) for the whole
sync. Target: 1,000 archives synced in under 1.5 s.

Usage: .venv/bin/python bench/catalog_sync.py [--archives 1000]
"""

import argparse
import os
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def listing(count: int, start: datetime) -> list[dict]:
    return [
        {
            "name": f"daily-{(start + timedelta(hours=i)).strftime('%Y-%m-%dT%H:%M:%SZ')}",
            "id": f"{i:064x}",
            "start": (start + timedelta(hours=i)).strftime("%Y-%m-%dT%H:%M:%S.000000"),
            "end": (start + timedelta(hours=i, minutes=3)).strftime("%Y-%m-%dT%H:%M:%S.000000"),
            "hostname": "server-1",
            "username": "root",
            "comment": "",
        }
        for i in range(count)
    ]


def timed(func):
    started = time.perf_counter()
    result = func()
    return time.perf_counter() - started, result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--archives", type=int, default=1000)
    args = parser.parse_args()
    data = tempfile.mkdtemp(prefix="opscenter-bench-")
    os.environ.update(OPSCENTER_DATA_DIR=data, OPSCENTER_REPOSITORY_ROOTS=f"{data}/repos")
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "opscenter.settings")
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    from borgapp import borg
    from borgapp.catalog import apply_listing
    from borgapp.models import Repository
    from borgapp.operations import borg_config

    repo = Repository.objects.create(name="bench", location=f"{data}/repos/bench", state="ready")
    items = listing(args.archives, datetime(2024, 1, 1, tzinfo=UTC))
    first, report = timed(lambda: apply_listing(repo, items))
    print(f"first sync of {args.archives} archives: {first * 1000:.0f} ms {report}")
    again, report = timed(lambda: apply_listing(repo, items))
    print(f"unchanged resync:                {again * 1000:.0f} ms {report}")
    changed = items[args.archives // 10 :] + listing(1, datetime(2030, 1, 1, tzinfo=UTC))
    after, report = timed(lambda: apply_listing(repo, changed))
    print(f"after prune + backup:            {after * 1000:.0f} ms {report}")

    # borg's side: one `borg list --json` on a small repository (the floor of a borg call)
    config = borg_config()
    location = f"{data}/repos/floor"
    os.makedirs(f"{data}/repos", exist_ok=True)
    borg.run(borg.init_cmd(location, "none"), config)
    borg.run(borg.create_cmd(location, "a", [str(ROOT / "manage.py")]), config)
    listed, _ = timed(lambda: borg.run(borg.list_cmd(location), config))
    print(f"borg list --json (1 archive):    {listed * 1000:.0f} ms")
    print(
        f"PERF-02 estimate for {args.archives} archives: "
        f"{(first + listed) * 1000:.0f} ms first sync, {(again + listed) * 1000:.0f} ms resync "
        "(target < 1500 ms; borg list grows slowly with the archive count)"
    )


if __name__ == "__main__":
    main()
