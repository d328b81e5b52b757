from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerSplitView
from rest_framework.routers import DefaultRouter

from borgapp.api import files, seed, views

router = DefaultRouter()
router.register("repositories", views.RepositoryViewSet, basename="repository")
router.register("archives", views.ArchiveViewSet, basename="archive")
router.register("jobs", views.JobViewSet, basename="job")
router.register("retention-policies", views.RetentionPolicyViewSet, basename="retentionpolicy")
router.register("schedules", views.ScheduleViewSet, basename="schedule")
router.register("databases", views.DatabaseSourceViewSet, basename="databasesource")
router.register("alerts", views.AlertViewSet, basename="alert")
router.register("audit", views.AuditViewSet, basename="audit")
router.register("files", files.FilesViewSet, basename="files")

# The integration guide's routes, exactly as its scripts call them (no trailing slash).
seed_routes = [
    path("init", seed.init),
    path("create", seed.create),
    path("archives", seed.archives),
    path("archives/<str:archive_name>", seed.delete_archive),
    path("extract/<str:archive_name>", seed.extract),
    path("prune", seed.prune),
    path("compact", seed.compact),
    path("check", seed.check),
    path("mount", seed.mount),
    path("umount", seed.umount),
    path("info", seed.info),
]

urlpatterns = [
    path("v1/backups/borg/", include(seed_routes)),
    path("v1/", include(router.urls)),
    path("schema/", SpectacularAPIView.as_view(), name="schema"),
    # Swagger UI from the app's own files (drf-spectacular-sidecar), its setup script a file
    # too (`?script`): the Content-Security-Policy allows nothing external and no inline code.
    path(
        "docs/",
        SpectacularSwaggerSplitView.as_view(url_name="schema", template_name="api/swagger_ui.html"),
        name="api-docs",
    ),
]
