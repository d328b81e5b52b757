import os
import stat
import sys
import time

from django.core.management.base import CommandError

from borgapp import downloads
from borgapp.errors import OperationError
from borgapp.management.commands._base import EXIT_FAILED, JobCommand
from borgapp.models import Job
from borgapp.params import DOWNLOAD_FORMATS


class Command(JobCommand):
    help = (
        "Download files of an archive as the web download does: one file as itself, a folder "
        "or several paths as a tar (plain, gzip or zstd), to a file or to standard output."
    )

    def add_arguments(self, parser):
        super().add_arguments(parser)
        parser.add_argument("name", help="repository name")
        parser.add_argument("archive")
        parser.add_argument("paths", nargs="+", help="paths inside the archive")
        parser.add_argument("--format", choices=DOWNLOAD_FORMATS, default="auto")
        parser.add_argument(
            "--output", "-o", default="-", help="a new file (default: standard output)"
        )
        parser.add_argument("--force", action="store_true", help="replace an existing file")
        parser.add_argument(
            "--host", help="run borg on this host's agent (its repository may be reachable "
            "only from there); the bytes are relayed through the center",
        )  # fmt: skip

    def start(self, options, echo):
        repo = self.repository(options["name"])
        archive = repo.archives.filter(name=options["archive"]).first()
        if archive is None:
            raise CommandError(
                f"Archive {options['archive']!r} is not in repository {repo.name} "
                "(run borg_sync if it is new).",
                returncode=EXIT_FAILED,
            )
        host = self.host(options["host"]) if options["host"] else None
        target = Output(options["output"], options["force"])
        try:
            streamed = downloads.begin(
                archive, options["paths"], options["format"], trigger=Job.Trigger.CLI, host=host
            )
        except OperationError as exc:
            target.discard()
            raise CommandError(str(exc), returncode=EXIT_FAILED) from None
        except BaseException:
            target.discard()
            raise
        try:
            for chunk in streamed.body:
                target.write(chunk)
        except OperationError as exc:  # it broke off midway: nothing is kept
            target.discard()
            raise CommandError(str(exc), returncode=EXIT_FAILED) from None
        except BaseException:
            target.discard()
            raise
        finally:
            streamed.close()
        job = _ended(streamed.job)
        if job.status in Job.OK:
            target.keep()
        else:
            target.discard()
        return job

    def report(self, job, options):
        if options["output"] == "-":  # the data went to stdout: say the rest on stderr
            self.stdout = self.stderr
        super().report(job, options)


def _ended(job: Job, wait: float = downloads.END_WAIT) -> Job:
    """The job once borg has ended (after a single file, borg reads on to the archive's end)."""
    deadline = time.monotonic() + wait
    job.refresh_from_db()
    while not job.is_finished and time.monotonic() < deadline:
        time.sleep(0.1)
        job.refresh_from_db()
    return job


class Output:
    """Standard output, or a new file written under a temporary name and renamed into place
    only once the download has succeeded (a failed one leaves nothing behind)."""

    def __init__(self, path: str, force: bool):
        self.path = path
        self.device = False  # a device or pipe opened here, closed at the end
        if path == "-":
            if sys.stdout.isatty():
                raise CommandError(
                    "Standard output is a terminal; give --output FILE (or redirect it).",
                    returncode=EXIT_FAILED,
                )
            self.fd, self.partial = sys.stdout.fileno(), None
            return
        if os.path.exists(path) and not stat.S_ISREG(os.stat(path).st_mode):
            # a device or a pipe (/dev/null, a FIFO): written as it is, never replaced
            try:
                self.fd, self.partial = os.open(path, os.O_WRONLY), None
                self.device = True
            except OSError as exc:
                raise CommandError(
                    f"Cannot write {path}: {exc.strerror}.", returncode=EXIT_FAILED
                ) from None
            return
        if os.path.lexists(path) and not force:
            raise CommandError(
                f"{path} exists; choose another --output or add --force.", returncode=EXIT_FAILED
            )
        folder, name = os.path.split(os.path.abspath(path))
        self.partial = os.path.join(folder, f".{name}.partial")
        try:
            self.fd = os.open(self.partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        except OSError as exc:
            raise CommandError(
                f"Cannot write {path}: {exc.strerror}.", returncode=EXIT_FAILED
            ) from None

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self.fd, view) :]

    def keep(self) -> None:
        self._close_device()
        if self.partial is not None:
            os.close(self.fd)
            os.replace(self.partial, self.path)
            self.partial = None

    def _close_device(self) -> None:
        if self.device:
            os.close(self.fd)
            self.device = False

    def discard(self) -> None:
        self._close_device()
        if self.partial is not None:
            os.close(self.fd)
            os.unlink(self.partial)
            self.partial = None
