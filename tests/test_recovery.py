"""The recovery kit (issue 14): export it, lose the whole data directory, import it into a
fresh install and read every repository again, local and over ssh; a wrong passphrase, a cut
or a changed byte is refused with nothing changed; the admin's page and the dashboard's
reminder. Real borg throughout, no mocks."""

import hashlib
import json
import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from django.urls import reverse

from borgapp import recovery
from borgapp.models import AuditEvent, RecoveryKitExport, Repository
from tests.helpers import PASSPHRASE, ROOT, cli, make_repo, manage, staff, write_files

RECOVERY_PASSPHRASE = "a long recovery passphrase"
BORG = str(ROOT / ".venv" / "bin" / "borg")


# --- helpers ---------------------------------------------------------------------------------


def install_env(data_dir: Path, repos: Path, sshd) -> dict:
    """The environment of one install: its own data directory (database, Fernet key, borg's
    base dir inside it), nothing inherited that would tie it to another."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("BORG_", "OPSCENTER_", "DATABASE_URL", "DJANGO_"))
    }
    env.update(
        OPSCENTER_DATA_DIR=str(data_dir),
        OPSCENTER_REPOSITORY_ROOTS=str(repos),
        OPSCENTER_ALERT_WATCH_THREAD="0",
    )
    if sshd is not None:
        env["BORG_RSH"] = sshd["rsh"]
    return env


def ok(result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert result.returncode == 0, (result.args, result.stdout, result.stderr)
    return result


def recipe_of(kit: bytes) -> str:
    """The standalone decryption recipe the kit's plain header gives, as a script."""
    header = kit.split(recovery.BODY_MARK)[0].decode()
    lines = [line[4:] for line in header.splitlines() if line.startswith("    ")]
    return "\n".join(lines) + "\n"


def run_recipe(kit_path: Path, passphrase: str, tmp_path: Path) -> subprocess.CompletedProcess:
    script = tmp_path / "open_kit.py"
    script.write_text(recipe_of(kit_path.read_bytes()))
    # the recipe asks with getpass, which needs a terminal: answer it in-process instead
    driver = (
        "import getpass, runpy, sys\n"
        f"getpass.getpass = lambda prompt='': {passphrase!r}\n"
        f"sys.argv = [{str(script)!r}, {str(kit_path)!r}]\n"
        f"runpy.run_path({str(script)!r}, run_name='__main__')\n"
    )
    return subprocess.run(
        [sys.executable, "-c", driver], capture_output=True, text=True, timeout=60
    )


