#!/usr/bin/env python
"""Issue 6: scrape time of /metrics with 100 repositories and 100,000 archives (plus a year of
jobs), in-process with Django's test client: the scrape reads the database only.

Usage: .venv/bin/python bench/metrics.py [--repositories 100] [--archives 100000] [--requests 50]
"""

import argparse

from inprocess import setup_django, time_requests


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repositories", type=int, default=100)
    parser.add_argument("--archives", type=int, default=100_000)
    parser.add_argument("--requests", type=int, default=50)
    args = parser.parse_args()
    setup_django("opscenter-bench-metrics-")
    from datetime import UTC, datetime, timedelta

    from django.test import Client

    from borgapp.models import Archive, Job, Repository

    repos = Repository.objects.bulk_create(
        Repository(
            name=f"repo{i:03d}",
            location=f"/srv/borg/repo{i:03d}",
            state="ready",
            total_size=10**12,
            total_compressed_size=5 * 10**11,
            unique_compressed_size=10**11,
        )  # fmt: skip
        for i in range(args.repositories)
    )
    per_repo = args.archives // args.repositories
    start = datetime.now(UTC) - timedelta(hours=per_repo + 1)
    Archive.objects.bulk_create(
        (
            Archive(
                repository=repo,
                name=f"n-{n:05d}",
                borg_id=f"{r:04d}{n:060x}",
                start=start + timedelta(hours=n),
                deduplicated_size=10**7,
            )  # fmt: skip
            for r, repo in enumerate(repos)
            for n in range(per_repo)
        ),
        batch_size=5000,
    )
    now = datetime.now(UTC)
    Job.objects.bulk_create(
        (
            Job(
                kind=("backup", "prune", "check")[i % 3],
                repository=repos[i % len(repos)],
                repository_name=repos[i % len(repos)].name,
                trigger="schedule",
                status="succeeded" if i % 50 else "failed",
                started_at=now - timedelta(hours=i),
                finished_at=now - timedelta(hours=i) + timedelta(minutes=5),
                created_at=now - timedelta(hours=i),
            )  # fmt: skip
            for i in range(20_000)
        ),
        batch_size=5000,
    )
    client = Client()
    p50, p95 = time_requests(client, "/metrics", args.requests, REMOTE_ADDR="127.0.0.1")
    lines = client.get("/metrics", REMOTE_ADDR="127.0.0.1").content.decode().count("\n")
    print(
        f"/metrics with {args.repositories} repositories, {Archive.objects.count()} archives, "
        f"{Job.objects.count()} jobs: {lines} lines; p50 {p50:.1f} ms, p95 {p95:.1f} ms over "
        f"{args.requests} scrapes (target < 100 ms)"
    )


if __name__ == "__main__":
    main()
