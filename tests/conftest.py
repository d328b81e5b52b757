"""Fixtures and hooks only; the plain helpers the test modules share are in tests/helpers.py."""

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import quote

import pytest
from django.conf import settings as django_settings

# helpers.py asserts (make_repo): rewritten as in a test module, so a failure shows its values
pytest.register_assert_rewrite("tests.helpers")

from tests.backends import free_port, wait_for_port  # noqa: E402
from tests.helpers import (  # noqa: E402
    PASSPHRASE,
    ROOT,
    Roots,
    cli,
    empty_queue,
    spawn_manage,
    stop_process,
)


@pytest.fixture(autouse=True)
def _alert_watch_in_the_request(settings):
    """A web probe's alert evaluation runs in the request here: a background thread would
    write outside the test's transaction (test_alerts.py tests the thread itself)."""
    settings.ALERT_WATCH_THREAD = False


@pytest.fixture(autouse=True)
def _register_without_waiting(settings):
    """In-process admin tests run jobs themselves (no worker): adding a repository must not
    wait for a worker that is not there. Tests of the wait set it back."""
    settings.ADMIN_REGISTER_WAIT = 0


@pytest.fixture(autouse=True)
def _fresh_cache():
    """The cache (failed sign-in counters) is a directory shared with the servers the tests
    start: each test begins with it empty."""
    from django.core.cache import cache

    cache.clear()


@pytest.fixture(autouse=True)
def _empty_queue():
    """With Redis as the broker the queue lives outside the test database: each test begins
    with it empty, as it begins with the ORM broker's table empty."""
    if django_settings.REDIS_URL:
        empty_queue()


def child_database_url() -> str:
    """The database pytest-django made (test_<NAME> on PostgreSQL), for child processes."""
    db = django_settings.DATABASES["default"]
    if db["ENGINE"] == "django.db.backends.sqlite3":
        return f"sqlite:///{db['NAME']}"
    user, password = quote(db["USER"], safe=""), quote(db["PASSWORD"], safe="")
    return f"postgres://{user}:{password}@{db['HOST']}:{db['PORT']}/{quote(db['NAME'])}"


@pytest.fixture(autouse=True)
def no_file_index(settings):
    """Tests of other things do not index the archives they make (each backup would queue an
    index job); the file index's own tests turn it on with the `file_index` fixture."""
    settings.FILE_INDEX = False


@pytest.fixture
def file_index(settings):
    settings.FILE_INDEX = True


@pytest.fixture
def roots(tmp_path, settings):
    """Allowed roots and a private BORG_BASE_DIR for one test, in-process and for children."""
    base = tmp_path
    paths = {name: base / name for name in ("repos", "restore", "mnt", "borgbase", "inplace")}
    for path in paths.values():
        path.mkdir()
    settings.REPOSITORY_ROOTS = [paths["repos"]]
    settings.RESTORE_ROOTS = [paths["restore"]]
    settings.MOUNT_ROOTS = [paths["mnt"]]
    settings.BORG_BASE_DIR = paths["borgbase"]
    settings.INPLACE_ROOTS = [paths["inplace"]]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BORG_", "OPSCENTER_"))}
    env.update(
        OPSCENTER_DATA_DIR=str(django_settings.DATA_DIR),
        OPSCENTER_REPOSITORY_ROOTS=str(paths["repos"]),
        OPSCENTER_RESTORE_ROOTS=str(paths["restore"]),
        OPSCENTER_MOUNT_ROOTS=str(paths["mnt"]),
        OPSCENTER_INPLACE_ROOTS=str(paths["inplace"]),
        BORG_BASE_DIR=str(paths["borgbase"]),
        DATABASE_URL=child_database_url(),
        OPSCENTER_REDIS_URL=django_settings.REDIS_URL,
        BORG_ENCRYPTION_KEY=",".join(django_settings.BORG_ENCRYPTION_KEYS),
        OPSCENTER_ALERT_WATCH_THREAD="0",
        OPSCENTER_FILE_INDEX="1" if django_settings.FILE_INDEX else "0",
        BORG_GRACE_SIGINT="10",
        BORG_GRACE_SIGTERM="5",
    )
    return Roots(
        base, paths["repos"], paths["restore"], paths["mnt"], paths["borgbase"], env,
        paths["inplace"],
    )  # fmt: skip


@pytest.fixture
def passfile(tmp_path):
    path = tmp_path / "passphrase"
    path.write_text(PASSPHRASE + "\n")
    return path


@pytest.fixture
def repo(db, roots, passfile):
    """An initialized repokey-blake2 repository named 'main'."""
    from borgapp.models import Repository

    result = cli(
        "borg_init", "main", "--location", roots.repos / "main", "--passphrase-file", passfile
    )
    assert result.code == 0, result.err
    return Repository.objects.get(name="main")


_TRANSACTIONAL = {"transactional_db", "live_server", "django_db_reset_sequences"}