def bare_borg(args, base: Path, cwd: Path, passphrase=None, stdin=None):
    """borg as a person following a recovery sheet runs it (no app, its own base dir)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BORG_")}
    env.update(BORG_BASE_DIR=str(base), HOME=str(base))
    if passphrase is not None:
        env["BORG_PASSPHRASE"] = passphrase
    return subprocess.run(
        [BORG, *args], env=env, cwd=cwd, capture_output=True, text=True, input=stdin, timeout=120
    )


@pytest.fixture
def recovery_file(tmp_path):
    path = tmp_path / "recovery-passphrase"
    path.write_text(RECOVERY_PASSPHRASE + "\n")
    return path


# --- the whole disaster ------------------------------------------------------------------------


@pytest.mark.slow
def test_a_kit_brings_every_repository_back_into_a_fresh_install(
    tmp_path, sshd, passfile, recovery_file
):
    repos = tmp_path / "repos"  # the repositories survive; the ops center does not
    repos.mkdir()
    old = tmp_path / "old-install"
    env = install_env(old, repos, sshd)
    ok(manage(["migrate", "-v0"], env))
    locations = {
        "local-repokey": (str(repos / "local-repokey"), "repokey-blake2"),
        "local-keyfile": (str(repos / "local-keyfile"), "keyfile-blake2"),
    }
    if sshd is not None:
        remote = f"ssh://root@127.0.0.1:{sshd['port']}{sshd['home']}/repos/remote"
        locations["remote"] = (remote, "repokey-blake2")
    sources, archives = {}, {}
    for name, (location, mode) in locations.items():
        ok(manage(["borg_init", name, "--location", location, "--encryption", mode,
                   "--passphrase-file", passfile], env))  # fmt: skip
        sources[name] = write_files(
            tmp_path / "src" / name,
            {"a.txt": f"the files of {name}\n", "deep/b.bin": os.urandom(70_000)},
        )
        backup = ok(manage(["borg_backup", name, "--source", sources[name], "--json"], env))
        archives[name] = json.loads(backup.stdout)["result"]["archive_name"]
    keys = list((old / "borg" / ".config" / "borg" / "keys").iterdir())
    assert len(keys) == 1  # the keyfile repository's key lives only in the install's base dir

    kit_path = tmp_path / "offsite" / "kit.ockit"
    kit_path.parent.mkdir()
    exported = ok(manage(["export_recovery_kit", "--output", kit_path,
                          "--passphrase-file", recovery_file, "--json"], env))  # fmt: skip
    summary = json.loads(exported.stdout)
    assert sorted(summary["repositories"]) == sorted(locations)
    assert stat.S_IMODE(kit_path.stat().st_mode) == 0o600
    kit = kit_path.read_bytes()
    assert summary["sha256"] == hashlib.sha256(kit).hexdigest()
    assert PASSPHRASE.encode() not in kit and RECOVERY_PASSPHRASE.encode() not in kit
    assert b"BORG_KEY" not in kit
    # not overwritten without --force
    again = manage(["export_recovery_kit", "--output", kit_path,
                    "--passphrase-file", recovery_file], env)  # fmt: skip
    assert again.returncode == 2 and "not overwriting" in again.stderr
    assert kit_path.read_bytes() == kit

    # the disaster: database, Fernet key and borg's base dir are gone
    shutil.rmtree(old)

    # the kit's own recipe opens it with Python and `cryptography` alone
    opened = run_recipe(kit_path, RECOVERY_PASSPHRASE, tmp_path)
    assert opened.returncode == 0, opened.stderr
    for name in locations:
        assert f"RECOVERY SHEET of borg repository {name!r}" in opened.stdout
    assert f"passphrase: {PASSPHRASE}" in opened.stdout

    # ... and its sheet is enough to read the keyfile repository with bare borg
    sheet = next(
        entry for entry in recovery.unseal(kit, RECOVERY_PASSPHRASE)["repositories"]
        if entry["name"] == "local-keyfile"
    )  # fmt: skip
    location = locations["local-keyfile"][0]
    assert f"borg key import {location} local-keyfile.key" in sheet["sheet"]
    bare = tmp_path / "bare"
    bare.mkdir()
    key_block = sheet["sheet"].split("from BORG_KEY to the end):\n", 1)[1]
    (bare / "local-keyfile.key").write_text(key_block)
    passphrase = re.search(r"^passphrase: (.*)$", sheet["sheet"], re.M)[1]
    listed = bare_borg(["list", location], bare / "base", bare, passphrase)
    assert listed.returncode != 0  # no key: the kit is the only way in
    imported = bare_borg(["key", "import", location, "local-keyfile.key"], bare / "base", bare)
    assert imported.returncode == 0, imported.stderr
    listed = bare_borg(["list", "--short", location], bare / "base", bare, passphrase)
    assert listed.stdout.split() == [archives["local-keyfile"]], listed.stderr
    extracted = bare_borg(
        ["extract", f"{location}::{archives['local-keyfile']}"], bare / "base", bare, passphrase
    )
    assert extracted.returncode == 0, extracted.stderr
    tree = bare / str(sources["local-keyfile"]).lstrip("/")
    assert (tree / "deep/b.bin").read_bytes() == (
        sources["local-keyfile"] / "deep/b.bin"
    ).read_bytes()

    # a fresh install puts every repository back from the kit
    fresh = tmp_path / "fresh-install"
    env = install_env(fresh, repos, sshd)
    ok(manage(["migrate", "-v0"], env))
    result = ok(manage(["import_recovery_kit", kit_path, "--passphrase-file", recovery_file,
                        "--json"], env))  # fmt: skip
    summary = json.loads(result.stdout)
    assert summary["registered"] == len(locations), summary
    assert {item["name"]: item["archives"] for item in summary["repositories"]} == {
        name: 1 for name in locations
    }
    for name in locations:
        listed = json.loads(ok(manage(["borg_list", name, "--json"], env)).stdout)
        assert [row["name"] for row in listed] == [archives[name]]
        target = fresh / "restore" / name
        ok(manage(["borg_extract", name, archives[name], "--target", target], env))
        restored = target / str(sources[name]).lstrip("/")
        for rel in ("a.txt", "deep/b.bin"):
            assert (restored / rel).read_bytes() == (sources[name] / rel).read_bytes(), name
    # the keyfile's key was put back into the fresh install's own base dir
    assert len(list((fresh / "borg" / ".config" / "borg" / "keys").iterdir())) == 1

    # importing the same kit again changes nothing: every repository is skipped
    result = ok(manage(["import_recovery_kit", kit_path, "--passphrase-file", recovery_file],
                       env))  # fmt: skip
    assert f"0 registered, {len(locations)} skipped, 0 refused, 0 failed" in result.stdout


# --- bad kits ----------------------------------------------------------------------------------


@pytest.fixture
def kit_of_main(repo, tmp_path, recovery_file):
    """A kit of the `repo` fixture's repository, which is then forgotten by the database."""
    path = tmp_path / "main.ockit"
    result = cli("export_recovery_kit", "--output", path, "--passphrase-file", recovery_file)
    assert result.code == 0, result.err
    Repository.objects.all().delete()
    return path


