#!/usr/bin/env python
"""Issue 16: the file index against borg's own speed, size and memory.

Builds a tree of --files files (nested 4-6 folders deep, varied names), backs it up through
the app (borg_backup, a real repository), then for the first archive and for each of --days
daily archives after --change-percent of the files changed (half modified, a quarter
deleted, a quarter new):
  - `borg list --json-lines > /dev/null` on the archive, through the app's door to borg
    (the yardstick the index is measured against; best of two);
  - the index job of that archive (wall seconds, and the ratio to the listing);
  - the index's size on disk (SQLite pages of its tables and indexes, per entry of the first
    archive, and as a multiple of the first archive's index after all days);
  - the process's peak RSS after each index (flat: it must not grow with the archive);
  - how many entries each later archive took from the previous one's prints, and the size
    of the prints kept beside the database (borgapp.fileprints).
Then the p50/p95 of a name-fragment search over every archive (random fragments of names
that exist) and of a folder's page of the tree.

Usage: .venv/bin/python bench/file_index.py [--files 200000] [--days 5] [--change-percent 1]
                                           [--timed-days N] [--postgres]
                                           [--workdir /var/tmp/opscenter-index-bench]
"""

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from inprocess import run_on, setup_django  # noqa: E402

WORDS = ("invoice report photo backup notes draft summary budget contract letter scan "
         "minutes plan design export data log config index readme").split()  # fmt: skip
EXTENSIONS = ("pdf", "txt", "jpg", "csv", "json", "md", "log", "png", "html", "py")
PASSPHRASE = "bench index passphrase"


def name_for(rnd: random.Random, serial: int) -> str:
    return f"{rnd.choice(WORDS)}-{serial:07d}-{rnd.randrange(1000):03d}.{rnd.choice(EXTENSIONS)}"


def generate(src: Path, count: int, rnd: random.Random) -> tuple[list[Path], list[Path]]:
    files, folders, serial = [], [], 0
    while len(files) < count:
        depth = rnd.randint(4, 6)
        folder = src.joinpath(*(f"{rnd.choice(WORDS)}{rnd.randrange(8)}" for _ in range(depth)))
        folder.mkdir(parents=True, exist_ok=True)
        folders.append(folder)
        for _ in range(min(rnd.randint(50, 250), count - len(files))):
            serial += 1
            path = folder / name_for(rnd, serial)
            path.write_bytes(rnd.randbytes(rnd.randint(10, 2000)))
            files.append(path)
    return files, folders


def change(files: list[Path], folders: list[Path], percent: float, rnd: random.Random,
           day: int) -> None:  # fmt: skip
    count = max(4, round(len(files) * percent / 100))
    modified, deleted = count // 2, count // 4
    picked = rnd.sample(range(len(files)), modified + deleted)
    for index in picked[:modified]:
        files[index].write_bytes(rnd.randbytes(rnd.randint(10, 2000)))
    dead = set(picked[modified:])
    for index in dead:
        files[index].unlink()
    files[:] = [path for index, path in enumerate(files) if index not in dead]
    for serial in range(count - modified - deleted):
        path = rnd.choice(folders) / f"new-{day}-{serial}-{name_for(rnd, serial)}"
        path.write_bytes(rnd.randbytes(rnd.randint(10, 2000)))
        files.append(path)


TABLES = ("borgapp_indexspan", "borgapp_indexsearchname", "borgapp_indexversion",
          "borgapp_indexedarchive", "borgapp_indexchain", "borgapp_indexowner")  # fmt: skip


def index_bytes(trigrams: bool = True) -> int:
    """Bytes the index's tables and their indexes take (SQLite pages, PostgreSQL relations),
    with or without the names' trigram index (FTS5 on SQLite, pg_trgm on PostgreSQL)."""
    return sum(size for name, size in index_parts(everything=True)
               if trigrams or "trigram" not in name)  # fmt: skip


def index_parts(everything: bool = False) -> list[tuple[str, int]]:
    """The bytes of each of the index's tables and indexes, the largest first (without
    `everything`, those of more than 16 KiB)."""
    from django.db import connection

    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute("VACUUM ANALYZE")
            cursor.execute(
                "SELECT c.relname, pg_total_relation_size(c.oid) - COALESCE((SELECT "
                "sum(pg_relation_size(i.indexrelid)) FROM pg_index i WHERE i.indrelid = "
                "c.oid), 0) FROM pg_class c WHERE c.relname = ANY(%s) UNION ALL "
                "SELECT x.relname, pg_relation_size(x.oid) FROM pg_index i JOIN pg_class x "
                "ON x.oid = i.indexrelid JOIN pg_class t ON t.oid = i.indrelid "
                "WHERE t.relname = ANY(%s) ORDER BY 2 DESC", [list(TABLES)] * 2,
            )  # fmt: skip
        else:  # the tables, their indexes, and the names' FTS5 trigram index's own tables
            cursor.execute(
                "SELECT name, SUM(pgsize) FROM dbstat WHERE name IN (SELECT name FROM "
                "sqlite_master WHERE tbl_name IN (SELECT value FROM json_each(%s)) OR "
                "tbl_name LIKE 'borgapp_indexspan_trigram%%') GROUP BY name ORDER BY 2 DESC",
                [json.dumps(TABLES)],
            )  # fmt: skip
        parts = [(name, int(size)) for name, size in cursor.fetchall()]
    return parts if everything else [(name, size) for name, size in parts if size > 4096 * 4]