def _database_kind(item) -> int:
    """pytest-django's order: 0 uses the database inside a rolled-back transaction, 1 is
    transactional (its tables are flushed afterwards), 2 does not touch the database."""
    marker = item.get_closest_marker("django_db")
    names = set(getattr(item, "fixturenames", ()))
    if marker is not None and (marker.kwargs.get("transaction") or marker.args[:1] == (True,)):
        return 1
    if names & _TRANSACTIONAL:
        return 1
    return 0 if marker is not None or "db" in names else 2


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(items):
    """Put pytest-django's order back after pytest's fixture-scope reordering broke it.

    A transactional test flushes every table when it ends, the rows of data migrations too
    (the "recommended" retention policy). pytest-django sorts them after the tests that run
    in a transaction, but pytest then regroups items around the browser tests' class- and
    session-scoped fixtures, which moved test_browser and test_csp into the middle of the
    transaction group and made every later test that needs a migration's row fail (CI of
    stop 17). A stable sort keeps each group's own order, so class fixtures stay together."""
    items.sort(key=_database_kind)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    """A failed test that ran a worker shows the worker's log beside its traceback."""
    report = yield
    for log in getattr(item, "worker_logs", []) if report.failed else []:
        if log.exists():
            report.sections.append((log.name, log.read_text(errors="replace")[-20000:]))
    return report


@pytest.fixture
def workers(roots, tmp_path, request):
    """Starts the worker as `make run` starts it, once per call (a restart, or several side by
    side); their logs are shown when the test fails, and they are stopped after it."""
    started = []
    request.node.worker_logs = []

    def start() -> subprocess.Popen:
        env = {**roots.env, "OPSCENTER_WORKERS": "2", "OPSCENTER_Q_POLL": "0.2"}
        log = tmp_path / f"worker-{len(started) + 1}.log"
        with open(log, "wb") as handle:
            proc = spawn_manage(["worker"], env, stdout=handle, stderr=subprocess.STDOUT)
        started.append(proc)
        request.node.worker_logs.append(log)
        return proc

    yield start
    for proc in started:
        if proc.poll() is None:
            stop_process(proc)


@pytest.fixture
def cluster(workers):
    """The worker as `make run` starts it."""
    return workers()


@pytest.fixture
def web_server(roots, tmp_path):
    """The web app as `make run` serves it (gunicorn, its config), on a free loopback port,
    on the test database. Yields (base URL, path of its log)."""
    import urllib.error
    import urllib.request

    port = free_port()
    log = tmp_path / "web.log"
    static = subprocess.run(
        [sys.executable, str(ROOT / "manage.py"), "collectstatic", "--noinput", "-v0"],
        env=roots.env,
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert static.returncode == 0, static.stderr  # the admin's pages need their files
    with open(log, "w") as handle:
        proc = subprocess.Popen(
            [
                str(ROOT / ".venv" / "bin" / "gunicorn"),
                "opscenter.wsgi",
                "--config",
                "opscenter/gunicorn.conf.py",
            ],
            env={
                **roots.env,
                "GUNICORN_BIND": f"127.0.0.1:{port}",
                "WEB_WORKERS": "2",
                # at the end of a test, requests still waiting (an agent's poll, the guide's
                # calls) would hold the stop for gunicorn's whole 20 s
                "GUNICORN_CMD_ARGS": "--graceful-timeout 2",
            },
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"{url}/api/v1/", timeout=2)
            break
        except urllib.error.HTTPError:
            break  # it answers (401 without a token)
        except OSError:
            time.sleep(0.2)
    yield url, log
    stop_process(proc)


@pytest.fixture(autouse=True)
def _plain_static_storage(settings):
    """In-process page renders need no collectstatic manifest (the served app keeps it)."""
    settings.STORAGES = {
        **settings.STORAGES,
        "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
    }


# --- a loopback sshd for remote repositories ----------------------------------------------------

SSHD = "/usr/sbin/sshd"


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    """A loopback sshd (127.0.0.1, a free port) whose one key may run only `borg serve`
    restricted to its repos folder; `rsh` is the ssh command that reaches it."""
    if not os.path.exists(SSHD) or os.getuid() != 0:
        pytest.skip("needs openssh-server and root (make test installs it)")
    home = tmp_path_factory.mktemp("sshd")
    for name in ("host_key", "client_key"):
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", home / name], check=True
        )
    borg_bin = ROOT / ".venv" / "bin" / "borg"
    client_pub = (home / "client_key.pub").read_text().strip()
    (home / "authorized_keys").write_text(
        f'command="{borg_bin} serve --restrict-to-path {home}/repos",restrict {client_pub}\n'
    )
    (home / "repos").mkdir()
    port = free_port()
    config = home / "sshd_config"
    config.write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {home}/host_key\n"
        f"PidFile {home}/sshd.pid\nAuthorizedKeysFile {home}/authorized_keys\n"
        "UsePAM no\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n"
        "StrictModes no\nPermitRootLogin prohibit-password\n"
        "ClientAliveInterval 2\nClientAliveCountMax 3\n"
    )
    Path("/run/sshd").mkdir(exist_ok=True)
    proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(config)], stderr=subprocess.DEVNULL)
    wait_for_port(port, timeout=10)
    host_pub = (home / "host_key.pub").read_text().split()
    (home / "known_hosts").write_text(f"[127.0.0.1]:{port} {host_pub[0]} {host_pub[1]}\n")
    rsh = (
        "ssh -oBatchMode=yes -oStrictHostKeyChecking=yes "
        f"-oUserKnownHostsFile={home}/known_hosts -i {home}/client_key"
    )
    yield {"port": port, "home": home, "rsh": rsh}
    proc.terminate()
    proc.wait(timeout=10)
    shutil.rmtree(home, ignore_errors=True)
