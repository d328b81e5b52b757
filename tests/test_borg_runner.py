"""borg.run with real processes: the signal ladder (REL-04), no prompt can block (REL-05),
the passphrase only through a pipe (SEC-01), and the version gate (SEC-12)."""

import os
import shutil
import signal
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from borgapp import borg
from tests.helpers import PASSPHRASE

BORG = str(Path(sys.executable).with_name("borg"))


@pytest.fixture
def config(tmp_path):
    base = tmp_path / "base"
    base.mkdir()
    return borg.BorgConfig(
        binary=BORG, base_dir=str(base), lock_wait=1, grace_sigint=1.0, grace_sigterm=1.0
    )


def fake_borg(tmp_path, body: str) -> str:
    script = tmp_path / "fake-borg"
    script.write_text(f"#!{sys.executable}\n" + textwrap.dedent(body))
    script.chmod(0o755)
    return str(script)


def running(pid: int) -> bool:
    """Alive and not a zombie waiting to be reaped."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def init_repo(config, path, passphrase=PASSPHRASE, encryption="repokey-blake2"):
    borg.run(borg.init_cmd(str(path), encryption), config, passphrase=passphrase)
    return str(path)


# --- REL-04: the signal ladder --------------------------------------------------------------


def test_ladder_kills_a_borg_that_ignores_every_signal(tmp_path, config):
    pidfile = tmp_path / "child.pid"
    binary = fake_borg(
        tmp_path,
        f"""
        import os, signal, subprocess, sys, time
        for s in (signal.SIGINT, signal.SIGTERM):
            signal.signal(s, signal.SIG_IGN)
        child = subprocess.Popen([sys.executable, "-c",
            "import signal, time; signal.signal(signal.SIGINT, signal.SIG_IGN);"
            "signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"])
        open({str(pidfile)!r}, "w").write(str(child.pid))
        time.sleep(600)
    """,
    )
    stubborn = borg.BorgConfig(
        binary=binary, base_dir=config.base_dir, grace_sigint=1.0, grace_sigterm=1.0
    )
    stop = threading.Event()
    threading.Timer(1.0, stop.set).start()
    started = time.monotonic()
    with pytest.raises(borg.Interrupted) as info:
        borg.run(borg.Command(["create"]), stubborn, should_stop=stop.is_set)
    elapsed = time.monotonic() - started
    assert info.value.rc == -signal.SIGKILL
    assert elapsed < 1.0 + 1.0 + 1.0 + 2.0  # stop + SIGINT grace + SIGTERM grace + slack
    child = int(pidfile.read_text())
    time.sleep(0.2)
    assert not running(child)  # the whole process group is gone


def test_ladder_stops_at_sigint_for_a_polite_process(tmp_path, config):
    binary = fake_borg(
        tmp_path,
        """
        import signal, sys, time
        def bye(signo, frame):
            print('{"type": "log_message", "levelname": "WARNING", "message": "checkpoint"}',
                  file=sys.stderr)
            sys.exit(2)
        signal.signal(signal.SIGINT, bye)
        time.sleep(600)
    """,
    )
    polite = borg.BorgConfig(
        binary=binary, base_dir=config.base_dir, grace_sigint=30, grace_sigterm=30
    )
    started = time.monotonic()
    with pytest.raises(borg.BorgError) as info:
        borg.run(borg.Command(["create"]), polite, deadline=0.5)
    assert time.monotonic() - started < 5
    assert info.value.rc == 2
    assert "checkpoint" in " ".join(info.value.tail)


def test_a_listing_is_stopped_with_sigterm_at_once(tmp_path, config):
    """`borg list` ignores SIGINT (and a closed pipe) and lists on to its end, seconds on a
    big archive: the file index's listing starts the ladder at SIGTERM, so that an index
    job lets a backup go first at once, not after the SIGINT grace."""
    binary = fake_borg(
        tmp_path,
        """
        import signal, time
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # as borg list does
        time.sleep(600)
    """,
    )
    slow = borg.BorgConfig(binary=binary, base_dir=config.base_dir, grace_sigint=30,
                           grace_sigterm=30)  # fmt: skip
    read_end, write_end = os.pipe()
    started = time.monotonic()
    try:
        with pytest.raises(borg.BorgError) as info:
            borg.run(
                borg.index_list_cmd("/nowhere", "a", write_end, fast=False), slow, deadline=0.5
            )
    finally:
        os.close(read_end)
        os.close(write_end)
    assert info.value.rc == -signal.SIGTERM and time.monotonic() - started < 10


def test_real_borg_cancelled_mid_backup_leaves_a_checkpoint_and_no_lock(tmp_path, config):
    repo = init_repo(config, tmp_path / "repo", encryption="none")
    src = tmp_path / "src"
    src.mkdir()
    chunk = os.urandom(1_000_000)
    for index in range(400):
        (src / f"f{index}").write_bytes(chunk[index:] + chunk[:index])
    command = borg.create_cmd(repo, "big", [str(src)], compression="zstd,10", checkpoint_interval=1)
    started = time.monotonic()
    with pytest.raises(borg.BorgError):
        borg.run(command, config, should_stop=lambda: time.monotonic() - started > 2.5)
    assert not list(Path(repo).glob("lock.*"))
    listed = borg.run(borg.list_cmd(repo), config).json()["archives"]
    assert [a["name"] for a in listed] == ["big.checkpoint"]


# --- REL-05: nothing can block on a prompt -------------------------------------------------------


def timed(func):
    started = time.monotonic()
    try:
        func()
    except borg.BorgError as exc:
        return exc, time.monotonic() - started
    raise AssertionError("expected a BorgError")


def test_missing_passphrase_fails_fast(tmp_path, config):
    repo = init_repo(config, tmp_path / "repo")
    error, elapsed = timed(lambda: borg.run(borg.list_cmd(repo), config))
    assert isinstance(error, borg.WrongPassphrase) and elapsed < 5


def test_wrong_passphrase_fails_fast(tmp_path, config):
    repo = init_repo(config, tmp_path / "repo")
    error, elapsed = timed(lambda: borg.run(borg.list_cmd(repo), config, passphrase="nope"))
    assert isinstance(error, borg.WrongPassphrase) and elapsed < 5


def test_relocated_repository_fails_fast(tmp_path, config):
    repo = init_repo(config, tmp_path / "repo")
    borg.run(borg.list_cmd(repo), config, passphrase=PASSPHRASE)
    moved = tmp_path / "moved"
    shutil.move(repo, moved)
    error, elapsed = timed(
        lambda: borg.run(borg.list_cmd(str(moved)), config, passphrase=PASSPHRASE)
    )
    assert isinstance(error, borg.AccessAborted) and elapsed < 5


def test_unknown_unencrypted_repository_fails_fast(tmp_path, config):
    repo = init_repo(config, tmp_path / "repo", encryption="none")
    fresh = borg.BorgConfig(binary=BORG, base_dir=str(tmp_path / "other-base"))
    error, elapsed = timed(lambda: borg.run(borg.list_cmd(repo), fresh))
    assert isinstance(error, borg.AccessAborted) and elapsed < 5


def test_unreachable_ssh_host_fails_fast(tmp_path, config):
    # A real ssh to a port where nothing listens, in batch mode (tests/test_remote.py has the
    # unknown host key case against a loopback sshd).
    remote = borg.BorgConfig(
        binary=BORG,
        base_dir=config.base_dir,
        rsh="ssh -oBatchMode=yes -oStrictHostKeyChecking=yes "
        f"-oUserKnownHostsFile={tmp_path}/known_hosts -p 1",
    )
    error, elapsed = timed(lambda: borg.run(borg.list_cmd("ssh://nobody@127.0.0.1/./repo"), remote))
    assert isinstance(error, borg.ConnectionClosed) and elapsed < 5


# --- SEC-01: the passphrase travels through a pipe only ------------------------------------------


def test_canary_passphrase_not_in_environ_or_argv_of_borg(tmp_path, config):
    canary = "CANARY-7f3a9c-passphrase"
    repo = init_repo(config, tmp_path / "repo", passphrase=canary)
    src = tmp_path / "src"
    src.mkdir()
    for index in range(20):
        (src / f"f{index}").write_bytes(os.urandom(2_000_000))
    seen = {"environ": [], "cmdline": [], "every environ": []}

    def sample(pid):
        def look():
            for _ in range(40):
                for name in ("environ", "cmdline"):
                    try:
                        seen[name].append(Path(f"/proc/{pid}/{name}").read_bytes())
                    except OSError:
                        return
                for entry in Path("/proc").glob("[0-9]*/environ"):
                    try:
                        seen["every environ"].append(entry.read_bytes())
                    except OSError:
                        pass
                time.sleep(0.05)

        threading.Thread(target=look, daemon=True).start()

    result = borg.run(
        borg.create_cmd(repo, "a", [str(src)], compression="none"),
        config,
        passphrase=canary,
        on_start=sample,
    )
    assert result.rc == 0
    assert seen["environ"] and seen["cmdline"]  # we did look inside the running borg
    for blobs in seen.values():
        assert not any(canary.encode() in blob for blob in blobs)
    assert canary not in result.stdout and canary not in " ".join(result.tail)


# --- SEC-12: the version gate ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "printed, expected_ids",
    [
        ("borg 1.2.4", {"borgapp.E002"}),
        ("borg 1.2.8", {"borgapp.W001"}),
        ("borg 1.4.5", set()),
        ("garbage", {"borgapp.E001"}),
    ],
)
def test_version_gate(tmp_path, settings, printed, expected_ids):
    from borgapp.checks import borg_version_check

    settings.BORG_BINARY = fake_borg(tmp_path, f"print({printed!r})\n")
    settings.BORG_BASE_DIR = tmp_path / "base"
    assert {m.id for m in borg_version_check()} == expected_ids


def test_missing_binary_is_reported(tmp_path, settings):
    from borgapp.checks import borg_version_check

    settings.BORG_BINARY = str(tmp_path / "no-such-borg")
    settings.BORG_BASE_DIR = tmp_path / "base"
    assert [m.id for m in borg_version_check()] == ["borgapp.E001"]


def test_django_q_settings_check(settings):
    from borgapp.checks import django_q_check

    assert django_q_check() == []
    settings.Q_CLUSTER = {**settings.Q_CLUSTER, "retry": 60, "max_attempts": 0, "catch_up": True}
    texts = " ".join(m.msg for m in django_q_check())
    assert "retry" in texts and "max_attempts" in texts and "catch_up" in texts


def test_only_borg_py_imports_subprocess():
    root = Path(__file__).resolve().parent.parent
    offenders = [
        str(path.relative_to(root))
        for directory in ("borgapp", "opscenter")
        for path in (root / directory).rglob("*.py")
        if "import subprocess" in path.read_text() or "from subprocess" in path.read_text()
    ]
    assert offenders == ["borgapp/borg.py"]
    assert "shell=True" not in (root / "borgapp" / "borg.py").read_text()


# Where Django needs an import at run time: apps.ready registers checks and signals once the
# models exist; the API's authentication class is loaded while DRF reads its settings.
LATE_IMPORTS_ALLOWED = {"borgapp/apps.py", "borgapp/api/auth.py"}


def test_project_modules_import_each_other_at_the_top():
    """A function-local import of the project's own modules hides a dependency from the layers
    contract (make lint); issue 11 hoisted them all."""
    import ast

    root = Path(__file__).resolve().parent.parent
    offenders = []
    for directory in ("borgapp", "opscenter"):
        for path in (root / directory).rglob("*.py"):
            name = str(path.relative_to(root))
            if "/migrations/" in name or name in LATE_IMPORTS_ALLOWED:
                continue
            for func in ast.walk(ast.parse(path.read_text())):
                if not isinstance(func, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    continue
                for node in ast.walk(func):
                    module = ""
                    if isinstance(node, ast.ImportFrom):
                        module = "." * node.level + (node.module or "")
                    elif isinstance(node, ast.Import):
                        module = " ".join(alias.name for alias in node.names)
                    if module.startswith((".", "borgapp", "opscenter")):
                        offenders.append(f"{name}:{node.lineno} {module}")
    assert offenders == []


def test_the_benchmarks_import_what_exists():
    """bench/ scripts import the app inside main() (after Django is set up): a module that
    moves must not leave them broken until someone runs them."""
    import ast
    import importlib.util

    root = Path(__file__).resolve().parent.parent
    missing = []
    for path in sorted((root / "bench").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("borgapp"):
                module = importlib.import_module(node.module)
                missing += [
                    f"{path.name}: {node.module}.{alias.name}"
                    for alias in node.names
                    if not hasattr(module, alias.name)
                    and importlib.util.find_spec(f"{node.module}.{alias.name}") is None
                ]
    assert missing == []


def test_write_exclude_file(tmp_path):
    path = borg.write_exclude_file(tmp_path, ["*.log", "sh:/tmp/**"])
    assert path.read_text() == "*.log\nsh:/tmp/**\n"


def test_a_borg_traceback_is_reported_as_unexpected_not_by_its_last_line(tmp_path, config):
    """borg dies of a Python exception before --log-json is set up when an exclude file holds
    a broken regex (intake refuses such patterns; this writes the file behind its back). Its
    last line of output is system info ("SSH_ORIGINAL_COMMAND: None"), never a reason."""
    repo = tmp_path / "repo"
    borg.run(borg.init_cmd(str(repo), "none"), config)
    src = tmp_path / "src"
    src.mkdir()
    (src / "a").write_text("a")
    exclude = tmp_path / "exclude"
    exclude.write_text("re:[unclosed\n")
    with pytest.raises(borg.BorgError) as caught:
        borg.run(borg.create_cmd(str(repo), "a", [str(src)], exclude_file=str(exclude)), config)
    assert str(caught.value) == "borg failed unexpectedly (exit 2); its log is kept with the job."
    assert "SSH_ORIGINAL_COMMAND" not in str(caught.value)
    assert any("unterminated character set" in line for line in caught.value.tail)
