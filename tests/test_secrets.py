"""SEC-01 and SEC-02: a canary passphrase never leaves its place; stored secrets survive key
rotation."""

import io
import json
import logging
import subprocess
from pathlib import Path

import pytest
from cryptography.fernet import Fernet
from django.core.management import call_command
from django.db import connection

from borgapp import intake, vault
from borgapp.models import Job, Repository
from tests.helpers import cli, write_files

CANARY = "CANARY-e41f7-not-to-be-seen"
pytestmark = pytest.mark.django_db(transaction=True)


@pytest.mark.skipif(
    connection.vendor != "sqlite", reason="reads the SQLite file and the ORM broker's table"
)
def test_canary_never_in_logs_rows_payloads_or_dump(roots, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    secret_file = tmp_path / "pass"
    secret_file.write_text(CANARY)
    result = cli(
        "borg_init",
        "canary",
        "--location",
        roots.repos / "canary",
        "--passphrase-file",
        secret_file,
    )
    assert result.code == 0, result.err
    repo = Repository.objects.get(name="canary")
    src = write_files(tmp_path / "src", {"f": "x"})
    outputs = [result.out, result.err]
    for args in (
        ["borg_backup", "canary", "--source", src, "--json"],
        ["borg_info", "canary", "--json"],
        ["borg_check", "canary", "--json"],
    ):
        result = cli(*args)
        assert result.code == 0, result.err
        outputs += [result.out, result.err]
    # a failing run: wrong passphrase stored, so borg refuses; the error text has no secret
    wrong = tmp_path / "wrong"
    wrong.write_text(CANARY + "-wrong")
    result = cli(
        "borg_import", "again", "--location", roots.repos / "canary", "--passphrase-file", wrong
    )
    assert result.code == 2
    outputs += [result.out, result.err]
    # queued for a worker: only the job id goes into django-q2's table
    intake.start("info", repo, {}, trigger="api")
    change = tmp_path / "new"
    change.write_text(CANARY + "-new")
    result = cli("borg_change_passphrase", "canary", "--passphrase-file", change)
    assert result.code == 0, result.err
    outputs += [result.out, result.err]

    sinks = {"cli output": "\n".join(outputs), "logs": caplog.text}
    sinks["job rows"] = json.dumps(list(Job.objects.values()), default=str)
    dump = io.StringIO()
    call_command("dumpdata", stdout=dump)
    sinks["dumpdata"] = dump.getvalue()
    from django_q.models import OrmQ

    sinks["task payloads"] = json.dumps([q.task for q in OrmQ.objects.all()], default=str)
    assert OrmQ.objects.exists()
    connection.close()
    db_file = Path(connection.settings_dict["NAME"])
    files = sorted(str(p) for p in db_file.parent.glob(db_file.name + "*"))
    # Read by another process: closing a descriptor of the database file that this process
    # opened itself drops every POSIX lock this process holds on it, those of any SQLite
    # connection still open in another thread too; the next server to close its last
    # connection then takes itself for the last user and deletes the -wal and -shm files
    # under the survivors ("disk I/O error" in the tests after this one, CI of stop 17).
    raw = subprocess.run(["cat", "--", *files], capture_output=True, check=True).stdout
    for name, text in sinks.items():
        assert CANARY not in text, f"canary found in {name}"
    assert CANARY.encode() not in raw, "canary found in the database file"
    # ...yet the app can still use it
    assert Repository.objects.get(name="canary").get_passphrase() == CANARY + "-new"


def test_rotation_then_removal_of_the_old_key_loses_nothing(roots, settings, passfile):
    old_key = settings.BORG_ENCRYPTION_KEYS[0]
    result = cli("borg_init", "r1", "--location", roots.repos / "r1", "--passphrase-file", passfile)
    assert result.code == 0, result.err
    new_key = Fernet.generate_key().decode()
    settings.BORG_ENCRYPTION_KEYS = [new_key, old_key]
    result = cli("rotate_encryption_key", "--json")
    assert result.code == 0
    assert json.loads(result.out) == {"rotated": 1}
    settings.BORG_ENCRYPTION_KEYS = [new_key]
    repo = Repository.objects.get(name="r1")
    assert repo.get_passphrase() == passfile.read_text().strip()
    assert cli("borg_info", "r1").code == 0  # borg still opens with it
    settings.BORG_ENCRYPTION_KEYS = [old_key]
    with pytest.raises(vault.VaultError):
        repo.get_passphrase()


def test_rotation_with_a_missing_key_changes_nothing(roots, settings, passfile):
    assert (
        cli("borg_init", "r1", "--location", roots.repos / "r1", "--passphrase-file", passfile).code
        == 0
    )
    before = Repository.objects.get(name="r1").passphrase_encrypted
    settings.BORG_ENCRYPTION_KEYS = [Fernet.generate_key().decode()]
    result = cli("rotate_encryption_key")
    assert result.code == 2
    assert "cannot be decrypted" in result.err
    assert Repository.objects.get(name="r1").passphrase_encrypted == before


def test_encryption_key_file_is_persistent_and_private():
    from django.conf import settings

    key_file = settings.DATA_DIR / "fernet.key"
    if not key_file.exists():
        pytest.skip("BORG_ENCRYPTION_KEY is set in the environment")
    assert oct(key_file.stat().st_mode & 0o777) == "0o600"
    assert key_file.read_text().strip() == settings.BORG_ENCRYPTION_KEYS[0]


def test_key_files_are_created_once(tmp_path):
    from opscenter.keyfiles import read_or_create

    path = tmp_path / "k"
    first = read_or_create(path, lambda: "one")
    second = read_or_create(path, lambda: "two")
    assert first == second == "one"
    assert oct(path.stat().st_mode & 0o777) == "0o600"
