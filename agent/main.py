"""The ops center's agent: one process on each backed-up host. It connects out to the center
(no port open on the host), asks for its host's next job, runs borg there through the
project's one door to borg (`borgapp.borg`: argv as data, the passphrase through a pipe,
`--log-json` progress, the signal ladder), reports progress at most once a second (a cancel
comes back in the answer) and then the outcome. It needs Python and borg on the host, and
none of the center's database or broker: it imports no Django.

  python -m agent enroll --center URL --data DIR < token    (exchange a one-time token)
  python -m agent run --data DIR [--once]                     (serve the host's jobs)

The data folder (0700) keeps the credential (0600) and borg's own base folder. The job's
passphrase is never written anywhere: it lives in this process while borg runs.
"""

import argparse
import getpass
import http.client
import json
import os
import random
import select
import shutil
import signal
import socket
import ssl
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import replace
from datetime import UTC
from pathlib import Path

from borgapp import borg, dumps, heldir, inplace, procs, validation, verifying
from borgapp.errors import OperationError

VERSION = "0.1"
PROGRESS_EVERY = 1.0  # seconds between progress reports (REL-07)
RETRY = 5.0  # seconds before asking again after the center could not be reached
# A progress report waits this long at most: borg's output is read meanwhile, so a center out
# of reach must not hold borg up for long.
PROGRESS_TIMEOUT = 5.0


class Refused(Exception):
    """The center refused the agent (401): a wrong, used or revoked token or credential."""


class Center:
    def __init__(self, url: str, credential: str = ""):
        self.url = url.rstrip("/")
        self.credential = credential

    def post(self, path: str, data: dict, timeout: float = 30.0) -> tuple[int, dict]:
        headers = {"Content-Type": "application/json"}
        if self.credential:
            headers["Authorization"] = f"Agent {self.credential}"
        request = urllib.request.Request(
            f"{self.url}/agent/v1/{path}", json.dumps(data).encode(), headers, method="POST"
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout) as answer:
                raw = answer.read()
                return answer.status, json.loads(raw) if raw else {}
        except urllib.error.HTTPError as exc:
            if exc.code == 401:
                raise Refused(f"the center refused this agent ({path})") from None
            return exc.code, {}

    def upload(self, path: str, chunks, timeout: float = 120.0) -> tuple[int, dict]:
        """Send `chunks` as the body as they come (chunked: no length, no copy). The center
        may answer before the end (410: its client left): the upload stops there, rather
        than push the rest into a connection nobody reads (http.client would only look
        for the answer after the whole body)."""
        parts = urllib.parse.urlsplit(f"{self.url}/agent/v1/{path}")
        https = parts.scheme == "https"
        connection = (http.client.HTTPSConnection if https else http.client.HTTPConnection)(
            parts.hostname, parts.port, timeout=timeout
        )
        try:
            connection.putrequest("POST", parts.path)
            for name, value in (("Content-Type", "application/x-tar"),
                                ("Transfer-Encoding", "chunked"),
                                ("Authorization", f"Agent {self.credential}")):  # fmt: skip
                connection.putheader(name, value)
            connection.endheaders()
            sock = connection.sock
            for chunk in chunks:
                if not _send_unless_answered(sock, b"%x\r\n%b\r\n" % (len(chunk), chunk), timeout):
                    break
            else:
                _send_unless_answered(sock, b"0\r\n\r\n", timeout)
            sock.setblocking(True)
            sock.settimeout(timeout)
            answer = connection.getresponse()
            raw = answer.read()
        finally:
            connection.close()
        if answer.status == 401:
            raise Refused(f"the center refused this agent ({path})")
        try:
            return answer.status, json.loads(raw) if raw else {}
        except ValueError:
            return answer.status, {}


