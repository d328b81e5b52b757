"""`/metrics` (Prometheus text format) and `/healthz`, both served from the database: a scrape
never calls borg (exporters that run `borg info` per scrape take minutes)."""

import hmac
import os
import shutil
import time

from django.conf import settings
from django.db import connection
from django.db.models import Count
from django.http import HttpResponse, JsonResponse
from django.utils import timezone
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from borgapp import alerts, health
from borgapp.models import Alert, Job, WorkerHeartbeat
from borgapp.proxy import FORWARDED_UNTRUSTED
from borgapp.roles import has_role


class CatalogCollector:
    def collect(self):
        now = timezone.now()
        rows = health.repositories(now)
        alerting = alerts.firing_repository_ids()
        last_ts = GaugeMetricFamily(
            "opscenter_repository_last_backup_timestamp_seconds",
            "Start of the newest complete archive.", labels=["repository"],
        )  # fmt: skip
        last_age = GaugeMetricFamily(
            "opscenter_repository_last_backup_age_seconds",
            "Age of the newest complete archive.", labels=["repository"],
        )  # fmt: skip
        archives = GaugeMetricFamily(
            "opscenter_repository_archives", "Complete archives.", labels=["repository"]
        )
        size = GaugeMetricFamily(
            "opscenter_repository_size_bytes",
            "Size of all archives: original, compressed, and deduplicated (stored on disk).",
            labels=["repository", "kind"],
        )
        ratio = GaugeMetricFamily(
            "opscenter_repository_deduplication_ratio",
            "Original size over stored size: higher is better.", labels=["repository"],
        )  # fmt: skip
        healthy = GaugeMetricFamily(
            "opscenter_repository_healthy", "1 when no alert fires for it.", labels=["repository"]
        )
        for row in rows:
            repo = row.repository
            name = repo.name
            archives.add_metric([name], row.archive_count)
            if row.last_backup:
                last_ts.add_metric([name], row.last_backup.timestamp())
                last_age.add_metric([name], (now - row.last_backup).total_seconds())
            for kind, value in (
                ("original", repo.total_size),
                ("compressed", repo.total_compressed_size),
                ("deduplicated", repo.unique_compressed_size),
            ):
                if value is not None:
                    size.add_metric([name, kind], value)
            if repo.deduplication_ratio is not None:
                ratio.add_metric([name], repo.deduplication_ratio)
            healthy.add_metric([name], 0 if repo.pk in alerting else 1)
        yield from (last_ts, last_age, archives, size, ratio, healthy)
        yield from self.jobs()
        yield from self.installation()

    def jobs(self):
        totals = CounterMetricFamily(
            "opscenter_jobs", "Jobs by kind and outcome.", labels=["kind", "status"]
        )
        for row in Job.objects.values("kind", "status").annotate(n=Count("pk")).order_by():
            totals.add_metric([row["kind"], row["status"]], row["n"])
        durations = GaugeMetricFamily(
            "opscenter_job_duration_seconds",
            "Run time of the most recent finished job of each kind.",
            labels=["kind"],
        )
        for kind in Job.objects.values_list("kind", flat=True).distinct().order_by():
            last = (
                Job.objects.filter(kind=kind, finished_at__isnull=False, started_at__isnull=False)
                .order_by("-finished_at")
                .values_list("started_at", "finished_at")
                .first()
            )
            if last:
                durations.add_metric([kind], (last[1] - last[0]).total_seconds())
        counts = dict(
            Job.objects.filter(status__in=["running", "queued"])
            .values_list("status")
            .annotate(n=Count("pk"))
            .order_by()
        )
        running = GaugeMetricFamily("opscenter_jobs_running", "Jobs running now.")
        running.add_metric([], counts.get("running", 0))
        queued = GaugeMetricFamily("opscenter_jobs_queued", "Jobs waiting to run.")
        queued.add_metric([], counts.get("queued", 0))
        return totals, durations, running, queued

    def installation(self):
        firing = GaugeMetricFamily("opscenter_alerts_firing", "Alerts firing now.")
        firing.add_metric([], Alert.objects.filter(state=Alert.State.FIRING).count())
        beat = GaugeMetricFamily(
            "opscenter_worker_heartbeat_timestamp_seconds", "Last tick of the worker."
        )
        seen = WorkerHeartbeat.objects.values_list("seen_at", flat=True).first()
        if seen:
            beat.add_metric([], seen.timestamp())
        return firing, beat


def allowed(request) -> bool:
    """A scrape needs the metrics bearer token, a viewer's API token, or an allowed address."""
    header = request.META.get("HTTP_AUTHORIZATION", "")
    secret = settings.METRICS_TOKEN
    if secret and header.startswith("Bearer "):
        return hmac.compare_digest(header[7:].strip().encode(), secret.encode())
    if header.startswith("Token "):
        from rest_framework.authtoken.models import Token

        token = Token.objects.select_related("user").filter(key=header[6:].strip()).first()
        return token is not None and token.user.is_active and has_role(token.user, "viewer")
    # forwarded by a proxy that is not trusted (one on this host, say): the client is unknown
    forwarded = request.META.get(FORWARDED_UNTRUSTED)
    return not forwarded and request.META.get("REMOTE_ADDR") in settings.METRICS_ALLOW


def metrics_view(request):
    if not allowed(request):
        return JsonResponse(
            {"success": False, "error": "permission_denied",
             "message": "Scrape with the metrics token, a viewer's API token, or from an "
             "allowed address (OPSCENTER_METRICS_ALLOW)."},
            status=403,
        )  # fmt: skip
    alerts.watch_worker()
    registry = CollectorRegistry(auto_describe=False)
    registry.register(CatalogCollector())
    return HttpResponse(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)


def healthz_view(request):
    """200 when the database answers, the worker ticked in the last 3 minutes and borg is
    there; 503 with the reasons otherwise."""
    alerts.watch_worker()
    problems = {}
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
    except Exception as exc:  # any database failure is the answer here
        problems["database"] = f"unreachable: {type(exc).__name__}"
    else:
        seen = WorkerHeartbeat.objects.values_list("seen_at", flat=True).first()
        if seen is None:
            problems["worker"] = "no heartbeat yet: is the worker running?"
        elif timezone.now() - seen > alerts.HEARTBEAT_STALE:
            age = int((timezone.now() - seen).total_seconds())
            problems["worker"] = f"last heartbeat {age} s ago: the worker is not running"
    binary = shutil.which(settings.BORG_BINARY) or settings.BORG_BINARY
    if not (os.path.isfile(binary) and os.access(binary, os.X_OK)):
        problems["borg"] = f"{settings.BORG_BINARY} is missing or not executable"
    body = {"status": "ok" if not problems else "failing", "problems": problems,
            "checked_at": time.time()}  # fmt: skip
    return JsonResponse(body, status=200 if not problems else 503)
