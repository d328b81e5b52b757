"""Downloads: files of an archive streamed to a client as borg reads them.

A download is a job like the others (checked by intake, holding its repository's lease while
borg reads, ended by `jobs.end`, audited), run in the process that serves the client: borg's
`export-tar` writes a plain tar into a pipe, and the reader here turns it into what the client
asked for: one regular file as itself (Content-Length from its tar header), or the tar, plain or
compressed in this process. Nothing is written to disk and memory stays flat: one chunk at a
time, and a pipe's worth of back-pressure on borg when the client is slow.

When the client goes, the pipe's reading end is closed: borg's next write fails and it exits,
the job ends as cancelled and the lease is free again within moments.
"""

import fcntl
import os
import re
import select
import tarfile
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import zstandard
from django.conf import settings
from django.db import connection
from django.http import StreamingHttpResponse
from django.utils.http import content_disposition_header

from borgapp import intake, jobs, relay
from borgapp.errors import Conflict, InvalidInput, OperationError, TooMany
from borgapp.models import Archive, Job, Repository
from borgapp.places import Places

CLIENT_GONE = "client_gone"
CHUNK = 1 << 20  # bytes per read and per send: fewer hand-overs to the event loop
PIPE_SIZE = 1 << 20  # the pipe borg writes into (Linux's default of 64 KiB means 16x the reads)
POLL = 0.5  # seconds between looks at whether the client is still there
END_WAIT = 30.0  # seconds the reader waits for borg to end after the stream is closed
CONTENT_TYPES = {
    "tar": "application/x-tar",
    "tar.gz": "application/gzip",
    "tar.zst": "application/zstd",
    "file": "application/octet-stream",
}


class NotInArchive(InvalidInput):
    """None of the requested paths is in the archive (the door answers 404)."""


