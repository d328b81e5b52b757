"""REL-06/REL-16: a full disk fails the job with a clear class; the repository stays
consistent and the next run succeeds once space is free. Runs on a small tmpfs."""

import json
import os
import subprocess

import pytest

from borgapp.models import Job
from tests.helpers import cli

pytestmark = pytest.mark.django_db


@pytest.fixture
def small_disk(roots):
    if os.getuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    point = roots.repos / "small"
    point.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(point)])
    if mounted.returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    yield point
    subprocess.run(["umount", "-l", str(point)])


def test_disk_full_then_recovery(small_disk, roots, passfile, tmp_path):
    location = small_disk / "repo"
    assert cli("borg_init", "tiny", "--location", location, "--passphrase-file", passfile).code == 0
    big = tmp_path / "big"
    big.mkdir()
    for index in range(40):
        (big / f"f{index}").write_bytes(os.urandom(1_000_000))
    result = cli("borg_backup", "tiny", "--source", big, "--compression", "none")
    assert result.code == 2
    job = Job.objects.filter(kind="backup").latest("id")
    assert job.status == "failed"
    assert job.error_code == "disk_full", (job.error_code, job.error_message, job.log_tail)
    assert "space" in job.error_message.lower()
    # after freeing space (a smaller backup set), the repository checks clean and works
    small = tmp_path / "small"
    small.mkdir()
    (small / "f").write_bytes(os.urandom(100_000))
    assert cli("borg_check", "tiny").code == 0
    result = cli("borg_backup", "tiny", "--source", small, "--json")
    assert result.code == 0, result.err
    assert json.loads(result.out)["status"] == "succeeded"
