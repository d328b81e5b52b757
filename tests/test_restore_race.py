"""Issue 10, finding 9: a local user who can write in a restore root must not be able to
make borg (running as this app's user) write elsewhere by swapping the checked target, or
the verify-restore sandbox, for a symbolic link between the check and borg's start (or
while borg runs: borg walks its working directory's path again for every file).

The intruder is a real second user: a throwaway account made with useradd, whose process
does the swap at the worst moment, right before borg starts (a hook on borg.run)."""

import json
import os
import pwd
import secrets
import shutil
import stat
import subprocess
import tempfile
from pathlib import Path

import pytest

from borgapp import borg, heldir
from borgapp.models import Job
from tests.helpers import cli, write_files

pytestmark = [
    pytest.mark.django_db,
    pytest.mark.skipif(
        os.geteuid() != 0 or not shutil.which("useradd"),
        reason="needs root and useradd: the race is played by a second local user",
    ),
]

SWAP = 'mv "$1" "$1.checked" && mkdir -p "$2" && ln -s "$2" "$1"'


@pytest.fixture
def intruder():
    name = f"ocrace{secrets.token_hex(3)}"
    subprocess.run(
        ["useradd", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
        check=True,
        capture_output=True,
    )
    try:
        yield pwd.getpwnam(name)
    finally:
        subprocess.run(["userdel", name], capture_output=True)


@pytest.fixture
def arena(roots, intruder, settings):
    """A restore root the intruder can reach (no 0700 test directory above it) and an
    outside directory of the intruder's, where nothing may land."""
    base = Path(tempfile.mkdtemp(prefix="opscenter-race-"))
    base.chmod(0o755)
    restore = base / "restore"
    restore.mkdir(mode=0o755)
    outside = base / "outside"
    outside.mkdir()
    os.chown(outside, intruder.pw_uid, intruder.pw_gid)
    settings.RESTORE_ROOTS = [restore]
    try:
        yield restore, outside
    finally:
        shutil.rmtree(base, ignore_errors=True)


def as_intruder(intruder, script: str, *args) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["sh", "-c", script, "sh", *map(str, args)],
        user=intruder.pw_uid,
        group=intruder.pw_gid,
        extra_groups=[],
        capture_output=True,
        text=True,
    )


def swap_before_extract(monkeypatch, swap):
    """Run `swap()` once, after every check, right before the first borg extract starts."""
    real_run = borg.run
    done = []

    def run(command, *args, **kwargs):
        if command.subcommand == ["extract"] and not done:
            done.append(swap())
        return real_run(command, *args, **kwargs)

    monkeypatch.setattr(borg, "run", run)
    return done


def landed(directory: Path) -> list[str]:
    return [str(Path(top) / name) for top, _, names in os.walk(directory) for name in names]


@pytest.fixture
def archive(repo, tmp_path):
    src = write_files(tmp_path / "src", {f"f{i}.txt": f"file {i}" for i in range(20)})
    made = cli("borg_backup", "main", "--source", src, "--prefix", "race", "--json")
    assert made.code == 0, made.err
    return json.loads(made.out)["result"]["archive_name"]


def test_a_restore_root_other_users_can_write_in_is_refused(arena, intruder, archive, monkeypatch):
    restore, outside = arena
    restore.chmod(0o777)  # the intruder may create and rename entries here
    target = restore / "t"
    swaps = swap_before_extract(monkeypatch, lambda: as_intruder(intruder, SWAP, target, outside))
    result = cli("borg_extract", "main", archive, "--target", target, "--json")
    assert landed(outside) == []
    assert result.code != 0
    assert "other users can rename entries in" in result.err
    assert swaps == []  # refused before borg was started


