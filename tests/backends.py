"""Servers of our own for the tests, and the second test pass that runs on them.

PostgreSQL (Debian's packages) and Redis each start on 127.0.0.1 only, on a random free port,
with a private temporary data directory, and are stopped and removed afterwards, also after a
failure. test_databases.py dumps and restores a PostgreSQL of its own started here.

    python -m tests.backends [pytest arguments]

runs the tests of what a fleet changes (jobs and their leases, schedules, the API, the guide's
routes, the agents' job hand-out, workers side by side) on PostgreSQL with Redis as
django-q2's broker, the deployment README's "Scaling the center" describes: FLEET_TESTS but
NOT_AGAIN, unless the arguments name tests of their own (`python -m tests.backends tests/`
runs the whole suite there). The servers must be up before pytest starts: pytest-django reads
DATABASES when the settings load, before any fixture could start a server.
"""

import glob
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

# The job, lease, scheduling and API tests: every way a job is handed out, claimed, waited for
# and ended, by workers, the command line, web processes and agents.
FLEET_TESTS = [
    "tests/test_jobs.py",  # the lease, cancel, crash repair, a real cluster
    "tests/test_workers.py",  # two worker processes and the command line on one repository
    "tests/test_schedules.py",  # the django-q2 mirror, skips, retries, a worker killed
    "tests/test_api.py",
    "tests/test_seed_api.py",  # the guide's walk-through with a real cluster
    "tests/test_seed_waiting.py",  # requests that wait for their job
    "tests/test_fleet.py",  # agents claim their host's jobs
    "tests/test_fleet_databases.py",  # a host's database sources, handed to its agent only
    "tests/test_api_fuzz.py",  # every route with generated values PostgreSQL may refuse
    "tests/test_bad_values.py",  # the admin's pages with such values
    "tests/test_file_index.py",  # the index's own SQL (insert-or-skip, batches) on PostgreSQL
    # a download holds its repository's lease in a web process
    "tests/test_downloads.py::test_busy_repository_answers_409",
    "tests/test_downloads.py::test_client_that_leaves_stops_borg_and_frees_the_lease",
]
# Slow tests of those files that this pass leaves to the first one: what they prove does not
# depend on the database or the broker (the pass stays under six minutes).
NOT_AGAIN = [
    # borg killed at ten points; the lease taken over from a dead holder is tested on its own
    "tests/test_jobs.py::test_kill_9_mid_backup_then_next_run_succeeds",
    # a run through the scheduler and the broker is test_worker_killed_mid_scheduled_backup too
    "tests/test_schedules.py::test_a_due_schedule_runs_through_a_real_qcluster_once",
    # borg's own work: prune's scope, a restore compared with its source, borg serve's limits
    "tests/test_schedules.py::test_two_backup_sets_in_one_repository_prune_independently",
    "tests/test_schedules.py::"
    "test_verify_restore_passes_then_names_a_changed_file_and_a_damaged_one",
    "tests/test_fleet.py::test_an_agents_key_only_appends_to_its_repository",
]
LOOPBACK = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection((LOOPBACK, port), timeout=0.2).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def pg_bin(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    if not found:
        raise FileNotFoundError("PostgreSQL's server is missing: `make test` installs it")
    return found[-1]


@contextmanager
def postgres_server(password: str, user: str = "admin"):
    """A PostgreSQL server of our own: password sign-in on 127.0.0.1 only, no fsync. Yields
    its connection parameters (host, port, user, password). Needs root: the server runs as
    Debian's postgres user."""
    base = Path(tempfile.mkdtemp(prefix="opscenter-pg-"))
    data, pwfile = base / "data", base / "pw"
    pwfile.write_text(password + "\n")
    shutil.chown(base, "postgres")
    shutil.chown(pwfile, "postgres")
    port = free_port()
    as_postgres = ["runuser", "-u", "postgres", "--"]
    stop = [*as_postgres, pg_bin("pg_ctl"), "-D", str(data), "-m", "immediate", "stop"]
    try:
        subprocess.run(
            [*as_postgres, pg_bin("initdb"), "-D", str(data), "-U", user, "-A", "scram-sha-256",
             f"--pwfile={pwfile}", "--no-sync"],
            check=True, capture_output=True,
        )  # fmt: skip
        subprocess.run(
            [*as_postgres, pg_bin("pg_ctl"), "-D", str(data), "-w", "-l", str(base / "log"),
             "-o", f"-p {port} -k {base} -c listen_addresses={LOOPBACK} -c fsync=off "
             "-c max_connections=200", "start"],
            check=True, capture_output=True,
        )  # fmt: skip
        yield {"host": LOOPBACK, "port": port, "user": user, "password": password}
    finally:
        subprocess.run(stop, capture_output=True)
        shutil.rmtree(base, ignore_errors=True)


@contextmanager
def redis_server():
    """A Redis server of our own on 127.0.0.1, nothing written to disk. Yields its URL."""
    base = Path(tempfile.mkdtemp(prefix="opscenter-redis-"))
    port = free_port()
    with open(base / "log", "wb") as log:
        server = subprocess.Popen(
            ["redis-server", "--bind", LOOPBACK, "--port", str(port), "--dir", str(base),
             "--save", "", "--appendonly", "no", "--protected-mode", "yes"],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        wait_for_port(port)
        yield f"redis://{LOOPBACK}:{port}/0"
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        shutil.rmtree(base, ignore_errors=True)


def run_pytest(args: list[str], env: dict) -> int:
    """pytest as a child; a stop request (SIGTERM) reaches it as Ctrl-C would, so that its
    fixtures stop the workers and servers they started before the services go away."""
    proc = subprocess.Popen([sys.executable, "-m", "pytest", *args], env=env)
    previous = {
        # Ctrl-C in a terminal reaches pytest directly: a second one would cut its teardown
        signal.SIGINT: signal.signal(signal.SIGINT, lambda signo, frame: None),
        signal.SIGTERM: signal.signal(
            signal.SIGTERM, lambda signo, frame: proc.send_signal(signal.SIGINT)
        ),
    }
    try:
        return proc.wait()
    finally:
        for signo, handler in previous.items():
            signal.signal(signo, handler)


def main(args: list[str]) -> int:
    password = secrets.token_hex(16)
    with postgres_server(password) as pg, redis_server() as redis_url:
        database = f"postgres://{pg['user']}:{password}@{LOOPBACK}:{pg['port']}/opscenter"
        env = {**os.environ, "DATABASE_URL": database, "OPSCENTER_REDIS_URL": redis_url}
        print(f"PostgreSQL on port {pg['port']}, Redis at {redis_url}", flush=True)
        named = any(Path(arg.split("::")[0]).exists() for arg in args)
        if not named:
            args = [*args, *FLEET_TESTS, *(f"--deselect={test}" for test in NOT_AGAIN)]
        return run_pytest(args, env)


if __name__ == "__main__":
    sys.exit(main([a for a in sys.argv[1:] if a != "--"]))