def list_seconds(repo, archive: str, how: str = "json") -> float:
    """borg's listing of the archive into /dev/null (best of two). "json": `borg list
    --json-lines`, the issue's yardstick (borg writes straight into /dev/null; reading its
    lines in Python would add a third to it: 23.3 s against 31.2 s at 1,000,000 entries);
    "borg": the index's NUL-separated format by the borg binary; "lister": the same bytes
    by borgapp.itemlist, as the index job reads them."""
    import dataclasses

    from borgapp import borg, operations

    config = operations.borg_config()
    best = None
    for _ in range(2):
        sink = os.open(os.devnull, os.O_WRONLY)
        if how == "json":
            command = dataclasses.replace(borg.list_items_cmd(repo.location, archive),
                                          stdout_fd=sink)  # fmt: skip
        else:
            command = borg.index_list_cmd(repo.location, archive, sink, fast=how == "lister")
        began = time.perf_counter()
        try:
            borg.run(command, config, passphrase=repo.get_passphrase())
        finally:
            os.close(sink)
        took = time.perf_counter() - began
        best = took if best is None else min(best, took)
    return best


CHILD = """
import json, os, sys, time
sys.path.insert(0, {root!r})
import django
django.setup()
from borgapp import jobs
from borgapp.models import Job
began = time.perf_counter()
job = jobs.run_inline(Job.objects.get(pk={pk}))
took = time.perf_counter() - began
peak = next(int(line.split()[1]) for line in open("/proc/self/status")
            if line.startswith("VmHWM:"))
print(json.dumps({{"seconds": took, "status": job.status, "error": job.error_message,
                  "peak_kib": peak}}))
"""


def index(repo, archive) -> tuple[float, float]:
    """The index job of the archive, run as a worker would in a process of its own (so
    that its peak memory is its own): (seconds, peak RSS in MiB)."""
    from django.db import connection

    from borgapp import jobs
    from borgapp.models import Job

    job = jobs.create(Job.Kind.INDEX, repo, trigger=Job.Trigger.CLI,
                      params={"archive": archive.name}, archive_name=archive.name,
                      inline=True)  # fmt: skip
    connection.close()  # an SQLite database: the child writes while this process waits
    root = str(Path(__file__).resolve().parent.parent)
    ran = subprocess.run([sys.executable, "-c", CHILD.format(root=root, pk=job.pk)],
                         capture_output=True, text=True, check=True)  # fmt: skip
    done = json.loads(ran.stdout.strip().splitlines()[-1])
    if done["status"] != "succeeded":
        raise SystemExit(f"index failed: {done['error']}")
    return done["seconds"], done["peak_kib"] / 1024


def p50_p95(times: list[float]) -> tuple[float, float]:
    times = sorted(times)
    return statistics.median(times) * 1000, times[max(0, int(len(times) * 0.95) - 1)] * 1000


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--files", type=int, default=200_000)
    parser.add_argument("--days", type=int, default=5)
    parser.add_argument(
        "--timed-days",
        type=int,
        help="time borg's listings on the first "
        "N days after the first archive only (a long run for the size)",
    )
    parser.add_argument("--change-percent", type=float, default=1.0)
    parser.add_argument("--searches", type=int, default=60)
    parser.add_argument("--workdir", default="/var/tmp/opscenter-index-bench")
    parser.add_argument("--source", help="back up this real tree instead (e.g. /usr; no days)")
    parser.add_argument("--postgres", action="store_true", help="the center on PostgreSQL")
    args = parser.parse_args()
    run_on(args.postgres, run, args)


