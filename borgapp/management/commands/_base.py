"""Shared shape of the borg_* commands: a thin layer over intake/operations with `--json`,
exit 0 on success, 1 on a warning, 2 on failure with a one-line reason on stderr."""

import getpass
import json
import os
import signal
import sys
import time

from django.core.management.base import BaseCommand, CommandError

from borgapp import intake, jobs, validation
from borgapp.errors import Conflict
from borgapp.job_summary import summarize
from borgapp.models import Host, Job, Repository
from borgapp.units import human_bytes
from borgapp.vault import VaultError

EXIT_OK, EXIT_WARNING, EXIT_FAILED = 0, 1, 2


def job_summary(job: Job) -> dict:
    return {
        "job_id": job.pk,
        "kind": job.kind,
        "repository": job.repository_name,
        "status": job.status,
        "started_at": job.started_at.isoformat() if job.started_at else None,
        "finished_at": job.finished_at.isoformat() if job.finished_at else None,
        "duration": job.duration,
        "result": job.result,
        "error_code": job.error_code or None,
        "error": job.error_message or None,
        "hooks": job.hook_log,
    }


class JobCommand(BaseCommand):
    """Subclasses implement `start(options, echo)` returning a finished Job."""

    requires_system_checks = []

    def add_arguments(self, parser):
        parser.add_argument("--json", action="store_true", help="print a JSON object")

    def repository(self, name: str) -> Repository:
        repo = Repository.objects.filter(name=name).first()
        if repo is None:
            raise CommandError(f"No repository named {name!r}.", returncode=EXIT_FAILED)
        return repo

    def run_kind(self, kind: str, name: str, params: dict, echo) -> Job:
        return intake.start(
            kind, self.repository(name), params, trigger=Job.Trigger.CLI, inline=True, echo=echo
        )

    def host(self, host_name: str) -> Host:
        host = Host.objects.filter(name=host_name).first()
        if host is None:
            raise CommandError(f"No host named {host_name!r}.", returncode=EXIT_FAILED)
        return host

    def run_on_host(self, kind: str, name: str, params: dict, host_name: str) -> Job:
        """Queue the job for a host's agent, then wait here until it has ended."""
        host = self.host(host_name)
        job = intake.start(kind, self.repository(name), params, trigger=Job.Trigger.CLI, host=host)
        try:
            while not job.is_finished:
                time.sleep(0.5)
                job.refresh_from_db()
        except KeyboardInterrupt:
            jobs.cancel(job)
            raise
        return job

    def handle(self, *args, **options):
        # SIGTERM becomes an exception, so borg is stopped politely and the job recorded.
        signal.signal(signal.SIGTERM, _terminate)
        echo = self._progress_echo() if not options["json"] else None
        try:
            job = self.start(options, echo)
        except (validation.InvalidInput, Conflict, VaultError) as exc:
            raise CommandError(str(exc), returncode=EXIT_FAILED) from None
        except KeyboardInterrupt:
            raise CommandError(
                "Interrupted with Ctrl-C; the job was recorded as cancelled.",
                returncode=EXIT_FAILED,
            ) from None
        if echo:
            sys.stderr.write("\n")
        self.report(job, options)

    def report(self, job: Job, options) -> None:
        if options["json"]:
            self.stdout.write(json.dumps(job_summary(job), indent=2, default=str))
        else:
            self.stdout.write(self.describe(job))
        if job.status == Job.Status.SUCCEEDED:
            return
        if job.status == Job.Status.WARNING:
            self.stderr.write(f"warning: {job.error_message or 'borg reported a warning'}")
            sys.exit(EXIT_WARNING)
        reason = job.error_message or job.status
        raise CommandError(
            f"{job.get_kind_display()} {job.status}: {reason}", returncode=EXIT_FAILED
        )

    def describe(self, job: Job) -> str:
        """For a person: the job's sentence, then its figures with their units (the page's
        own summary; `--json` gives the raw numbers for scripts)."""
        summary = summarize(job)
        lines = [f"{job.get_kind_display()} job {job.pk}: {job.status}"]
        if summary.sentence and job.status in Job.OK:
            lines.append(summary.sentence)
        width = max((len(label) for label, _ in summary.facts), default=0)
        lines += [f"  {label + ':':<{width + 1}} {value}" for label, value in summary.facts]
        return "\n".join(lines)

    def _progress_echo(self):
        if not sys.stderr.isatty():
            return None

        def echo(fields):
            parts = []
            if fields.get("progress_percent") is not None:
                parts.append(f"{fields['progress_percent']:5.1f}%")
            if fields.get("progress_bytes") is not None:
                parts.append(f"{human_bytes(fields['progress_bytes']):>10}")
            if fields.get("progress_files") is not None:
                parts.append(f"{fields['progress_files']:,} files")
            path = fields.get("progress_path") or fields.get("progress_message") or ""
            line = " ".join(parts + [path])[:120]
            sys.stderr.write("\r" + line.ljust(120))
            sys.stderr.flush()

        return echo


def repository_command(kind: str, help_text: str):
    """A command that runs one operation on a named repository, with no other options."""

    class Command(JobCommand):
        help = help_text

        def add_arguments(self, parser):
            super().add_arguments(parser)
            parser.add_argument("name", help="repository name")

        def start(self, options, echo):
            return self.run_kind(kind, options["name"], {}, echo)

    return Command


def _terminate(signo, frame):
    raise SystemExit(128 + signo)


def read_passphrase(options, prompt: str = "Passphrase: ", required: bool = True) -> str | None:
    """From --passphrase-file, else BORG_PASSPHRASE, else a prompt on a terminal."""
    path = options.get("passphrase_file")
    if path:
        try:
            with open(path, encoding="utf-8") as handle:
                return handle.read().rstrip("\n")
        except OSError as exc:
            raise CommandError(
                f"Cannot read the passphrase file: {exc.strerror}.", returncode=EXIT_FAILED
            ) from None
    if "BORG_PASSPHRASE" in os.environ:
        return os.environ["BORG_PASSPHRASE"]
    if sys.stdin.isatty():
        return getpass.getpass(prompt)
    if required:
        raise CommandError(
            "A passphrase is needed: use --passphrase-file, BORG_PASSPHRASE, or a terminal.",
            returncode=EXIT_FAILED,
        )
    return None
