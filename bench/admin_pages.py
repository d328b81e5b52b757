#!/usr/bin/env python
"""Issue 5 page timings: server time of the admin dashboard and the archive list with 50
repositories and 10,000 archives (and jobs of the last day), measured in-process with Django's
test client (request handling and rendering, no network). Prints p50/p95 over N requests.

Usage: .venv/bin/python bench/admin_pages.py [--repositories 50] [--archives 10000] [--requests 50]
"""

import argparse

from inprocess import setup_django, time_requests


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repositories", type=int, default=50)
    parser.add_argument("--archives", type=int, default=10000)
    parser.add_argument("--requests", type=int, default=50)
    args = parser.parse_args()
    data = setup_django("opscenter-bench-admin-")
    from datetime import UTC, datetime, timedelta

    from django.contrib.auth.models import User
    from django.test import Client

    from borgapp.models import Archive, Job, Repository

    repos = Repository.objects.bulk_create(
        Repository(
            name=f"repo{i:02d}",
            location=f"{data}/repos/repo{i:02d}",
            state="ready",
            unique_compressed_size=i * 10**9,
            total_size=i * 5 * 10**9,
        )
        for i in range(args.repositories)
    )
    start = datetime.now(UTC) - timedelta(hours=args.archives // args.repositories + 1)
    per_repo = args.archives // args.repositories
    Archive.objects.bulk_create(
        (
            Archive(
                repository=repo,
                name=f"nightly-{n:05d}",
                borg_id=f"{r:04d}{n:060x}",
                start=start + timedelta(hours=n),
                end=start + timedelta(hours=n, minutes=3),
                duration=180.0,
                original_size=10**9,
                compressed_size=5 * 10**8,
                deduplicated_size=10**7,
                nfiles=1000,
            )
            for r, repo in enumerate(repos)
            for n in range(per_repo)
        ),
        batch_size=2000,
    )
    now = datetime.now(UTC)
    Job.objects.bulk_create(
        Job(
            kind="backup",
            repository=repos[i % len(repos)],
            repository_name=repos[i % len(repos)].name,
            trigger="schedule",
            status="succeeded" if i % 7 else "failed",
            created_at=now - timedelta(minutes=10 * i),
            started_at=now - timedelta(minutes=10 * i),
            finished_at=now - timedelta(minutes=10 * i - 3),
        )
        for i in range(144)
    )
    # one archive of 100,000 files (its listing loaded, as a contents job leaves it)
    from borgapp.models import ArchiveItem

    big = Archive.objects.filter(repository=repos[0]).first()
    ArchiveItem.objects.bulk_create(
        (
            ArchiveItem(
                archive=big,
                path=f"srv/d{n // 100:04d}/f{n:06d}" if n % 101 else f"srv/d{n // 100:04d}",
                parent=f"srv/d{n // 100:04d}" if n % 101 else "srv",
                type="-" if n % 101 else "d",
                size=n,
                mode="-rw-r--r--",
            )
            for n in range(100_000)
        ),
        batch_size=5000,
    )
    Archive.objects.filter(pk=big.pk).update(contents_borg_id=big.borg_id, contents_count=100_000)
    user = User.objects.create_superuser("bench", password="bench-password-123")
    client = Client()
    client.force_login(user)
    pages = {
        "dashboard (/admin/)": "/admin/",
        "archive list": "/admin/borgapp/archive/",
        "archive list, one repository": (
            f"/admin/borgapp/archive/?repository__id__exact={repos[0].pk}"
        ),
        "repository list": "/admin/borgapp/repository/",
        "contents, top folder (100k files)": f"/admin/borgapp/archive/{big.pk}/contents/?path=srv",
        "contents, a folder, page 1": (f"/admin/borgapp/archive/{big.pk}/contents/?path=srv/d0500"),
        "job list": "/admin/borgapp/job/",
    }
    print(
        f"{args.repositories} repositories, {Archive.objects.count()} archives, "
        f"{Job.objects.count()} jobs; {args.requests} requests per page (server time, in-process)"
    )
    for label, url in pages.items():
        p50, p95 = time_requests(client, url, args.requests)
        print(f"{label:<34} p50 {p50:6.1f} ms   p95 {p95:6.1f} ms   (target < 300 ms)")


if __name__ == "__main__":
    main()