class Sink:
    """The pipe between borg (its write end) and the reader (its read end)."""

    def __init__(self):
        self.read_fd, self.fd = os.pipe()
        try:
            fcntl.fcntl(self.fd, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
        except OSError:  # above /proc/sys/fs/pipe-max-size for this user: keep the default
            pass
        self.gone = threading.Event()  # the reader stopped before the end: borg must stop
        self.drained = threading.Event()  # the reader saw the end of the stream
        self.over = threading.Event()  # either of the two: nothing more will be read
        self.complete = threading.Event()  # the client has all it asked for
        self.sent = 0
        self.format = ""  # what the client gets: file, tar, tar.gz or tar.zst
        self.why_stopped = ""  # when the reader stopped early for another reason than a client
        self._lock = threading.Lock()
        self._open = {"read": True, "write": True}

    def _close(self, end: str, fd: int) -> None:
        with self._lock:
            if self._open[end]:
                self._open[end] = False
                os.close(fd)

    def mark_drained(self) -> None:
        self.drained.set()
        self.over.set()

    def mark_gone(self) -> None:
        self.gone.set()
        self.over.set()

    def close_writer(self) -> None:
        self._close("write", self.fd)

    def close_reader(self) -> None:
        self._close("read", self.read_fd)


# Downloads this process serves at once (each holds a thread and a lease).
slots = Places("DOWNLOAD_SLOTS")


def _take_slot() -> None:
    if not slots.take():
        raise TooMany(
            f"{slots.count} downloads are running in this server process already; try again "
            "when one has finished (OPSCENTER_DOWNLOAD_SLOTS)."
        )


class _Peek:
    """The pipe's read end as a file for `tarfile`, keeping every byte read while the first
    header is parsed, so that the same bytes can still be sent on as they came."""

    def __init__(self, fd: int, stopped: Callable[[], bool]):
        self.fd = fd
        self.stopped = stopped
        self.kept = bytearray()

    def read(self, size: int = CHUNK) -> bytes:
        data = read_chunk(self.fd, self.stopped, size)
        self.kept += data
        return data


def read_chunk(fd: int, stopped: Callable[[], bool], size: int = CHUNK) -> bytes:
    """The next bytes borg wrote (b"" at its end), looking every POLL seconds whether the
    client is still there; a gone client ends the stream too."""
    while True:
        if stopped():
            return b""
        ready, _, _ = select.select([fd], [], [], POLL)
        if ready:
            return os.read(fd, size)


@dataclass
class Download:
    """One download being served: what to tell the client, and the body as an iterator that
    must be closed (`close`) whether or not it was read to its end."""

    job: Job
    filename: str
    content_type: str
    length: int | None
    body: Iterator[bytes] = field(repr=False)

    def close(self) -> None:
        self.body.close()


def begin(
    archive: Archive,
    paths: list[str],
    fmt: str = "auto",
    *,
    trigger: str,
    user=None,
    lease_wait: float | None = None,
    client_gone: threading.Event | None = None,
    host=None,
) -> Download:
    """Check the request, take the repository's lease (waiting up to `lease_wait` seconds,
    for ever with None), start borg and read the stream's first header. Raises InvalidInput,
    NotInArchive, Conflict (busy), TooMany (no slot) or OperationError (borg failed); nothing
    is left running then. With a `host`, borg runs there: the job waits for the host's agent
    (which takes the lease), and its upload is relayed here as it arrives (borgapp.relay)."""
    params = {"archive": archive.name, "paths": paths, "format": fmt}
    _take_slot()  # before the job is recorded: a refusal here leaves no job waiting
    job = None
    try:
        job = intake.prepare(
            Job.Kind.DOWNLOAD, archive.repository, params, trigger=trigger, user=user, host=host
        )
        if host is None:
            _claim(job, lease_wait)
    except BaseException:
        slots.give_back()
        if job is not None:
            jobs.cancel(job)  # Ctrl-C while it waited: it never started (no-op once ended)
        raise
    # the job's thread gives the slot back
    return _start(job, client_gone or threading.Event(), relayed=host is not None)


def _claim(job: Job, wait: float | None) -> None:
    deadline = None if wait is None else time.monotonic() + wait
    while not jobs.claim(job):
        if deadline is not None and time.monotonic() >= deadline:
            holder = Repository.objects.filter(pk=job.repository_id).values_list(
                "lease_job_id", flat=True
            )
            jobs.end(
                job,
                Job.Status.CANCELLED,
                only_from=Job.Status.QUEUED,
                error_code="busy",
                error_message="The repository was busy; nothing was sent.",
            )
            raise Conflict(
                f"Repository {job.repository_name} is busy with job {holder.first()}; "
                "try again when it has finished."
            )
        time.sleep(0.2)


def _start(job: Job, client_gone: threading.Event, relayed: bool = False) -> Download:
    sink = Sink()
    runner = threading.Thread(target=_relay_run if relayed else _run, args=(job, sink),
                              name=f"download-{job.pk}")  # fmt: skip
    runner.start()

    def stopped() -> bool:
        return client_gone.is_set()

    peek = _Peek(sink.read_fd, stopped)
    try:
        first = _first_member(peek)
        if first is None:
            raise _no_stream(job, sink, runner)
        p = job.params
        whole_file = first.isreg() and len(p["paths"]) == 1 and first.name == p["paths"][0]
        if p["format"] == "file" and not whole_file:
            raise InvalidInput(
                f"{p['paths'][0]} is a folder or a link, not a file: download it as a tar."
            )
    except BaseException as exc:
        sink.why_stopped = f"The download was refused before it was sent: {exc}"
        _stop(job, sink, runner)
        raise
    as_file = whole_file and p["format"] in ("auto", "file")
    fmt = sink.format = "file" if as_file else ("tar" if p["format"] == "auto" else p["format"])
    if as_file:
        body = _file_body(first, peek, sink, stopped)
    else:
        body = _tar_body(fmt, peek, sink, stopped)
    return Download(
        job=job,
        filename=_filename(job, fmt),
        content_type=CONTENT_TYPES[fmt],
        length=first.size if as_file else None,
        body=_guarded(body, job, sink, runner),
    )


def _run(job: Job, sink: Sink) -> None:
    """The job, in a thread of its own: borg writes while the client's thread reads."""
    try:
        jobs.execute(job, sink=sink)
    finally:
        sink.close_writer()
        slots.give_back()
        connection.close()  # this thread's own connection


def _relay_run(job: Job, sink: Sink) -> None:
    """A host's download, in a thread of its own: what the host's agent uploads is written
    into the pipe the client's thread reads; the agent's report ends the job."""
    listener = relay.listen(job.pk)
    try:
        conn = relay.accept(listener, settings.DOWNLOAD_AGENT_WAIT, sink.gone)
        if conn is None:
            wait = settings.DOWNLOAD_AGENT_WAIT
            why = (
                "The download was stopped before the host's agent began."
                if sink.gone.is_set()
                else f"The agent of host {job.host.name} did not begin within {wait:.0f} s: "
                "is it running? (see the host's last seen)"
            )
            code = CLIENT_GONE if sink.gone.is_set() else "host_unavailable"
            status = Job.Status.CANCELLED if sink.gone.is_set() else Job.Status.FAILED
            for was in (Job.Status.QUEUED, Job.Status.RUNNING):
                jobs.end(job, status, only_from=was, error_code=code, error_message=why)
            return
        with conn:
            _copy(conn, sink)
        ended = _ended(job, END_WAIT)
        if ended is None and sink.gone.is_set():  # the agent is silent: end it here
            jobs.end(job, Job.Status.CANCELLED, error_code=CLIENT_GONE,
                     error_message="The client left before the download's end.")  # fmt: skip
    finally:
        relay.close(listener, job.pk)
        sink.close_writer()
        slots.give_back()
        connection.close()  # this thread's own connection


def _copy(conn, sink: Sink) -> None:
    """The upload's bytes into the client's pipe until its end, or until the client's side
    is closed (the upload then fails, and the agent stops borg)."""
    while data := conn.recv(CHUNK):
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(sink.fd, view) :]
        except BrokenPipeError:
            return


