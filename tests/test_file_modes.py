"""The app's own files are private however its data directory came about (issue 10,
finding 14), and a system check warns about a data directory that other users may read.
Everything runs `manage.py` as a child process, as an operator would."""

import os
import sqlite3
import stat

from tests.helpers import manage

PRIVATE_FILES = ("db.sqlite3", "secret_key", "fernet.key")


def child_env(data_dir):
    """A fresh installation in `data_dir`: nothing from the test run's own settings."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("OPSCENTER_", "BORG_", "DJANGO_")) and k != "DATABASE_URL"
    }
    env["OPSCENTER_DATA_DIR"] = str(data_dir)
    return env


def usual_umask():
    os.umask(0o022)


def mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


def test_migrate_in_an_existing_open_data_dir_creates_private_files(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    data.chmod(0o755)  # made by the operator (or a volume) before the first start
    result = manage(["migrate", "--noinput"], child_env(data), preexec_fn=usual_umask)
    assert result.returncode == 0, result.stderr
    for name in PRIVATE_FILES:
        assert mode(data / name) == 0o600, f"{name}: {mode(data / name):o}"
    # the WAL files SQLite makes beside the database while it is open take its mode
    db = sqlite3.connect(data / "db.sqlite3")
    try:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("CREATE TABLE probe (x)")
        for suffix in ("-wal", "-shm"):
            assert mode(f"{data / 'db.sqlite3'}{suffix}") == 0o600, suffix
    finally:
        db.close()
    # and the check named the open directory on the way
    assert "borgapp.W050" in result.stderr and str(data) in result.stderr


def test_the_check_warns_for_an_open_data_dir_and_not_for_a_private_one(tmp_path):
    open_dir, private_dir = tmp_path / "open", tmp_path / "private"
    open_dir.mkdir()
    open_dir.chmod(0o755)
    private_dir.mkdir()
    private_dir.chmod(0o700)

    warned = manage(["check"], child_env(open_dir), preexec_fn=usual_umask)
    assert warned.returncode == 0, warned.stderr
    assert "borgapp.W050" in warned.stderr
    assert f"{open_dir} has mode 755" in warned.stderr
    assert f"chmod 700 {open_dir}" in warned.stderr

    quiet = manage(["check"], child_env(private_dir), preexec_fn=usual_umask)
    assert quiet.returncode == 0, quiet.stderr
    assert "borgapp.W050" not in quiet.stderr + quiet.stdout

    # a database file left readable (by an older version, or by hand) is named too
    (private_dir / "db.sqlite3").chmod(0o644)
    loose = manage(["check"], child_env(private_dir), preexec_fn=usual_umask)
    assert f"{private_dir / 'db.sqlite3'} has mode 644" in loose.stderr