def _send_unless_answered(sock, data: bytes, timeout: float) -> bool:
    """Send all of `data`, unless the other side answers first (False then)."""
    sock.setblocking(False)
    view = memoryview(data)
    while view:
        readable, writable, _ = select.select([sock], [sock], [], timeout)
        if readable:
            return False
        if not writable:
            raise TimeoutError(f"the center took nothing for {timeout:.0f} s")
        try:
            view = view[sock.send(view[:65536]) :]
        except (BlockingIOError, ssl.SSLWantWriteError):
            continue
    return True


def private_folder(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(path, 0o700)
    return path


def ssh_key(data: Path) -> str:
    """The agent's own ssh key (made once): the repository server limits it to appending to
    its repository (the center writes that authorized_keys line)."""
    key = private_folder(data / "ssh") / "id_ed25519"
    if not key.exists():
        made = borg.run_program(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "opscenter-agent",
             "-f", str(key)],
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")}, timeout=30,
        )  # fmt: skip
        if made.rc != 0:
            return ""  # no ssh here: local repositories still work
    return (data / "ssh" / "id_ed25519.pub").read_text().strip()


def config_of(data: Path) -> borg.BorgConfig:
    rsh = os.environ.get("BORG_RSH", "ssh -oBatchMode=yes -oServerAliveInterval=10")
    key = data / "ssh" / "id_ed25519"
    if key.exists():  # its own key, and only it
        rsh += f" -i {key} -oIdentitiesOnly=yes"
    return borg.BorgConfig(
        binary=os.environ.get("BORG_BINARY", "borg"),
        base_dir=str(private_folder(data / "borg")),
        rsh=rsh,
        remote_path=os.environ.get("BORG_REMOTE_PATH", ""),
    )


