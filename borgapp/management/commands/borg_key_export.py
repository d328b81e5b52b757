import os
import sys

from django.core.management.base import CommandError

from borgapp.management.commands._base import EXIT_FAILED, JobCommand
from borgapp.models import Job


class Command(JobCommand):
    help = "Export the repository key (keep it apart from the repository)."

    def add_arguments(self, parser):
        super().add_arguments(parser)
        parser.add_argument("name", help="repository name")
        parser.add_argument("--output", help="write the key to this file (mode 0600)")
        parser.add_argument("--paper", action="store_true", help="the paper format")

    def start(self, options, echo):
        output_dir = os.path.dirname(os.path.abspath(options["output"] or "."))
        if options["output"] and not os.path.isdir(output_dir):
            raise CommandError(f"{output_dir} is not a directory.", returncode=EXIT_FAILED)
        if options["output"] and os.path.exists(options["output"]):
            raise CommandError(
                f"{options['output']} exists; not overwriting.", returncode=EXIT_FAILED
            )
        job = self.run_kind(Job.Kind.KEY_EXPORT, options["name"], {"paper": options["paper"]}, echo)
        key = getattr(job, "payload", None)
        if job.status == Job.Status.SUCCEEDED and key:
            if options["output"]:
                fd = os.open(options["output"], os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "w") as handle:
                    handle.write(key)
            elif options["json"]:
                job.result = {**job.result, "key": key}  # shown, not stored
            else:
                sys.stdout.write(key)
        return job

    def describe(self, job):
        return "" if job.status == Job.Status.SUCCEEDED else super().describe(job)
