import json

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from borgapp import audit
from borgapp.management.commands._base import EXIT_FAILED
from borgapp.models import RetentionPolicy


class Command(BaseCommand):
    help = "Manage retention policies: add, list, remove."
    requires_system_checks = []

    def add_arguments(self, parser):
        sub = parser.add_subparsers(dest="action", required=True)
        add = sub.add_parser("add")
        add.add_argument("policy", metavar="NAME")
        add.add_argument("--keep-within", default="")
        for field in RetentionPolicy.KEEP_FIELDS:
            add.add_argument(f"--{field.replace('_', '-')}", type=int, dest=field)
        sub.add_parser("list").add_argument("--json", action="store_true")
        sub.add_parser("remove").add_argument("policy", metavar="NAME")

    def handle(self, *args, **o):
        if o["action"] == "add":
            policy = RetentionPolicy(
                name=o["policy"],
                keep_within=o["keep_within"],
                **{f: o[f] for f in RetentionPolicy.KEEP_FIELDS},
            )
            try:
                policy.full_clean()
            except ValidationError as exc:
                problems = "; ".join(f"{k}: {' '.join(v)}" for k, v in exc.message_dict.items())
                raise CommandError(f"Invalid policy: {problems}", returncode=EXIT_FAILED) from None
            policy.save()
            audit.record(
                "retentionpolicy.created",
                policy.name,
                outcome="success",
                params={"rules": policy.borg_options()},
            )
            self.stdout.write(f"Added {policy.name}: {' '.join(policy.borg_options())}")
        elif o["action"] == "list":
            rows = [
                {"name": p.name, "rules": p.borg_options(), "recommended": p.is_recommended}
                for p in RetentionPolicy.objects.all()
            ]
            if o["json"]:
                self.stdout.write(json.dumps(rows, indent=2))
            else:
                for row in rows:
                    self.stdout.write(f"{row['name']:<24} {' '.join(row['rules'])}")
        else:
            policy = RetentionPolicy.objects.filter(name=o["policy"]).first()
            if policy is None:
                raise CommandError(f"No policy named {o['policy']!r}.", returncode=EXIT_FAILED)
            if policy.schedule_set.exists():
                names = ", ".join(policy.schedule_set.values_list("name", flat=True))
                raise CommandError(
                    f"Policy {policy.name} is used by: {names}.", returncode=EXIT_FAILED
                )
            policy.delete()
            audit.record("retentionpolicy.deleted", policy.name, outcome="success")
            self.stdout.write(f"Removed {policy.name}.")