def test_a_sticky_shared_root_works_and_the_intruder_cannot_swap(
    arena, intruder, archive, monkeypatch
):
    restore, outside = arena
    restore.chmod(0o1777)  # like /tmp: shared, but nobody renames another user's entries
    target = restore / "t"
    swaps = swap_before_extract(monkeypatch, lambda: as_intruder(intruder, SWAP, target, outside))
    result = cli("borg_extract", "main", archive, "--target", target, "--json")
    assert result.code == 0, result.err
    assert swaps and swaps[0].returncode != 0  # the intruder's mv was refused
    assert landed(outside) == []
    assert json.loads(result.out)["result"]["files"] == 20 == len(landed(target))


def test_borg_starts_in_the_checked_directory_even_if_its_path_is_swapped(
    arena, intruder, archive, monkeypatch
):
    """The held descriptor on its own: with the path check out of the way (as if the
    intruder could rename in the root), the swap before borg's start changes nothing."""
    restore, outside = arena
    restore.chmod(0o777)
    monkeypatch.setattr(heldir, "require_private_path", lambda *a: None)
    target = restore / "t"
    swaps = swap_before_extract(monkeypatch, lambda: as_intruder(intruder, SWAP, target, outside))
    result = cli("borg_extract", "main", archive, "--target", target, "--json")
    assert swaps and swaps[0].returncode == 0, swaps  # the swap happened
    assert stat.S_ISLNK(os.lstat(target).st_mode)
    assert landed(outside) == []
    assert len(landed(restore / "t.checked")) == 20  # borg wrote into what was checked
    assert result.code != 0  # and the job says the target was replaced
    job = Job.objects.filter(kind="extract").latest("pk")
    assert job.error_code == "target_replaced" and "t.checked" in job.error_message


def test_the_verify_sandbox_is_private_unpredictable_and_held(arena, repo, tmp_path, monkeypatch):
    restore, _ = arena
    src = write_files(tmp_path / "src", {"a.txt": "a", "b.txt": "b"})
    assert cli("borg_backup", "main", "--source", src, "--prefix", "vr").code == 0
    seen = []
    real_run = borg.run

    def run(command, *args, **kwargs):
        if command.subcommand == ["extract"]:
            held = f"/proc/self/fd/{command.cwd_fd}"
            sandbox = Path(os.readlink(held)).parent
            seen.append((sandbox.name, stat.S_IMODE(os.stat(sandbox).st_mode), os.readlink(held)))
        return real_run(command, *args, **kwargs)

    monkeypatch.setattr(borg, "run", run)
    result = cli("borg_verify_restore", "main", "--prefix", "vr", "--json")
    assert result.code == 0, result.err
    job = Job.objects.filter(kind="verify_restore").latest("pk")
    [(name, mode, cwd)] = seen
    assert name.startswith(f"job-{job.pk}-") and name != f"job-{job.pk}"
    assert mode == 0o700 and cwd.startswith(str(restore / ".verify" / name))
    assert not any((restore / ".verify").iterdir())  # cleaned up


def test_a_verify_sandbox_in_a_root_others_can_write_in_is_refused(
    arena, intruder, repo, tmp_path, monkeypatch
):
    """The old sandbox, .verify/job-<id>, had a name anyone could predict: an intruder
    who can write in the root makes .verify, then swaps the job's directory."""
    restore, outside = arena
    restore.chmod(0o777)
    made = as_intruder(intruder, 'mkdir -m 777 "$1"', restore / ".verify")
    assert made.returncode == 0, made.stderr
    src = write_files(tmp_path / "src", {"a.txt": "a", "b.txt": "b"})
    assert cli("borg_backup", "main", "--source", src, "--prefix", "vr").code == 0

    def swap():
        job = Job.objects.filter(kind="verify_restore").latest("pk")
        sandbox = restore / ".verify" / f"job-{job.pk}"  # borg would start in its restore/
        script = 'mv "$1" "$1.checked" && mkdir -p "$2/restore" && ln -s "$2" "$1"'
        return as_intruder(intruder, script, sandbox, outside)

    swaps = swap_before_extract(monkeypatch, swap)
    result = cli("borg_verify_restore", "main", "--prefix", "vr", "--json")
    assert landed(outside) == []
    assert result.code != 0 and swaps == []
    assert "other users can rename entries in" in result.err