def enroll(args) -> int:
    token = sys.stdin.readline().strip()
    data = private_folder(Path(args.data))
    config = config_of(data)
    version = ".".join(map(str, borg.version(config)))
    center = Center(args.center)
    public_key = ssh_key(data)
    try:
        status, answer = center.post(
            "enroll",
            {"token": token, "agent_version": VERSION, "borg_version": version,
             "ssh_public_key": public_key},
        )  # fmt: skip
    except Refused:
        print("The center refused the token (wrong, expired, used or revoked).", file=sys.stderr)
        return 2
    if status != 200:
        print(f"The center answered {status}.", file=sys.stderr)
        return 2
    secret = data / "credential"
    fd = os.open(secret, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(answer["credential"] + "\n")
    (data / "agent.json").write_text(json.dumps({"center": args.center, "host": answer["host"]}))
    print(f"Enrolled as host {answer['host']}.")
    return 0


def run(args) -> int:
    data = Path(args.data)
    settings = json.loads((data / "agent.json").read_text())
    center = Center(settings["center"], (data / "credential").read_text().strip())
    config = config_of(data)
    roots = [Path(r).resolve() for r in args.restore_root] or [
        private_folder(data / "restore").resolve()
    ]
    try:
        recover(center, data)
        while True:
            if serve_one(center, data, config, roots, args) and args.once:
                return 0
    except Refused as exc:
        print(f"Stopping: {exc}.", file=sys.stderr)
        return 2


def serve_one(center: Center, data: Path, config, roots, args) -> bool:
    """One poll, and the job it brings (if any) run and reported: True when one came."""
    asked = time.monotonic()
    try:
        status, answer = center.post("poll", {"wait": args.wait}, timeout=args.wait + 30)
    except OSError as exc:  # the center is unreachable for now: ask again
        print(f"The center could not be reached ({exc}); trying again.", file=sys.stderr)
        time.sleep(RETRY)
        return False
    if status == 200 and answer.get("job"):
        job_id = answer["job"]["id"]
        remember(data, RUNNING, {"job": job_id})
        try:
            inplace_roots = tuple(Path(r).resolve() for r in args.inplace_root)
            report = execute(center, answer["job"], config, roots, data, inplace_roots)
        except (SystemExit, KeyboardInterrupt):
            # stopped (systemctl stop, Ctrl-C): borg was already stopped politely by the
            # door to borg; say so, so the center frees the lease at once
            stopped = {"outcome": "interrupted", "code": "interrupted",
                       "error": "The agent was stopped."}  # fmt: skip
            deliver(center, data, job_id, stopped, tries=1)
            raise
        deliver(center, data, job_id, report)
        return True
    if status != 204:
        time.sleep(RETRY)
    elif time.monotonic() - asked < args.wait / 2:
        # the center did not let this poll wait (its waiting places were taken): ask again
        # a little later, at a random moment, never in a tight loop
        time.sleep(random.uniform(1.0, 3.0))
    return False


# --- what survives the agent: its running borg and its undelivered report -------------------

RUNNING = "running.json"  # the job in hand, and its borg's pid once started
PENDING = "report.json"  # an outcome the center has not acknowledged yet (no secret in it)


def remember(data: Path, name: str, value: dict) -> None:
    """Write a small state file atomically, 0600."""
    fd, temporary = tempfile.mkstemp(dir=data, prefix=f".{name}.")
    with os.fdopen(fd, "w") as handle:
        json.dump(value, handle)
    os.replace(temporary, data / name)


def recalled(data: Path, name: str) -> dict | None:
    try:
        value = json.loads((data / name).read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def forget(data: Path, name: str) -> None:
    (data / name).unlink(missing_ok=True)


def deliver(center: Center, data: Path, job_id: int, report: dict, tries: int = 0) -> bool:
    """Tell the center how the job ended, again and again while it cannot be reached (a backup
    that finished while the link was down is recorded when it is back, not run again). The
    report waits on disk meanwhile, so a restarted agent delivers it too. `tries`: give up
    after this many attempts (0: never), leaving it on disk."""
    remember(data, PENDING, {"job": job_id, "report": report})
    forget(data, RUNNING)
    attempt = 0
    while True:
        attempt += 1
        try:
            status, _ = center.post(f"jobs/{job_id}/done", report)
        except OSError as exc:
            status = f"unreachable ({exc})"
        if status in (200, 404):  # recorded, or no longer the center's to record
            forget(data, PENDING)
            return True
        if tries and attempt >= tries:
            return False
        print(f"The outcome of job {job_id} is not delivered yet ({status}); trying again.",
              file=sys.stderr)  # fmt: skip
        time.sleep(RETRY)


def recover(center: Center, data: Path) -> None:
    """At start: what an agent that was killed (kill -9, a crash, the OOM killer) left. Its
    borg may still run on (borg runs in a session of its own): it is stopped, so that it
    holds no repository lock, and its job is reported interrupted at once rather than
    after the center's grace period. An outcome not yet delivered is delivered."""
    pending = recalled(data, PENDING)
    if pending is not None:  # first: a real outcome beats "interrupted"
        deliver(center, data, pending["job"], pending["report"])
    left = recalled(data, RUNNING)
    if left is not None:
        procs.stop_orphan(left.get("borg_pid"), left.get("borg_started"))
        error = ("The agent stopped without warning (killed or crashed) while the job ran; "
                 "the borg it left was stopped when the agent started again.")  # fmt: skip
        report = {"outcome": "interrupted", "code": "agent_restarted", "error": error}
        deliver(center, data, left["job"], report)


class Reporter:
    """Progress to the center at most once a second; the answer says whether to stop."""

    def __init__(self, center: Center, job_id: int, data: Path):
        self.center, self.job_id, self.data = center, job_id, data
        self.fields: dict = {}
        self.last = 0.0
        self.cancel = False

    def on_start(self, pid: int) -> None:
        """borg runs: remember it, so that an agent killed meanwhile stops it when back."""
        remember(self.data, RUNNING, {"job": self.job_id, "borg_pid": pid,
                                      "borg_started": procs.start_ticks(pid)})  # fmt: skip

    def on_event(self, event: dict) -> None:
        if borg.progress_of(event, self.fields):
            self.send()

    def send(self) -> None:
        now = time.monotonic()
        if now - self.last < PROGRESS_EVERY:
            return
        self.last = now
        try:
            _, answer = self.center.post(
                f"jobs/{self.job_id}/progress", {"fields": self.fields}, timeout=PROGRESS_TIMEOUT
            )
        except (OSError, Refused):
            return  # the next report tries again; the job goes on
        self.cancel = bool(answer.get("cancel"))

    def should_stop(self) -> bool:
        self.send()
        return self.cancel


def execute(center: Center, job: dict, config: borg.BorgConfig, roots: list[Path],
            data: Path, inplace_roots: tuple = ()) -> dict:  # fmt: skip
    """Run one job of this host and say how it ended."""
    config = replace(config, lock_wait=int(job.get("lock_wait") or config.lock_wait))
    reporter = Reporter(center, job["id"], data)
    if job["kind"] == "extract":
        return extract(reporter, job, config, roots)
    if job["kind"] == "download":
        return download(reporter, job, config)
    if job["kind"] == "restore":
        return restore_in_place(reporter, job, config, inplace_roots)
    if job["kind"] == "restore_database":
        return restore_database(reporter, job, config, [*roots, *inplace_roots])
    if job["kind"] == "verify_restore":
        return verify_restore(reporter, job, config, roots)
    return backup(reporter, job, config)


def run_borg(command: borg.Command, config, job: dict, reporter: "Reporter",
             on_line=None) -> borg.Result:  # fmt: skip
    return borg.run(
        command, config, passphrase=job.get("passphrase"), on_event=reporter.on_event,
        on_line=on_line,
        on_start=reporter.on_start, should_stop=reporter.should_stop,
        deadline=float(job.get("deadline") or 86400),
    )  # fmt: skip


def failed(exc: Exception, reporter: "Reporter") -> dict:
    if isinstance(exc, borg.BorgError):
        outcome = "cancelled" if reporter.cancel else "failed"
        return {"outcome": outcome, "code": exc.code, "error": exc.message, "tail": exc.tail}
    return {"outcome": "failed", "code": getattr(exc, "code", "invalid_input"),
            "error": str(exc), "result": getattr(exc, "result", {})}  # fmt: skip


def extract(reporter: Reporter, job: dict, config, roots: list[Path]) -> dict:
    """Restore paths of an archive into a new or empty folder on this host, under one of the
    agent's own restore roots (the center cannot choose a place outside them)."""
    p = job["params"]
    try:
        target = Path(validation.require_under_roots(p["target"], roots, "Restore target"))
        if target.is_symlink() or (target.exists() and any(target.iterdir())):
            raise OperationError(f"Restore target {target} is not a new or empty folder.")
        target.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(target, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        try:
            command = borg.extract_cmd(
                job["repository"]["location"], job["archive"], str(target), p.get("paths"),
                strip_components=int(p.get("strip_components") or 0),
            )  # fmt: skip
            result = run_borg(replace(command, cwd_fd=fd), config, job, reporter)
            files = sum(len(names) for _, _, names, _ in os.fwalk(".", dir_fd=fd))
        finally:
            os.close(fd)
    except (borg.BorgError, OperationError, validation.InvalidInput, OSError) as exc:
        return failed(exc, reporter)
    outcome = "warning" if result.warning else "succeeded"
    return {"outcome": outcome, "files": files, "warnings": result.warnings,
            "tail": result.tail}  # fmt: skip


def restore_in_place(reporter: Reporter, job: dict, config, roots: tuple) -> dict:
    """Paths of an archive back where they were on this host (or under a folder that stands
    for "/"), by the job's policy for what exists, only under the agent's own in-place roots
    (`--inplace-root`; none: refused). A preview lists what would be created, replaced,
    kept, left alone and blocked; otherwise borg extracts into a private staging folder in
    the root and each entry is moved into place, never through a link (borgapp.inplace)."""
    p = job["params"]
    paths, policy, archive = p["paths"], p["policy"], job["archive"]
    location = job["repository"]["location"]
    try:
        where = os.path.join(p["target"], paths[0])
        root = next((r for r in roots if validation.is_within(where, str(r))), None)
        if root is None:
            allowed = ", ".join(map(str, roots)) or "none: start the agent with --inplace-root"
            raise validation.InvalidInput(
                f"Restore destination {where} is not under an in-place root of this agent "
                f"({allowed})."
            )
        own = str(reporter.data.resolve())
        if validation.is_within(where, own) or validation.is_within(own, where):
            raise validation.InvalidInput(
                f"Restore destination {where} overlaps the agent's own data folder {own}."
            )
        heldir.require_private_path(root, "In-place root")
        target_fd = heldir.open_dir_nofollow(p["target"], "Target")
        try:
            if p.get("preview", True):
                entries = []

                def collect(raw: bytes) -> None:
                    if raw.strip():
                        entries.append(inplace.entry_from_listing(json.loads(raw), UTC))

                command = borg.list_items_cmd(location, archive, paths)
                run_borg(replace(command, extra_env={"TZ": "UTC"}), config, job, reporter,
                         on_line=collect)  # fmt: skip
                heldir.require_listed(archive, paths, {entry.path for entry in entries})
                report = inplace.preview(entries, target_fd, policy, paths)
            else:
                report = _staged_restore(reporter, job, config, root, target_fd)
        finally:
            os.close(target_fd)
    except inplace.ApplyFailed as exc:
        return {"outcome": "failed", "code": exc.code, "error": exc.message,
                "result": {"report": exc.report.as_dict()}}  # fmt: skip
    except (borg.BorgError, OperationError, validation.InvalidInput, OSError) as exc:
        return failed(exc, reporter)
    return {"outcome": "succeeded", "report": report.as_dict()}


def _staged_restore(reporter: Reporter, job: dict, config, root: Path, target_fd: int):
    p = job["params"]
    staging = Path(tempfile.mkdtemp(prefix=inplace.STAGING_PREFIX.decode(), dir=root))
    try:
        fd = heldir.hold_empty_dir(staging, "Staging folder")
        try:
            command = borg.extract_cmd(
                job["repository"]["location"], job["archive"], str(staging), p["paths"]
            )
            extracted = run_borg(replace(command, cwd_fd=fd), config, job, reporter)
            if any("never matched" in warning for warning in extracted.warnings):
                heldir.require_listed(job["archive"], p["paths"], heldir.staged_paths(fd))
            return inplace.apply(fd, target_fd, p["policy"], p["paths"])
        finally:
            os.close(fd)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


UPLOAD_CHUNK = 1 << 20  # bytes read from borg's pipe and sent at once


def download(reporter: Reporter, job: dict, config) -> dict:
    """Paths of an archive as borg's tar, uploaded to the center as borg writes it (the
    center relays it to the client waiting there). Back-pressure all the way: a slow client
    slows the upload, the pipe fills, borg waits. If the client leaves, the upload is
    refused (410), the pipe is closed and borg's next write fails."""
    p = job["params"]
    read_fd, write_fd = os.pipe()
    sent: dict = {}

    def chunks():
        while data := os.read(read_fd, UPLOAD_CHUNK):
            yield data

    def upload():
        try:
            sent["status"], answer = reporter.center.upload(f"jobs/{job['id']}/stream", chunks())
            sent["bytes"] = answer.get("received")
        except (OSError, Refused) as exc:
            sent["status"] = f"the upload failed ({exc})"
        finally:
            os.close(read_fd)  # borg's next write fails if the upload stopped early

    uploading = threading.Thread(target=upload, name="upload", daemon=True)
    uploading.start()
    try:
        command = borg.export_tar_cmd(
            job["repository"]["location"], job["archive"], p["paths"], write_fd
        )
        result = run_borg(command, config, job, reporter)
    except borg.BorgError as exc:
        result, error = None, exc
    finally:
        os.close(write_fd)  # the end of the tar for the upload
        uploading.join()
    status = sent.get("status")
    if status == 410:
        return {"outcome": "cancelled", "code": "client_gone",
                "error": "The client left before the download's end."}  # fmt: skip
    if result is None:
        return failed(error, reporter)
    if status != 200:
        error = f"The center did not take the download: {status}."
        return {"outcome": "failed", "code": "upload_failed", "error": error,
                "tail": result.tail}  # fmt: skip
    missing = [w for w in result.warnings if "never matched" in w]
    if missing:
        return {"outcome": "failed", "code": "path_not_found",
                "error": f"Not in archive {job['archive']}: {', '.join(p['paths'])}."}  # fmt: skip
    outcome = "warning" if result.warning else "succeeded"
    return {"outcome": outcome, "bytes": sent.get("bytes"), "warnings": result.warnings,
            "tail": result.tail}  # fmt: skip


def backup(reporter: Reporter, job: dict, config) -> dict:
    """Run one backup of this host and say how it ended (borg's JSON for the catalog). Its
    database sources (handed with the job) are dumped straight into the archive through
    named pipes, as on the center (borgapp.dumps); a dump that fails fails the backup and
    the archive that holds it is deleted."""
    p = job["params"]
    location, name = job["repository"]["location"], job["archive"]
    with tempfile.TemporaryDirectory(prefix="opscenter-agent-") as scratch:
        dumping = None
        try:
            sources = [dumps.Source.from_handout(d) for d in job.get("databases") or []]
            paths, excludes = list(p["sources"]), list(p.get("excludes") or [])
            if paths or not sources:
                validation.require_a_source(paths)
            if sources:
                folder = Path(scratch) / "databases"
                folder.mkdir(mode=0o700)
                dumping = dumps.Dumps(sources, folder)
                dumping.prepare()
                paths.append(dumping.borg_source)
                # --read-special reads devices and pipes as files: none under the sources
                excludes += ["pf:" + path for path in dumps.special_files(p["sources"])]
            exclude_file = None
            if excludes:
                exclude_file = str(borg.write_exclude_file(Path(scratch), excludes))
            command = borg.create_cmd(
                location, name, paths,
                compression=p.get("compression") or "lz4", exclude_file=exclude_file,
                one_file_system=bool(p.get("one_file_system")),
                checkpoint_interval=p.get("checkpoint_interval"), comment=p.get("comment") or "",
                read_special=dumping is not None,
            )  # fmt: skip
            if dumping is not None:
                dumping.start()
            done = False
            try:
                result = run_borg(command, config, job, reporter)
                done = True
            finally:
                problems = dumping.finish(done) if dumping is not None else []
        except (borg.BorgError, OperationError, validation.InvalidInput, OSError) as exc:
            return failed(exc, reporter)
    if problems:
        return _dump_failed(reporter, job, config, dumping, problems)
    outcome = "warning" if result.warning else "succeeded"
    return {"outcome": outcome, "created": result.json(), "warnings": result.warnings,
            "tail": result.tail, "hostname": socket.gethostname(),
            "username": getpass.getuser(),
            "databases": dumping.result() if dumping is not None else []}  # fmt: skip


def _dump_failed(reporter: Reporter, job: dict, config, dumping, problems: list) -> dict:
    """No archive with a broken dump counts as a backup: it is deleted (an append-only key
    may delete too; the space comes back when the center compacts)."""
    error = "A database dump failed, so the archive that held it was deleted: "
    try:
        delete = borg.delete_archive_cmd(job["repository"]["location"], job["archive"])
        run_borg(delete, config, {**job, "deadline": 600}, Reporter(reporter.center, job["id"],
                                                                     reporter.data))  # fmt: skip
    except borg.BorgError as exc:
        error = f"A database dump failed, and its archive could not be deleted ({exc.message}): "
    return {"outcome": "failed", "code": "dump_failed", "error": error + "; ".join(problems),
            "result": {"databases": dumping.result(), "problems": problems}}  # fmt: skip


def restore_database(reporter: Reporter, job: dict, config, roots: list[Path]) -> dict:
    """A database dump of an archive streamed by borg into the restore tool of one of this
    host's database sources (handed with the job). An SQLite file is written only under the
    agent's own restore or in-place roots."""
    p = job["params"]
    location, archive = job["repository"]["location"], job["archive"]
    try:
        source = dumps.Source.from_handout((job.get("databases") or [None])[0])
        database = validation.validate_database_name(str(p.get("database")).split("/")[-1])
        into = p.get("into") or ""
        if source.kind == dumps.SQLITE:
            validation.require_under_roots(into or source.path, roots, "SQLite restore target")
        path = dumps.archive_path(source, database)

        def feed(fd: int) -> None:
            done = run_borg(borg.extract_stdout_cmd(location, archive, path, fd), config, job,
                            reporter)  # fmt: skip
            if done.warning and any("never matched" in w for w in done.warnings):
                raise OperationError(f"Archive {archive} holds no dump of {p['database']} "
                                     f"({path}).", "no_dump")  # fmt: skip

        with tempfile.TemporaryDirectory(prefix="opscenter-agent-") as scratch:
            restored = dumps.restore(source, database, Path(scratch), into=into,
                                     force=bool(p.get("force")), feed=feed)  # fmt: skip
    except (borg.BorgError, OperationError, validation.InvalidInput, OSError) as exc:
        return failed(exc, reporter)
    return {"outcome": "succeeded", "result": {"path": path, **restored}}


def verify_restore(reporter: Reporter, job: dict, config, roots: list[Path]) -> dict:
    """Verify-restore of the archive the center chose (the newest of its set) against this
    host's files and databases as they are now (borgapp.verifying): a sample restored into
    a private sandbox under the agent's restore root and compared, each dump restored into
    a scratch database and compared."""
    p = job["params"]
    location, archive = job["repository"]["location"], job["archive"]
    files, dumped = [], []

    def collect(raw: bytes) -> None:
        if raw.strip():
            item = json.loads(raw)
            if item.get("type") == "-" and not (item.get("source") or item.get("linktarget")):
                path = item.get("path")  # (a hardlink is listed without content: left out)
                if verifying.is_dump(path):
                    dumped.append(path)
                else:
                    files.append((path, item.get("size") or 0))

    def run(command, on_line=None):
        return run_borg(command, config, job, reporter, on_line=on_line)

    try:
        sources = {s.name: s for s in map(dumps.Source.from_handout, job.get("databases") or [])}
        run(borg.list_items_cmd(location, archive), on_line=collect)
        result = verifying.verify(
            run, location, archive, files, dumped,
            sample_files=int(p.get("sample_files") or 1),
            sample_percent=p.get("sample_percent"),
            sample_max_bytes=int(p.get("sample_max_bytes") or 1),
            sandbox_root=roots[0] / ".verify", sources=sources,
            elsewhere="not on this host (the center's, another host's, or removed)",
            tag=str(job["id"]),
        )  # fmt: skip
    except (borg.BorgError, OperationError, validation.InvalidInput, OSError) as exc:
        return failed(exc, reporter)
    return {"outcome": "succeeded", "result": result}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m agent", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    one = sub.add_parser("enroll", help="exchange a one-time token (read from stdin)")
    one.add_argument("--center", required=True, help="the ops center's URL")
    one.add_argument("--data", required=True, help="this agent's private folder")
    serve = sub.add_parser("run", help="serve this host's jobs")
    serve.add_argument("--data", required=True)
    serve.add_argument("--wait", type=float, default=20.0, help="seconds a poll may wait")
    serve.add_argument("--once", action="store_true", help="stop after one job (tests)")
    serve.add_argument(
        "--inplace-root", action="append", default=[],
        help="a folder restores in place may write over (repeatable; default: none, refused)",
    )  # fmt: skip
    serve.add_argument(
        "--restore-root", action="append", default=[],
        help="a folder restores may write in (repeatable; default: DATA/restore)",
    )  # fmt: skip
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, _terminate)  # a clean stop: borg is stopped, not orphaned
    sys.exit(enroll(args) if args.command == "enroll" else run(args))


def _terminate(signo, frame):
    raise SystemExit(128 + signo)
