from django.apps import AppConfig
from django.contrib.admin import apps as admin_apps
from django.db.models.signals import post_delete, post_migrate, post_save


class BorgappConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "borgapp"
    verbose_name = "BorgBackup"

    def ready(self):
        from borgapp import checks  # noqa: F401  (registers the system checks)

        post_migrate.connect(_ensure_maintenance_schedule, sender=self)
        post_migrate.connect(_ensure_roles, sender=self)
        post_migrate.connect(_trigrams_after_flush, sender=self)
        from borgapp import audit, scheduling
        from borgapp.models import Schedule

        audit.connect()
        post_save.connect(scheduling.on_save, sender=Schedule, dispatch_uid="schedule-mirror")
        post_delete.connect(scheduling.on_delete, sender=Schedule, dispatch_uid="schedule-forget")


def _ensure_maintenance_schedule(**kwargs):
    """One django-q2 schedule for the app's own upkeep (heartbeat and crash repair)."""
    from django_q.models import Schedule

    Schedule.objects.update_or_create(
        name="opscenter-digest",
        defaults={
            "func": "borgapp.tasks.daily_digest",
            "schedule_type": Schedule.CRON,
            "cron": "0 7 * * *",
            "repeats": -1,
        },
    )
    Schedule.objects.update_or_create(
        name="opscenter-maintenance",
        defaults={
            "func": "borgapp.tasks.maintenance",
            "schedule_type": Schedule.MINUTES,
            "minutes": 1,
            "repeats": -1,
        },
    )


def _ensure_roles(**kwargs):
    """The three role groups (made by migration 0004; kept after a database flush too)."""
    from django.contrib.auth.models import Group

    from borgapp.roles import ROLES

    for name in ROLES:
        Group.objects.get_or_create(name=name)


def _trigrams_after_flush(using="default", **kwargs):
    """A database flush (which signals as a migrate does) empties the paths but not SQLite's
    trigram index of their names, which no model owns: its entries would name numbers that
    are gone, or that new paths take again. Emptied paths empty it too."""
    from django.db import connections

    from borgapp import filenames
    from borgapp.models import IndexSpan

    if connections[using].vendor != "sqlite":
        return
    with connections[using].cursor() as cursor:
        # (no spans table: a migrate back to before it)
        cursor.execute("SELECT 1 FROM sqlite_master WHERE name = %s", [filenames.SPANS])
        if cursor.fetchone() is not None and not IndexSpan.objects.using(using).exists():
            filenames.forget_all_trigrams(using)


class OpsAdminConfig(admin_apps.AdminConfig):
    """django.contrib.admin with the Ops Center site (its start page is the dashboard)."""

    default = False
    default_site = "borgapp.admin_site.OpsAdminSite"
