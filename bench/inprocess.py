"""Shared by the in-process benchmarks: Django on a fresh temporary data directory, migrated,
and a helper that times requests and prints p50/p95."""

import os
import secrets
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def setup_django(prefix: str) -> str:
    data = tempfile.mkdtemp(prefix=prefix)
    os.environ.update(OPSCENTER_DATA_DIR=data, DJANGO_SETTINGS_MODULE="opscenter.settings")
    sys.path.insert(0, str(ROOT))
    import django

    django.setup()
    from django.conf import settings
    from django.core.management import call_command

    settings.ALLOWED_HOSTS = ["*"]
    settings.STORAGES["staticfiles"] = {
        "BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"
    }
    call_command("migrate", verbosity=0)
    return data


def run_on(postgres: bool, run, *args) -> None:
    """`run(*args)` with the center on a private PostgreSQL server started for it (its
    DATABASE_URL), or on SQLite (before `setup_django`)."""
    if not postgres:
        return run(*args)
    sys.path.insert(0, str(ROOT))
    from tests.backends import postgres_server

    # a bench stopped by `timeout` or kill stops its server too (SIGTERM runs no `finally`)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    password = secrets.token_hex(16)
    with postgres_server(password) as server:
        where = f"{server['host']}:{server['port']}"
        os.environ["DATABASE_URL"] = f"postgres://{server['user']}:{password}@{where}/postgres"
        run(*args)


def time_requests(client, url: str, count: int, **extra) -> tuple[float, float]:
    """(p50, p95) in milliseconds of `count` GETs, after three warm-up requests."""
    for _ in range(3):
        assert client.get(url, **extra).status_code == 200
    times = []
    for _ in range(count):
        began = time.perf_counter()
        response = client.get(url, **extra)
        times.append(time.perf_counter() - began)
        assert response.status_code == 200
    times.sort()
    p95 = times[max(0, int(len(times) * 0.95) - 1)]
    return statistics.median(times) * 1000, p95 * 1000
