from django.core.management import call_command
from django.core.management.base import BaseCommand

from borgapp import jobs


class Command(BaseCommand):
    help = (
        "Start the django-q2 cluster that runs jobs, after repairing the state a crash may "
        "have left (running jobs whose process died become interrupted, REL-14)."
    )

    def handle(self, *args, **options):
        report = jobs.reconcile()
        self.stdout.write(f"Reconciled before start: {report}")
        call_command("qcluster")