def changed(path: Path, data: bytes) -> Path:
    out = path.with_name(f"changed-{len(data)}-{hashlib.sha256(data).hexdigest()[:8]}.ockit")
    out.write_bytes(data)
    return out


@pytest.mark.django_db
def test_a_bad_kit_or_passphrase_is_refused_and_changes_nothing(
    kit_of_main, tmp_path, recovery_file
):
    kit = kit_of_main.read_bytes()
    wrong = tmp_path / "wrong"
    wrong.write_text("not the recovery passphrase\n")
    at = kit.index(recovery.BODY_MARK) + len(recovery.BODY_MARK) + 10
    header_at = kit.index(b"This file is")
    cases = {
        "wrong passphrase": (kit_of_main, wrong, "recovery passphrase does not open this kit"),
        "truncated": (changed(kit_of_main, kit[: len(kit) // 2]), recovery_file, "truncated"),
        "last line cut": (changed(kit_of_main, kit[:-20]), recovery_file, "truncated"),
        "a byte of the body": (
            changed(kit_of_main, kit[:at] + bytes([kit[at] ^ 1]) + kit[at + 1 :]),
            recovery_file,
            "damaged",
        ),
        "a byte of the header": (
            changed(kit_of_main, kit[:header_at] + b"t" + kit[header_at + 1 :]),
            recovery_file,
            "damaged",
        ),
        "not a kit": (changed(kit_of_main, b"hello\n"), recovery_file, "not an Ops Center"),
        "empty": (changed(kit_of_main, b""), recovery_file, "not an Ops Center"),
    }
    for what, (path, passphrase_file, words) in cases.items():
        result = cli("import_recovery_kit", path, "--passphrase-file", passphrase_file)
        assert result.code == 2, what
        assert words in result.err and "Nothing was changed." in result.err, (what, result.err)
        assert len(result.err.strip().splitlines()) == 1, what
        assert not Repository.objects.exists(), what
    refused = AuditEvent.objects.filter(action=recovery.IMPORT_ACTION, outcome="refused")
    assert refused.count() == len(cases)

    # a header altered with its checksum made again still fails: the header is authenticated
    header, rest = kit.split(recovery.BODY_MARK, 1)
    forged_header = header.replace(b"written", b"WRITTEN", 1) + recovery.BODY_MARK
    body = rest[: rest.rindex(b"--- end of kit")]
    digest = hashlib.sha256(forged_header + body).hexdigest()
    forged = (
        forged_header
        + body
        + (f"--- end of kit; sha256 of the lines above: {digest} ---\n".encode())
    )
    result = cli("import_recovery_kit", changed(kit_of_main, forged),
                 "--passphrase-file", recovery_file)  # fmt: skip
    assert result.code == 2 and "does not open this kit" in result.err
    assert not Repository.objects.exists()

    # the same kit with the right passphrase works (the refusals were the kit's, not the test's)
    result = cli("import_recovery_kit", kit_of_main, "--passphrase-file", recovery_file)
    assert result.code == 0, result.err
    restored = Repository.objects.get(name="main")
    assert restored.get_passphrase() == PASSPHRASE and restored.archives.count() == 0


@pytest.mark.django_db
def test_an_import_skips_what_is_there_and_refuses_a_clash(
    roots, passfile, tmp_path, recovery_file
):
    for name in ("one", "two", "three"):
        make_repo(roots, passfile, name)
    path = tmp_path / "kit.ockit"
    assert (
        cli("export_recovery_kit", "--output", path, "--passphrase-file", recovery_file).code == 0
    )
    Repository.objects.filter(name="two").delete()
    # "three" is now the name of another repository at another location
    three = Repository.objects.get(name="three")
    Repository.objects.filter(pk=three.pk).update(location=str(roots.repos / "elsewhere"))
    result = cli("import_recovery_kit", path, "--passphrase-file", recovery_file, "--json")
    assert result.code == 2, result.err
    summary = {item["name"]: item for item in json.loads(result.out)["repositories"]}
    assert summary["one"]["status"] == "skipped"
    assert summary["two"]["status"] == "registered"
    assert summary["three"]["status"] == "refused"
    assert "registered here for" in summary["three"]["message"]
    assert Repository.objects.get(name="three").location == str(roots.repos / "elsewhere")
    assert Repository.objects.get(name="two").state == Repository.State.READY
    assert "were not registered" in result.err


@pytest.mark.django_db
def test_the_command_line_export_asks_well_and_writes_privately(repo, tmp_path, recovery_file):
    path = tmp_path / "kit.ockit"
    short = tmp_path / "short"
    short.write_text("too short\nsecond line is ignored\n")
    result = cli("export_recovery_kit", "--output", path, "--passphrase-file", short)
    assert result.code == 2 and "at least 12 characters" in result.err
    assert not path.exists()
    # no file and no terminal: refused, never read from the environment
    result = cli("export_recovery_kit", "--output", path)
    assert result.code == 2 and "--passphrase-file" in result.err
    assert (
        cli("export_recovery_kit", "--output", path, "--passphrase-file", recovery_file).code == 0
    )
    first = path.read_bytes()
    result = cli("export_recovery_kit", "--output", path, "--passphrase-file", recovery_file,
                 "--force")  # fmt: skip
    assert result.code == 0, result.err
    assert path.read_bytes() != first  # a new salt and nonce every time
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert RecoveryKitExport.objects.count() == 2
    assert not list(tmp_path.glob(".ockit-*"))  # no temporary file left behind
    contents = recovery.unseal(path.read_bytes(), RECOVERY_PASSPHRASE)
    (entry,) = contents["repositories"]
    assert entry["passphrase"] == PASSPHRASE and entry["key"].startswith("BORG_KEY ")
    assert entry["location"] == repo.location and entry["encryption"] == "repokey-blake2"
    for event in AuditEvent.objects.all():
        text = json.dumps([event.params, event.message, event.target])
        assert PASSPHRASE not in text and RECOVERY_PASSPHRASE not in text


# --- the admin's page and the dashboard's reminder ---------------------------------------------


def reminder(client) -> str | None:
    page = client.get(reverse("admin:index")).content.decode()
    found = re.search(r'<p id="recovery-kit-reminder">(.*?)</p>', page, re.S)
    return " ".join(found[1].split()) if found else None


@pytest.mark.django_db
def test_the_admin_page_gives_the_kit_to_admins_and_the_dashboard_reminds_them(
    client, repo, roots, passfile
):
    url = reverse("admin:recovery_kit")
    for role in ("viewer", "operator"):
        client.force_login(staff(role))
        assert client.get(url).status_code == 403
        assert client.post(url, {"passphrase": "x" * 20, "again": "x" * 20}).status_code == 403
        assert reminder(client) is None  # only admins are reminded
    assert not RecoveryKitExport.objects.exists()

    client.force_login(staff("admin"))
    assert "1 repository is in no recovery kit" in reminder(client)
    assert url in client.get(reverse("admin:index")).content.decode()
    page = client.get(url)
    assert page.status_code == 200 and b"It will hold 1 repository" in page.content

    refused = client.post(url, {"passphrase": RECOVERY_PASSPHRASE, "again": "something else"})
    assert refused.status_code == 200 and b"The two passphrases differ." in refused.content
    assert RECOVERY_PASSPHRASE.encode() not in refused.content  # never shown back
    short = client.post(url, {"passphrase": "short", "again": "short"})
    assert short.status_code == 200 and b"at least 12 characters" in short.content
    assert not RecoveryKitExport.objects.exists()

    response = client.post(url, {"passphrase": RECOVERY_PASSPHRASE, "again": RECOVERY_PASSPHRASE})
    assert response.status_code == 200
    today = RecoveryKitExport.objects.get().created_at.strftime("%Y-%m-%d")
    assert response["Content-Disposition"] == (
        f'attachment; filename="opscenter-recovery-kit-{today}.ockit"'
    )
    assert "no-store" in response["Cache-Control"]
    kit = response.content
    assert kit.startswith(recovery.MAGIC)
    assert PASSPHRASE.encode() not in kit and RECOVERY_PASSPHRASE.encode() not in kit
    record = RecoveryKitExport.objects.get()
    assert record.repositories == ["main"] and record.user.username == "admin-False"
    assert record.sha256 == hashlib.sha256(kit).hexdigest()
    event = AuditEvent.objects.get(action=recovery.EXPORT_ACTION)
    assert (event.outcome, event.actor, event.source) == ("success", "admin-False", "admin")
    assert event.params == {"repositories": ["main"], "sha256": record.sha256}
    (entry,) = recovery.unseal(kit, RECOVERY_PASSPHRASE)["repositories"]
    assert entry["passphrase"] == PASSPHRASE

    assert reminder(client) is None
    make_repo(roots, passfile, "second")
    assert "1 repository is in no recovery kit" in reminder(client)
    client.post(url, {"passphrase": RECOVERY_PASSPHRASE, "again": RECOVERY_PASSPHRASE})
    assert reminder(client) is None
    # a new passphrase makes the kits before it useless for that repository
    new = passfile.with_name("new-passphrase")
    new.write_text("another passphrase entirely\n")
    result = cli("borg_change_passphrase", "second", "--passphrase-file", new)
    assert result.code == 0, result.err
    assert "1 repository is in no recovery kit" in reminder(client)
