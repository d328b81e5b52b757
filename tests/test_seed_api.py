"""The integration guide's curl walk-through, as written plus an Authorization header, against
a live server and a real django-q2 cluster with real borg."""

import json
import os
import re
import subprocess

import pytest
from django.contrib.auth.models import Group, User
from rest_framework.authtoken.models import Token

from borgapp.models import Archive, Repository
from tests.helpers import cli, write_files

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]
PASS = "TestPassphrase123!"


def token(role: str) -> str:
    user = User.objects.create_user(f"seed-{role}", password="p" * 20)
    user.groups.add(Group.objects.get(name=role))
    return Token.objects.create(user=user).key


def curl(method, url, key=None, data=None, headers=()):
    """The guide's own tool. Returns (status, parsed JSON body)."""
    args = ["curl", "-s", "-o", "-", "-w", "\n%{http_code}", "-X", method, url]
    if key:
        args += ["-H", f"Authorization: Token {key}"]
    if data is not None:
        args += ["-H", "Content-Type: application/json", "-d", json.dumps(data)]
    for header in headers:
        args += ["-H", header]
    out = subprocess.run(args, capture_output=True, text=True, timeout=600, check=True).stdout
    text, code = out.rsplit("\n", 1)
    return int(code), json.loads(text) if text else None


def test_guide_walkthrough(web_server, cluster, roots, tmp_path):
    server, server_log = web_server
    base = f"{server}/api/v1/backups/borg"
    key = token("admin")
    repo = str(roots.repos / "borg-test")
    q = f"repository_path={repo}&passphrase={PASS}"

    # no credentials: 401 with a JSON body
    status, data = curl("GET", f"{base}/info?{q}")
    assert status == 401 and data["success"] is False

    # Step 5: initialize
    status, data = curl(
        "POST",
        f"{base}/init",
        key,
        {"repository_path": repo, "passphrase": PASS, "encryption_mode": "repokey-blake2"},
    )
    assert status == 200, data
    assert data["success"] is True and data["repository_path"] == repo
    assert data["encryption_mode"] == "repokey-blake2"
    assert re.fullmatch(r"[0-9a-f]{64}", data["repository_id"])
    assert data["message"] == "Repository initialized successfully"
    status, data = curl("POST", f"{base}/init", key, {"repository_path": repo, "passphrase": PASS})
    assert status == 409 and data["error"] == "repository_exists"

    # Step 6: a backup
    src = write_files(
        tmp_path / "test-data", {"file1.txt": "test file 1\n", "file2.txt": "test file 2\n"}
    )
    status, data = curl(
        "POST",
        f"{base}/create",
        key,
        {
            "archive_name": "test_backup",
            "source_paths": [str(src)],
            "repository_path": repo,
            "passphrase": PASS,
            "compression": "lz4",
        },
    )
    assert status == 200, data
    assert data["success"] is True
    assert re.fullmatch(r"test_backup_\d{8}_\d{6}", data["archive_name"])
    assert data["nfiles"] == 2
    for field in ("original_size", "compressed_size", "deduplicated_size"):
        assert isinstance(data[field], int) and data[field] > 0
    assert data["compression_ratio"] > 0 and data["deduplication_ratio"] > 0
    assert data["duration"] > 0
    archive_name = data["archive_name"]

    # Step 7: list (query-string passphrase, as the guide does)
    status, data = curl("GET", f"{base}/archives?{q}", key)
    assert status == 200
    assert len(data) == 1
    entry = data[0]
    assert entry["name"] == entry["archive"] == archive_name
    assert entry["time"] and entry["id"] and entry["hostname"] != "unknown"
    assert entry["username"] not in ("", "unknown")

    # Step 8: info
    status, data = curl("GET", f"{base}/info?{q}", key)
    assert status == 200
    assert data["repository_id"] and data["location"] == repo
    assert data["encryption_mode"] == "repokey-blake2"
    assert data["total_chunks"] >= data["unique_chunks"] > 0
    assert data["total_size"] > 0 and data["unique_size"] > 0
    assert data["deduplication_ratio"] > 0

    # cron lines: prune, compact (query string), check
    status, data = curl(
        "POST",
        f"{base}/prune",
        key,
        {
            "repository_path": repo,
            "passphrase": PASS,
            "keep_daily": 7,
            "keep_weekly": 4,
            "keep_monthly": 6,
        },
    )
    assert status == 200, data
    assert data["success"] is True and data["keep_policy"]["keep_daily"] == 7
    assert "output" in data and data["message"]
    status, data = curl("POST", f"{base}/compact?{q}", key)
    assert status == 200 and data["success"] is True and data["repository_path"] == repo
    status, data = curl("POST", f"{base}/check?{q}", key)
    assert status == 200 and data["success"] is True and data["verify_data"] is False

    # recovery procedure: extract to a temporary place (the guide's URL has a placeholder)
    target = roots.restore / "restore"
    status, data = curl(
        "POST",
        f"{base}/extract/archive_name",
        key,
        {
            "archive_name": archive_name,
            "target_path": str(target),
            "repository_path": repo,
            "passphrase": PASS,
        },
    )
    assert status == 200, data
    assert data["success"] is True and data["target_path"] == str(target)
    assert (target / str(src).lstrip("/") / "file1.txt").read_text() == "test file 1\n"
    assert not os.path.exists(os.path.join(os.getcwd(), str(src).lstrip("/")))

    # mount and umount, both reporting what really happened
    if os.path.exists("/dev/fuse"):
        point = roots.mnt / "m"
        status, data = curl(
            "POST",
            f"{base}/mount",
            key,
            {
                "archive_name": archive_name,
                "mount_point": str(point),
                "repository_path": repo,
                "passphrase": PASS,
            },
        )
        assert status == 200, data
        assert os.path.ismount(point) and data["pid"]
        status, data = curl("POST", f"{base}/umount?mount_point={point}", key)
        assert status == 200 and data["success"] is True and not os.path.ismount(point)
        status, data = curl("POST", f"{base}/umount?mount_point={point}", key)
        assert status == 404 and data["error"] == "not_mounted"

    # errors: a wrong passphrase for a known repository; an unknown archive
    status, data = curl("GET", f"{base}/archives?repository_path={repo}&passphrase=nope", key)
    assert status == 422 and data["error"] == "wrong_passphrase"
    status, data = curl("DELETE", f"{base}/archives/nope?{q}", key)
    assert status == 404 and data["error"] == "archive_missing"

    # delete, with the passphrase in a header instead
    status, data = curl(
        "DELETE",
        f"{base}/archives/{archive_name}?repository_path={repo}",
        key,
        headers=[f"X-Borg-Passphrase: {PASS}"],
    )
    assert status == 200 and data["success"] is True and data["archive_name"] == archive_name
    assert not Archive.objects.filter(name=archive_name).exists()

    log = server_log.read_text()
    assert '"GET /api/v1/backups/borg/archives"' in log  # the access log is there...
    assert PASS not in log  # ...and no passphrase reached it, not even from query strings


