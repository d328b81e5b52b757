from django.contrib import admin
from django.urls import include, path
from django.views.generic import RedirectView

from borgapp import metrics

urlpatterns = [
    # no public site: the root is the control panel
    path("", RedirectView.as_view(url="/admin/", permanent=False)),
    path("admin/", admin.site.urls),
    path("api/", include("borgapp.api.urls")),
    path("agent/v1/", include("borgapp.api.agent")),  # the fleet's agents (borgapp.fleet)
    path("metrics", metrics.metrics_view, name="metrics"),
    path("healthz", metrics.healthz_view, name="healthz"),
    # the integration guide's readers look for the API documentation at /docs
    path("docs", RedirectView.as_view(pattern_name="api-docs", permanent=False)),
    path("docs/", RedirectView.as_view(pattern_name="api-docs", permanent=False)),
]

handler404 = "borgapp.api.errors.not_found"
handler500 = "borgapp.api.errors.server_error"
