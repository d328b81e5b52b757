from django.core.management.base import CommandError

from borgapp.management.commands._base import EXIT_FAILED, JobCommand
from borgapp.models import Job, RetentionPolicy


class Command(JobCommand):
    help = "Prune one backup set (archives named PREFIX-<time>) by a retention policy."

    def add_arguments(self, parser):
        super().add_arguments(parser)
        parser.add_argument("name", help="repository name")
        parser.add_argument("--prefix", required=True, help="the backup set to prune")
        parser.add_argument("--policy", help="a retention policy by name")
        parser.add_argument("--keep-within")
        for field in RetentionPolicy.KEEP_FIELDS:
            parser.add_argument(f"--{field.replace('_', '-')}", type=int, dest=field)
        parser.add_argument("--dry-run", action="store_true")
        parser.add_argument("--no-compact", action="store_true")

    def start(self, options, echo):
        keep = {f: options[f] for f in RetentionPolicy.KEEP_FIELDS if options[f] is not None}
        if options["keep_within"]:
            keep["keep_within"] = options["keep_within"]
        if options["policy"] and keep:
            raise CommandError("Give --policy or --keep-* rules, not both.", returncode=EXIT_FAILED)
        params = {
            "prefix": options["prefix"],
            "policy": options["policy"],
            "keep": keep,
            "dry_run": options["dry_run"],
            "compact": not options["no_compact"],
        }
        return self.run_kind(Job.Kind.PRUNE, options["name"], params, echo)