def _ended(job: Job, wait: float) -> Job | None:
    """The job once it has ended (its agent reported), or None after `wait` seconds."""
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        found = (
            Job.objects.filter(pk=job.pk)
            .exclude(status__in=[Job.Status.QUEUED, Job.Status.RUNNING])
            .first()
        )
        if found is not None:
            return found
        time.sleep(0.2)
    return None


def _first_member(peek: _Peek) -> tarfile.TarInfo | None:
    try:
        return tarfile.open(fileobj=peek, mode="r|").next()
    except tarfile.ReadError:  # no tar at all: borg failed before writing one
        return None


def _no_stream(job: Job, sink: Sink, runner: threading.Thread) -> Exception:
    """borg wrote nothing to download: why, from the job's end."""
    _drain(sink)
    runner.join(END_WAIT)
    job.refresh_from_db()
    if job.error_code == "path_not_found":
        return NotInArchive(job.error_message)
    message = job.error_message or "borg sent nothing."
    return OperationError(message, job.error_code or "download_failed")


def _drain(sink: Sink) -> None:
    """Read the stream to its end and drop it (what follows a single file: padding, and
    borg's scan of the rest of the archive), so borg ends normally."""
    while os.read(sink.read_fd, CHUNK):
        pass
    sink.mark_drained()
    sink.close_reader()


def _stop(job: Job, sink: Sink, runner: threading.Thread) -> None:
    """The client is gone (or the request failed): stop borg by closing the pipe (its next
    write fails), ask the job to stop in case borg is not writing, and wait for its end.
    Nothing to do once the client has had everything (a file's rest drains by itself)."""
    if sink.complete.is_set():
        return
    if not sink.drained.is_set():
        sink.mark_gone()
        # why, kept for whoever ends it (an agent, for a host's download, only sees a cancel)
        Job.objects.filter(pk=job.pk, status=Job.Status.RUNNING).update(
            cancel_requested=True, error_code=CLIENT_GONE
        )
        sink.close_reader()
    runner.join(END_WAIT)


def _guarded(body, job: Job, sink: Sink, runner: threading.Thread) -> Iterator[bytes]:
    try:
        yield from body
        if sink.format != "file":
            # A tar has no length to check: its end is sent only once the job says borg read
            # everything. A failure midway breaks the connection instead (the web server
            # sends no last chunk), so a client never takes a cut tar for a whole one.
            runner.join(END_WAIT)
            job.refresh_from_db()
            if job.status not in Job.OK:
                raise OperationError(
                    f"The download broke off: {job.error_message or job.status}",
                    job.error_code or "download_failed",
                )
    finally:
        _stop(job, sink, runner)


def _file_body(member, peek: _Peek, sink: Sink, stopped) -> Iterator[bytes]:
    """One regular file: its bytes from the tar stream, then the rest is drained in the
    background so the client has its whole answer without waiting for borg's end."""
    start = member.offset_data
    left = member.size
    head = bytes(peek.kept[start : start + left])
    peek.kept.clear()
    left -= len(head)
    if head:
        sink.sent += len(head)
        yield head
    while left > 0:
        data = read_chunk(sink.read_fd, stopped, min(CHUNK, left))
        if not data:
            return  # borg ended early or the client left: _stop tells which
        left -= len(data)
        sink.sent += len(data)
        yield data
    sink.complete.set()
    threading.Thread(target=_drain, args=(sink,), daemon=True).start()


def _compressor(fmt: str):
    if fmt == "tar.gz":
        return zlib.compressobj(6, zlib.DEFLATED, 31)  # 31: the gzip format
    if fmt == "tar.zst":
        return zstandard.ZstdCompressor(level=3).compressobj()
    return None


def _tar_body(fmt: str, peek: _Peek, sink: Sink, stopped) -> Iterator[bytes]:
    """The tar as borg writes it, compressed here when asked."""
    packer = _compressor(fmt)
    data = bytes(peek.kept)
    peek.kept.clear()
    while data:
        sink.sent += len(data)
        out = packer.compress(data) if packer else data
        if out:
            yield out
        data = read_chunk(sink.read_fd, stopped)
    if stopped():
        return
    sink.mark_drained()
    if packer:
        yield packer.flush()


UNSAFE_IN_NAMES = re.compile(r'[\x00-\x1f\x7f:\\/<>"|?*]')


def _filename(job: Job, fmt: str) -> str:
    """A name every browser and system keeps as it is (archive names hold ':')."""
    paths = job.params["paths"]
    base = paths[0].rsplit("/", 1)[-1] if len(paths) == 1 else "selection"
    name = base if fmt == "file" else f"{job.archive_name}-{base}.{fmt}"
    return UNSAFE_IN_NAMES.sub("-", name)


def http_response(download: Download) -> StreamingHttpResponse:
    """The download as a streamed HTTP answer: a safe file name, never cached or sniffed."""
    response = StreamingHttpResponse(download.body, content_type=download.content_type)
    response["Content-Disposition"] = content_disposition_header(True, download.filename)
    if download.length is not None:
        response["Content-Length"] = str(download.length)
    response["Cache-Control"] = "no-store"
    response["X-Content-Type-Options"] = "nosniff"
    response["X-Opscenter-Job"] = str(download.job.pk)
    return response
