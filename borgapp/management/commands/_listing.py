"""borg_contents and borg_diff: load the listing with a job if it is not in the database yet,
then print it from there."""

import json

from django.conf import settings
from django.core.management.base import CommandError

from borgapp import intake, validation
from borgapp.management.commands._base import EXIT_FAILED, JobCommand
from borgapp.models import Job


class ListingCommand(JobCommand):
    kind = ""

    def add_arguments(self, parser):
        super().add_arguments(parser)
        parser.add_argument("name", help="repository name")
        parser.add_argument("archive")
        parser.add_argument("--path", default="", help="only this path and what is below it")

    def archive(self, options, name_key="archive"):
        repo = self.repository(options["name"])
        archive = repo.archives.filter(name=options[name_key]).first()
        if archive is None:
            raise CommandError(
                f"Archive {options[name_key]!r} is not in repository {repo.name} "
                "(run borg_sync if it is new).",
                returncode=EXIT_FAILED,
            )
        return archive

    def load(self, options, params, echo):
        if settings.FILE_INDEX:  # the file index answers once the archives are in it
            named = [self.archive(options)] + (
                [self.archive(options, "other")] if "other" in params else []
            )
            for archive in intake.unindexed(*named):
                job = self.run_kind(Job.Kind.INDEX, options["name"], {"archive": archive.name},
                                    echo)  # fmt: skip
                self.succeeded(job, options)
                if job.result.get("yielded_to_another_job"):
                    raise CommandError(
                        f"Another job of repository {options['name']} went first while "
                        f"{archive.name} was being indexed: run this again when it has ended.",
                        returncode=EXIT_FAILED,
                    )
            return None
        job = self.run_kind(self.kind, options["name"], params, echo)
        self.succeeded(job, options)
        return job

    def succeeded(self, job, options) -> None:
        if job.status != Job.Status.SUCCEEDED:
            super().report(job, options)  # exits non-zero with the reason

    def audit(self, options) -> None:
        """Write the browse row (audit.browsed) for what was read."""
        raise NotImplementedError

    def report(self, job, options) -> None:
        try:
            rows = self.rows(options)
        except validation.InvalidInput as exc:
            raise CommandError(str(exc), returncode=EXIT_FAILED) from None
        self.audit(options)
        if options["json"]:
            self.stdout.write(json.dumps(rows, indent=2, default=str))
            return
        for row in rows:
            self.stdout.write(self.line(row))
