import json

from django.core.management.base import BaseCommand

from borgapp import reconcile


class Command(BaseCommand):
    help = "Repair job state after a crash: dead running jobs become interrupted (REL-14)."
    requires_system_checks = []

    def handle(self, *args, **options):
        self.stdout.write(json.dumps(reconcile.repair()))
