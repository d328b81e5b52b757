"""Plain helpers and constants shared by the test modules (fixtures live in conftest.py).

Test modules import from here, never from one another."""

import io
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

from django.conf import settings
from django.contrib.auth.models import Group, User
from django.core.management import call_command
from django.core.management.base import CommandError
from django_q.brokers import get_broker
from django_q.models import OrmQ
from django_q.signing import SignedPackage
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from borgapp import jobs
from borgapp.models import Job, Repository

# --- constants -----------------------------------------------------------------------------------

ROOT = Path(__file__).resolve().parent.parent
PASSPHRASE = "correct horse battery staple"
SLOW = "lzma,6"  # a few MB/s: keeps a backup running long enough to be interrupted


# --- the test's directories (the `roots` fixture) ------------------------------------------------


@dataclass
class Roots:
    base: Path
    repos: Path
    restore: Path
    mnt: Path
    borg_base: Path
    env: dict
    inplace: Path | None = None  # the in-place root (OPSCENTER_INPLACE_ROOTS)


# --- management commands, in-process and as child processes --------------------------------------


@dataclass
class CliResult:
    code: int
    out: str
    err: str


def cli(*args) -> CliResult:
    """Run a management command in-process as a script would, with its exit code."""
    out, err = io.StringIO(), io.StringIO()
    try:
        call_command(*[str(a) for a in args], stdout=out, stderr=err)
        code = 0
    except CommandError as exc:
        code = exc.returncode
        err.write(str(exc))
    except SystemExit as exc:
        code = exc.code
    return CliResult(code, out.getvalue(), err.getvalue())


def manage(args, env, timeout=300, **kwargs) -> subprocess.CompletedProcess:
    """Run manage.py as a real child process (exit codes, stderr, kill tests)."""
    return subprocess.run(
        [sys.executable, str(ROOT / "manage.py"), *[str(a) for a in args]],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        **kwargs,
    )


def spawn_manage(args, env, **kwargs) -> subprocess.Popen:
    """manage.py as a child process in its own session (so a test can kill its group)."""
    options = {
        "stdin": subprocess.DEVNULL,
        "stdout": subprocess.DEVNULL,
        "stderr": subprocess.DEVNULL,
        "start_new_session": True,
        **kwargs,
    }
    return subprocess.Popen(
        [sys.executable, str(ROOT / "manage.py"), *map(str, args)], env=env, cwd=ROOT, **options
    )


def stop_process(proc: subprocess.Popen, timeout: float = 20) -> None:
    """Stop a spawned command as a service manager would: SIGTERM to the command itself
    (django-q2's cluster then stops its own children), SIGKILL to its group if it hangs."""
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


# --- files, repositories, waiting ----------------------------------------------------------------


def write_files(base: Path, files: dict[str, bytes | str]) -> Path:
    for rel, content in files.items():
        path = base / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content.encode() if isinstance(content, str) else content)
    return base


def random_tree(path: Path, files: int, size: int) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    for index in range(files):
        (path / f"f{index:04d}").write_bytes(os.urandom(size))
    return path


def make_repo(roots, passfile, name):
    result = cli(
        "borg_init",
        name,
        "--location",
        roots.repos / name,
        "--passphrase-file",
        passfile,
        "--encryption",
        "repokey-blake2",
    )
    assert result.code == 0, result.err
    return Repository.objects.get(name=name)


def wait_for(predicate, timeout=60.0, interval=0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError("condition not reached in time")


def borg_processes_by_repo(paths):
    """For each repository path, the live borg processes naming it: (pid, state, argv).

    A process whose parent is one of them is not another borg: when borg starts a helper
    program, the child carries borg's argv from its fork until its exec (seen in CI: pids N
    and N+1, the parent in state D while Python's vfork waited for the exec)."""
    seen = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        state, parent = fields[0], fields[1]
        if state == "Z" or not any(arg.endswith(b"/borg") for arg in cmdline[:2]):
            continue
        seen[entry.name] = (state, parent, cmdline)
    found = {p: [] for p in paths}
    for pid, (state, parent, cmdline) in seen.items():
        if parent in seen:
            continue
        for path in paths:
            if any(arg.startswith(path.encode()) for arg in cmdline):
                found[path].append((pid, state, b" ".join(cmdline[1:4]).decode()))
    return found


# --- users and clients ---------------------------------------------------------------------------


def client_for(role: str | None, superuser=False) -> APIClient:
    user = User.objects.create_user(
        f"user-{role}-{superuser}", password="x" * 20, is_superuser=superuser
    )
    if role:
        user.groups.add(Group.objects.get(name=role))
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=user).key}")
    return client


def staff(role: str | None, superuser=False) -> User:
    user = User.objects.create_user(
        f"{role}-{superuser}", password="x" * 20, is_staff=True, is_superuser=superuser
    )
    if role:
        user.groups.add(Group.objects.get(name=role))
    return user


def queued_tasks() -> list[dict]:
    """The tasks waiting in django-q2's queue (read, not taken), whichever broker holds it."""
    broker = get_broker()
    if settings.REDIS_URL:
        payloads = broker.connection.lrange(broker.list_key, 0, -1)
    else:
        payloads = OrmQ.objects.filter(key=broker.list_key).values_list("payload", flat=True)
    return [SignedPackage.loads(payload) for payload in payloads]


def empty_queue() -> None:
    get_broker().purge_queue()


def worker_runs(job_id):
    """What a django-q2 worker does with the task (run here, in-process)."""
    jobs.run_queued(job_id)
    return Job.objects.get(pk=job_id)


# --- a local HTTP receiver -----------------------------------------------------------------------


class Receiver:
    """A local HTTP server on 127.0.0.1 that records what it is sent."""

    def __init__(self):
        self.requests = []
        received = self.requests

        class Handler(BaseHTTPRequestHandler):
            def _record(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                received.append((self.command, self.path, self.headers, body))
                self.send_response(200)
                self.end_headers()

            do_GET = do_POST = _record

            def log_message(self, *args):
                pass

        self.server = HTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
