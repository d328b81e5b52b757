import json

from django.core.management.base import BaseCommand, CommandError

from borgapp import jobs
from borgapp.management.commands._base import EXIT_FAILED, job_summary
from borgapp.models import Job


class Command(BaseCommand):
    help = "List recent jobs, or cancel one."
    requires_system_checks = []

    def add_arguments(self, parser):
        parser.add_argument("--repository", help="repository name")
        parser.add_argument("--status", choices=[s for s, _ in Job.Status.choices])
        parser.add_argument("--kind", choices=[k for k, _ in Job.Kind.choices])
        parser.add_argument("--limit", type=int, default=50)
        parser.add_argument("--cancel", type=int, metavar="JOB_ID", help="cancel this job")
        parser.add_argument("--json", action="store_true")

    def handle(self, *args, **options):
        if options["cancel"] is not None:
            job = Job.objects.filter(pk=options["cancel"]).first()
            if job is None:
                raise CommandError(f"No job {options['cancel']}.", returncode=EXIT_FAILED)
            job = jobs.cancel(job)
            state = "cancel requested" if job.cancel_requested else job.status
            self.stdout.write(
                json.dumps(job_summary(job)) if options["json"] else f"job {job.pk}: {state}"
            )
            return
        queryset = Job.objects.all()
        if options["repository"]:
            queryset = queryset.filter(repository_name=options["repository"])
        if options["status"]:
            queryset = queryset.filter(status=options["status"])
        if options["kind"]:
            queryset = queryset.filter(kind=options["kind"])
        rows = [job_summary(j) for j in queryset[: options["limit"]]]
        if options["json"]:
            self.stdout.write(json.dumps(rows, indent=2))
            return
        for row in rows:
            self.stdout.write(
                f"{row['job_id']:>6} {row['kind']:<18} {row['repository']:<20} "
                f"{row['status']:<11} {row['started_at'] or '-':<33} {row['error'] or ''}"
            )
