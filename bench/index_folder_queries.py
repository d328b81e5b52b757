#!/usr/bin/env python
"""Issue 16: the file index's folder and subtree queries, on a folder added to day after day.

A folder's entries are numbered in spans, one per index batch that met new names there: a
log or mail folder that gets new files every day has a span per day. This builds an index
of --files entries in folders of 50-250 (as bench/file_index.py's tree), plus one folder
that got --daily new files on each of --days days (a span each), all held by one archive,
without borg (the app's own filenames.add and version rows), and times:
  - a folder's page (filesearch.folder_entries) of an ordinary folder and of the daily one;
  - the API's children of the daily folder (archive_items(parent=...): count and a page);
  - everything below a small folder and below the top folder (archive_items(path=...):
    count and the first page), the API's contents?path=, and the whole archive.

Usage: .venv/bin/python bench/index_folder_queries.py [--files 1000000] [--days 400]
                                                     [--daily 5] [--postgres]
"""

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from inprocess import run_on, setup_django  # noqa: E402

WORDS = "invoice report photo backup notes draft summary budget contract letter".split()


def build(files: int, days: int, daily: int):
    """The index of one archive: (archive, an ordinary folder, the daily folder, a small
    folder with a few folders under it, the top folder's path)."""
    from django.db import connection, transaction
    from django.utils import timezone

    from borgapp import filenames
    from borgapp.models import (
        Archive,
        IndexChain,
        IndexedArchive,
        IndexOwner,
        IndexSpan,
        IndexVersion,
        Repository,
    )

    rnd = random.Random(16)
    repo = Repository.objects.create(name="bench", location="/var/tmp/nowhere")
    archive = Archive.objects.create(repository=repo, name="a1", start=timezone.now())
    chain = IndexChain.objects.create(repository=repo, key="set", last_seq=1)
    IndexedArchive.objects.create(archive=archive, chain=chain, seq=1, borg_id="x")
    owner = IndexOwner.objects.create(user="root", group="root")
    nums = []

    def add(new):
        with transaction.atomic():
            filenames.lock()
            made = filenames.add(new)
        nums.extend(made.values())
        return made

    top = add({0: ["srv"]})[(0, "srv")]
    folders, made = [], 0
    while made < files:
        batch = {}
        for _ in range(200):
            folder = add({top: [f"{rnd.choice(WORDS)}{len(folders):06d}"]})
            number = next(iter(folder.values()))
            folders.append(number)
            count = min(rnd.randint(50, 250), files - made)
            batch[number] = [f"{rnd.choice(WORDS)}-{made + k:07d}.pdf" for k in range(count)]
            made += count
            if made >= files:
                break
        add(batch)
    logs = add({top: ["logs"]})[(top, "logs")]
    for day in range(days):
        spread = {folder: [f"new-{day}.txt"] for folder in rnd.sample(folders, 100)}
        add({logs: [f"{day:04d}-{k}.log" for k in range(daily)], **spread})
    with connection.cursor() as cursor:
        rows = [(num, chain.pk, 1, "-", 0o644, owner.pk, 1000, 0, "", True) for num in nums]
        for chunk in filenames.chunks(rows, 5000):
            cursor.executemany(
                f"INSERT INTO {IndexVersion._meta.db_table} (node_id, chain_id, first, type, "
                'mode, owner_id, size, mtime, target, healthy) VALUES (%s, %s, %s, %s, %s, %s, '
                "%s, %s, %s, %s)", chunk,
            )  # fmt: skip
        if connection.vendor == "postgresql":
            cursor.execute("VACUUM ANALYZE")
        else:
            cursor.execute("ANALYZE")
    spans = IndexSpan.objects.filter(folder=logs).count()
    print(f"index: {len(nums):,} entries, {len(folders):,} folders; srv/logs has "
          f"{days * daily:,} entries in {spans} spans")  # fmt: skip
    small = filenames.paths_of([folders[0]])[folders[0]]
    return archive, filenames.paths_of([folders[1]])[folders[1]], "srv/logs", small, "srv"


def timed(label: str, call, count: int = 15) -> None:
    call()
    times = []
    for _ in range(count):
        began = time.perf_counter()
        result = call()
        times.append(time.perf_counter() - began)
    times.sort()
    p95 = times[max(0, int(len(times) * 0.95) - 1)]
    print(f"{label}: p50 {statistics.median(times) * 1000:.1f} ms, p95 {p95 * 1000:.1f} ms "
          f"({result})")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--files", type=int, default=1_000_000)
    parser.add_argument("--days", type=int, default=400)
    parser.add_argument("--daily", type=int, default=5)
    parser.add_argument("--postgres", action="store_true")
    parser.add_argument("--by-number", type=int, help="filenames.BY_NUMBER (a subtree's "
                        "entries at most to be asked for by number)")  # fmt: skip
    args = parser.parse_args()
    run_on(args.postgres, run, args)


def run(args) -> None:
    setup_django("opscenter-folder-bench-")
    from borgapp import filenames, filesearch

    if args.by_number is not None:
        filenames.BY_NUMBER = args.by_number
    began = time.perf_counter()
    archive, plain, logs, small, top = build(args.files, args.days, args.daily)
    print(f"built in {time.perf_counter() - began:.0f} s")

    def page(folder):
        return lambda: f"{len(filesearch.folder_entries(archive, folder))} entries"

    def listing(deep: bool = False, **where):
        def call():
            items = filesearch.archive_items(archive, **where)
            count = items.count()
            at = count // 2 if deep else 0
            rows = filesearch.item_rows(items[at : at + 100])
            return f"{count:,} items, a page of {len(rows)} from item {at:,}"

        return call

    timed(f"folder page of {plain}", page(plain))
    timed(f"folder page of {logs}", page(logs))
    timed(f"API children of {logs}", listing(parent=logs))
    timed(f"API everything below {small}", listing(path=small))
    timed(f"API everything below {top}", listing(path=top), count=3)
    timed(f"API everything below {top}, a page halfway", listing(path=top, deep=True), count=3)
    timed("API the whole archive", listing(), count=3)


if __name__ == "__main__":
    main()