def run(args) -> None:
    work = Path(args.workdir)
    shutil.rmtree(work, ignore_errors=True)
    (work / "repos").mkdir(parents=True)
    data = setup_django("opscenter-index-bench-")
    from django.conf import settings
    from django.core.management import call_command

    from borgapp import filesearch
    from borgapp.models import Archive, IndexVersion, Repository

    settings.REPOSITORY_ROOTS = [work / "repos"]
    os.environ["OPSCENTER_REPOSITORY_ROOTS"] = str(work / "repos")  # for the index's process
    settings.FILE_INDEX = False  # each index job is run (and timed) here
    rnd = random.Random(16)
    began = time.perf_counter()
    source = Path(args.source) if args.source else work / "src"
    if args.source:
        args.days = 0
        files = [p for p in source.rglob("*") if p.is_file() and not p.is_symlink()][:100_000]
        print(f"tree: {source} (real); data {data}")
    else:
        files, folders = generate(source, args.files, rnd)
        print(f"tree: {len(files):,} files in {len(folders):,} folders, "
              f"{time.perf_counter() - began:.0f} s; data {data}")  # fmt: skip
    secret = work / "passphrase"
    secret.write_text(PASSPHRASE + "\n")
    call_command("borg_init", "bench", "--location", str(work / "repos" / "bench"),
                 "--passphrase-file", str(secret), verbosity=0)  # fmt: skip
    repo = Repository.objects.get(name="bench")
    rows = []
    first_bytes = first_entries = None
    first_parts: list = []
    for day in range(args.days + 1):
        if day:
            change(files, folders, args.change_percent, rnd, day)
        began = time.perf_counter()
        call_command("borg_backup", "bench", "--source", str(source), "--prefix",
                     "daily", "--json", stdout=open(os.devnull, "w"))  # fmt: skip
        backup = time.perf_counter() - began
        archive = Archive.objects.filter(repository=repo).order_by("-start", "-pk").first()
        if args.timed_days is None or day <= args.timed_days:
            listed = list_seconds(repo, archive.name)
            by_borg = list_seconds(repo, archive.name, "borg")
            by_lister = list_seconds(repo, archive.name, "lister")
        # else: the last day's listing times stand (the same tree, 1 % changed)
        took, peak = index(repo, archive)
        indexed = archive.indexed
        size = index_bytes()
        if day == 0:
            first_bytes, first_entries = size, indexed.entries
            first_parts = index_parts()
        rows.append((day, backup, listed, took, indexed.entries, indexed.changed, size, peak))
        print(f"day {day}: backup {backup:.1f} s, list {listed:.1f} s (the index's format: "
              f"borg {by_borg:.1f} s, the lister {by_lister:.1f} s), index {took:.1f} s "
              f"({took / listed:.2f}x), {indexed.entries:,} entries, {indexed.changed:,} new "
              f"versions, {indexed.reused:,} known by the previous archive's prints, "
              f"index {size / 2**20:.1f} MiB, peak RSS of the index job's process "
              f"{peak:.0f} MiB")  # fmt: skip
        sys.stdout.flush()

    print(f"\nfirst archive: {first_entries:,} entries, index {first_bytes / 2**20:.1f} MiB = "
          f"{first_bytes / first_entries:.0f} bytes per entry")  # fmt: skip
    if first_parts:
        print("  of which " + ", ".join(f"{name} {size / first_entries:.1f}"
                                        for name, size in first_parts))  # fmt: skip
    kept = (Path(settings.DATA_DIR) / "index-prints").glob("*")
    prints = sum(path.stat().st_size for path in kept)
    print(
        f"beside the database, the newest archive's prints (for the next one): "
        f"{prints / 2**20:.1f} MiB = {prints / indexed.entries:.0f} bytes per entry"
    )
    core = index_bytes(trigrams=False)
    print(f"of which the names' trigram index (search): {(index_bytes() - core) / 2**20:.1f} "
          f"MiB; without it, all archives now: {core / 2**20:.1f} MiB")  # fmt: skip
    if args.days:
        later = [row[3] / row[2] for row in rows[1:]]
        print(f"later archives: index time / list time median {statistics.median(later):.2f}, "
              f"max {max(later):.2f}")  # fmt: skip
        print(f"after {args.days} more archives: index {rows[-1][6] / 2**20:.1f} MiB = "
              f"{rows[-1][6] / first_bytes:.2f}x the first archive's; "
              f"{IndexVersion.objects.count():,} versions")  # fmt: skip

    names = [path.name for path in rnd.sample(files, args.searches) if len(path.name) > 6]
    fragments = [name[rnd.randrange(len(name) - 6) :][:5] for name in names]
    times, hits = [], []
    for fragment in fragments:
        began = time.perf_counter()
        found = filesearch.search(fragment, filesearch.Filters(repository=repo))
        times.append(time.perf_counter() - began)
        hits.append(len(found["hits"]))
    p50, p95 = p50_p95(times)
    print(f"search of a name fragment over {args.days + 1} archives: p50 {p50:.1f} ms, "
          f"p95 {p95:.1f} ms (median {statistics.median(hits):.0f} paths per answer)")  # fmt: skip
    diff_times(repo)
    if not args.source:
        backup_while_indexing(repo, files, folders, rnd, work / "src", rows[-1][1])


