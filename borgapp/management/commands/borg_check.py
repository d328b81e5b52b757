from borgapp.management.commands._base import JobCommand
from borgapp.models import Job


class Command(JobCommand):
    help = "Verify a repository (borg check). Errors found exit 2."

    def add_arguments(self, parser):
        super().add_arguments(parser)
        parser.add_argument("name", help="repository name")
        parser.add_argument("--verify-data", action="store_true")
        scope = parser.add_mutually_exclusive_group()
        scope.add_argument("--archives-only", action="store_true")
        scope.add_argument("--repository-only", action="store_true")
        parser.add_argument("--last", type=int, help="check only the last N archives")
        parser.add_argument("--max-duration", type=int, help="seconds (repository-only)")

    def start(self, options, echo):
        keys = ("verify_data", "archives_only", "repository_only", "last", "max_duration")
        return self.run_kind(Job.Kind.CHECK, options["name"], {k: options[k] for k in keys}, echo)
