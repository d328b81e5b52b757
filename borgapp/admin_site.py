"""The admin site: its start page is the dashboard (health of every repository, the last
day's jobs, stored size over time), drawn from the catalog only."""

from django.contrib import admin
from django.contrib.admin.forms import AdminAuthenticationForm
from django.core.exceptions import ValidationError
from django.urls import path

from borgapp import admin_files, admin_recovery, alerts, audit, health, listing, recovery, throttle
from borgapp.models import Alert, WorkerHeartbeat
from borgapp.roles import has_role

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
    """The admin's login, refused for a minute after ten failures for one user name from
    one address, fifty for the name from anywhere, or a hundred from the address for any
    names (borgapp.throttle): guessing one user's password stops nobody else."""

    def clean(self):
        address = self.request.META.get("REMOTE_ADDR") if self.request else None
        username = self.cleaned_data.get("username") or ""
        if throttle.login_blocked(address, username):
            audit.record_attempt(
                "sign_in",
                "admin",
                outcome="refused",
                message=throttle.MESSAGE,
                actor=username or "anonymous",
                client_address=address,
            )
            raise ValidationError(throttle.MESSAGE, code="throttled")
        try:
            return super().clean()
        except ValidationError:
            throttle.note_login_failure(address, username)
            raise


class OpsAdminSite(admin.AdminSite):
    login_form = ThrottledLoginForm
    site_header = "Ops Center for BorgBackup"
    site_title = "Ops Center"
    site_url = None  # no public site to view: the header's "View site" link is left out
    # The left column of every model took 300 px of each page (a list at 1024 px was cut off);
    # the breadcrumbs and the dashboard's "Manage" section lead everywhere it did.
    enable_nav_sidebar = False
    index_title = "Dashboard"
    index_template = "admin/opscenter_index.html"

    def has_permission(self, request):
        """Staff status alone opens nothing: a user in no role group is sent to the login
        page like a non-staff user (that is also how a role is revoked)."""
        return super().has_permission(request) and has_role(request.user, "viewer")

    def index(self, request, extra_context=None):
        """The dashboard: the state of every repository first; the lists to manage below, and
        the task queue's own tables (django-q2) only as one line of links."""
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
            "listing_usage": listing.usage(),
            "can_operate": has_role(request.user, "operator"),
            "is_admin": has_role(request.user, "admin"),
        }
        if context["is_admin"]:
            context["not_in_a_kit"] = recovery.repositories_not_in_a_kit()
        apps = self.get_app_list(request)
        context["managed_apps"] = [app for app in apps if app["app_label"] != "django_q"]
        context["queue_app"] = next((app for app in apps if app["app_label"] == "django_q"), None)
        return super().index(request, {**context, **(extra_context or {})})

    def get_urls(self):
        def kit_page(request):
            return admin_recovery.export_page(request, self)

        def search_page(request):
            return admin_files.site_search(request, self)

        def history_page(request):
            return admin_files.history(request, self)

        kit = path("recovery-kit/", self.admin_view(kit_page), name="recovery_kit")
        files = [
            path("files/", self.admin_view(search_page), name="file_search"),
            path("files/history/", self.admin_view(history_page), name="file_history"),
        ]
        return [kit, *files, *super().get_urls()]