def diff_times(repo) -> None:
    """The comparison of each indexed archive with the one before it (the count and its first
    page of 100, as the API and the admin page ask), from the file index."""
    from borgapp import filediff
    from borgapp.models import Archive

    archives = list(Archive.objects.filter(repository=repo, indexed__isnull=False)
                    .order_by("start"))  # fmt: skip
    times, counts = [], []
    for older, newer in zip(archives, archives[1:], strict=False):
        began = time.perf_counter()
        compared = filediff.Comparison(older, newer)
        counts.append(compared.count())
        compared[0:100]
        times.append(time.perf_counter() - began)
    if times:
        p50, p95 = p50_p95(times)
        changes = statistics.median(counts)
        print(f"diff of an archive with the one before it (count and first page): p50 "
              f"{p50:.0f} ms, p95 {p95:.0f} ms ({changes:,.0f} changes)")  # fmt: skip


def backup_while_indexing(repo, files, folders, rnd, source, alone: float) -> None:
    """A backup asked for while an archive is being indexed: how long it waits for the index
    job to let it go first, and how long it then takes (beside the last one alone). The
    archive indexed is the first of a backup set of its own, so that every entry's version
    is stored: the longest index job there is for this tree."""
    from borgapp import intake, jobs
    from borgapp.models import Archive, Job

    change(files, folders, 1.0, rnd, 99)
    call_command_quiet("borg_backup", "bench", "--source", str(source), "--prefix", "weekly")
    archive = Archive.objects.filter(repository=repo).order_by("-start", "-pk").first()
    job = jobs.create(Job.Kind.INDEX, repo, trigger=Job.Trigger.CLI,
                      params={"archive": archive.name}, archive_name=archive.name)  # fmt: skip
    worker = threading.Thread(target=jobs.run_queued, args=(job.pk,))
    worker.start()
    while not Job.objects.filter(pk=job.pk, status="running", progress_files__gt=0).exists():
        if not worker.is_alive():
            print("backup while indexing: the index ended before a backup could be asked for "
                  "(too small a tree to measure)")  # fmt: skip
            return
        time.sleep(0.02)
    change(files, folders, 1.0, rnd, 100)
    asked = time.perf_counter()
    backup = intake.start("backup", repo, {"sources": [str(source)], "prefix": "daily"},
                          trigger="cli")  # fmt: skip
    created = time.perf_counter() - asked  # the job row written: SQLite's write lock got
    worker.join()
    waited = time.perf_counter() - asked
    job.refresh_from_db()
    began = time.perf_counter()
    pages = FolderPages(repo, folders)
    runner = threading.Thread(target=jobs.run_queued, args=(backup.pk,))
    runner.start()
    while runner.is_alive():  # the tree is browsed while the backup runs
        pages.one()
    runner.join()
    took = time.perf_counter() - began
    backup.refresh_from_db()
    p50, p95 = p50_p95(pages.times)
    print(f"a folder's page of the tree while that backup ran: p50 {p50:.1f} ms, p95 "
          f"{p95:.1f} ms ({len(pages.times)} pages)")  # fmt: skip
    print(f"backup asked for while indexing: the index job yielded "
          f"({bool(job.result.get('yielded_to_another_job'))}) after {waited:.2f} s (the "
          f"backup's job row written after {created:.2f} s); the "
          f"backup then took {took:.1f} s ({backup.status}) against {alone:.1f} s for the "
          f"last backup alone")  # fmt: skip


class FolderPages:
    """The admin's page of one folder of the newest indexed archive, each time another
    folder, timed (in-process, through Django's test client, logged in)."""

    def __init__(self, repo, folders):
        from django.contrib.auth.models import User
        from django.test import Client

        from borgapp.models import Archive

        user = User.objects.filter(username="bench").first() or User.objects.create_superuser(
            "bench", password="bench-password-123"
        )
        self.client = Client()
        self.client.force_login(user)
        archive = Archive.objects.filter(repository=repo, indexed__isnull=False).latest("start")
        self.url = f"/admin/borgapp/archive/{archive.pk}/contents/"
        self.folders = [str(folder).lstrip("/") for folder in folders]
        self.times: list[float] = []

    def one(self) -> None:
        path = self.folders[len(self.times) % len(self.folders)]
        began = time.perf_counter()
        response = self.client.get(self.url, {"path": path})
        self.times.append(time.perf_counter() - began)
        assert response.status_code == 200, response.status_code


def call_command_quiet(*args) -> None:
    from django.core.management import call_command

    with open(os.devnull, "w") as sink:
        call_command(*args, stdout=sink)


if __name__ == "__main__":
    main()
