"""The admin site: its start page is the dashboard (health of every repository, the last
day's jobs, stored size over time), drawn from the catalog only."""

from django.contrib import admin
from django.contrib.admin.forms import AdminAuthenticationForm
from django.core.exceptions import ValidationError

from borgapp import throttle

CHART_W, CHART_H, CHART_POINTS = 320, 60, 120


def chart(points) -> dict | None:
    """An SVG polyline of (time, bytes) points, scaled into the chart box (no JS, no CDN)."""
    if len(points) < 2:
        return None
    step = max(1, len(points) // CHART_POINTS)
    sample = points[::step] + ([points[-1]] if (len(points) - 1) % step else [])
    t0, t1 = sample[0][0].timestamp(), sample[-1][0].timestamp()
    top = max(size for _, size in sample) or 1
    span = (t1 - t0) or 1
    coords = " ".join(
        f"{(when.timestamp() - t0) / span * CHART_W:.1f},{CHART_H - size / top * CHART_H:.1f}"
        for when, size in sample
    )
    return {"points": coords, "top": top, "first": sample[0][0], "last": sample[-1][0]}


class ThrottledLoginForm(AdminAuthenticationForm):
    """The admin's login, refused for a minute after ten failures from one address (the
    same counter as the API's tokens)."""

    def clean(self):
        address = self.request.META.get("REMOTE_ADDR") if self.request else None
        if throttle.blocked(address):
            from borgapp import audit

            audit.record(
                "sign_in",
                "admin",
                outcome="refused",
                message=throttle.MESSAGE,
                actor=self.cleaned_data.get("username") or "anonymous",
                client_address=address,
            )
            raise ValidationError(throttle.MESSAGE, code="throttled")
        try:
            return super().clean()
        except ValidationError:
            throttle.note_failure(address)
            raise


class OpsAdminSite(admin.AdminSite):
    login_form = ThrottledLoginForm
    site_header = "Ops Center for BorgBackup"
    site_title = "Ops Center"
    index_title = "Dashboard"
    index_template = "admin/opscenter_index.html"

    def index(self, request, extra_context=None):
        from borgapp import alerts, health
        from borgapp.models import Alert, WorkerHeartbeat

        alerts.watch_worker()
        rows = health.repositories()
        series = health.size_series([row.repository.pk for row in rows])
        for row in rows:
            row.chart = chart(series.get(row.repository.pk, []))
        context = {
            "health_rows": rows,
            "recent_jobs": list(health.recent_jobs()),
            "chart_w": CHART_W,
            "chart_h": CHART_H,
            "firing_alerts": list(
                Alert.objects.filter(state=Alert.State.FIRING)
                .select_related("repository")
                .order_by("first_seen")
            ),
            "worker_seen": WorkerHeartbeat.objects.values_list("seen_at", flat=True).first(),
            "worker_silent": alerts.worker_silent(),
        }
        return super().index(request, {**context, **(extra_context or {})})
