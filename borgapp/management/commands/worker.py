from django.core.management import call_command
from django.core.management.base import BaseCommand
from django.db import connections

from borgapp import procs, reconcile, scheduling
from borgapp.models import WorkerHeartbeat


class Command(BaseCommand):
    help = (
        "Start the django-q2 cluster that runs jobs, after repairing the state a crash may "
        "have left (running jobs whose process died become interrupted, REL-14) and repairing the "
        "django-q2 mirror of the schedules."
    )

    def handle(self, *args, **options):
        report = reconcile.repair()
        self.stdout.write(f"Reconciled before start: {report}")
        mirrors = scheduling.sync()
        self.stdout.write(f"Schedules checked before start: {mirrors}")
        # The first maintenance tick may be a minute away; until then the dashboard and
        # /healthz would call a worker that is starting "not running".
        WorkerHeartbeat.beat()
        # The cluster forks its processes from this one: an SQLite connection inherited
        # across fork() and used on both sides corrupts the database file.
        connections.close_all()
        procs.become_subreaper()
        call_command("qcluster")
