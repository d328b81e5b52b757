import json

from django.core.management.base import BaseCommand

from borgapp import scheduling


class Command(BaseCommand):
    help = "Repair the django-q2 mirror of the schedules (one per schedule, no strays)."

    def add_arguments(self, parser):
        parser.add_argument("--json", action="store_true")

    def handle(self, *args, **options):
        result = scheduling.sync()
        if options["json"]:
            self.stdout.write(json.dumps(result))
        else:
            self.stdout.write(
                f"{result['schedules']} schedules; repaired {result['repaired']}, "
                f"removed {result['removed']} stray django-q2 schedules."
            )