def test_unknown_repository_is_imported_on_first_use(
    web_server,
    cluster,
    roots,
    tmp_path,
    passfile,
):
    assert (
        cli(
            "borg_init", "made", "--location", roots.repos / "made", "--passphrase-file", passfile
        ).code
        == 0
    )
    src = write_files(tmp_path / "src", {"f": "x"})
    assert cli("borg_backup", "made", "--source", src, "--prefix", "p").code == 0
    Repository.objects.all().delete()  # forget it: the guide's scripts know only the path
    key = token("admin")
    base = f"{web_server[0]}/api/v1/backups/borg"
    path = roots.repos / "made"
    # a GET registers nothing (a cross-site link must not change state)
    status, data = curl("GET", f"{base}/archives?repository_path={path}", key)
    assert status == 404 and data["error"] == "repository_unknown"
    status, data = curl(
        "POST", f"{base}/check", key, {"repository_path": str(path), "passphrase": "wrong"}
    )
    assert status == 422 and data["error"] == "wrong_passphrase"
    assert not Repository.objects.exists()  # never stored
    status, data = curl(
        "POST",
        f"{base}/check",
        key,
        {"repository_path": str(path)},
        headers=[f"X-Borg-Passphrase: {passfile.read_text().strip()}"],
    )
    assert status == 200 and data["success"] is True
    assert Repository.objects.get().get_passphrase() == passfile.read_text().strip()
    # known now: the passphrase may be omitted
    status, data = curl("GET", f"{base}/archives?repository_path={path}", key)
    assert status == 200 and len(data) == 1
    # a viewer may list but not create
    viewer = token("viewer")
    assert curl("GET", f"{base}/archives?repository_path={path}", viewer)[0] == 200
    status, data = curl(
        "POST",
        f"{base}/create",
        viewer,
        {"archive_name": "x", "source_paths": [str(src)], "repository_path": str(path)},
    )
    assert status == 403 and data["error"] == "permission_denied"


def test_async_answer_gives_the_job(web_server, cluster, roots, tmp_path, passfile):
    key = token("admin")
    base = f"{web_server[0]}/api/v1/backups/borg"
    repo = str(roots.repos / "r")
    assert (
        curl("POST", f"{base}/init", key, {"repository_path": repo, "passphrase": PASS})[0] == 200
    )
    src = write_files(tmp_path / "src", {"f": "x"})
    status, data = curl(
        "POST",
        f"{base}/create?async=true",
        key,
        {"archive_name": "a", "source_paths": [str(src)], "repository_path": repo},
    )
    assert status == 202 and data["job_id"] and data["job_url"].endswith(f"/{data['job_id']}/")
    status, data = curl(
        "POST", f"{base}/check", key, {"repository_path": repo}, headers=["Prefer: respond-async"]
    )
    assert status == 202
