"""Downloads stream what borg reads: one file as itself, a folder or a selection as a tar that
holds exactly what `borg extract` restores (awkward names, hardlinks, symlinks), a client that
leaves stops borg and frees the lease, and bad requests are refused with a clear answer."""

import gzip
import io
import json
import os
import socket
import subprocess
import sys
import tarfile
import time

import pytest
import zstandard

from tests.helpers import borg_processes_by_repo, cli, client_for, wait_for

pytestmark = pytest.mark.django_db(transaction=True)

LONG = "l" * 200  # a name near the 255-byte limit of most file systems


def awkward_tree(root):
    """Names that are not UTF-8, hold a newline or are very long, a hardlink pair, links."""
    top = root / "srv" / "share" / "team"
    deep = top / "a" / "b" / "c"
    deep.mkdir(parents=True)
    (deep / "report.txt").write_bytes(b"quarterly figures\n" * 100)
    (top / "big.bin").write_bytes(os.urandom(3 * 2**20))
    os.close(os.open(os.fsencode(top) + b"/caf\xe9-latin1.txt", os.O_CREAT | os.O_WRONLY, 0o644))
    with open(os.fsencode(top) + b"/caf\xe9-latin1.txt", "wb") as handle:
        handle.write(b"not utf-8 name")
    (top / "line\nbreak.txt").write_bytes(b"newline in the name")
    (top / LONG).write_bytes(b"long name")
    (top / "hard-1").write_bytes(b"one inode, two names")
    os.link(top / "hard-1", top / "hard-2")
    (top / "link-in").symlink_to("a/b/c/report.txt")
    (top / "link-out").symlink_to("/etc/hostname")
    return top


def backup(src):
    result = cli("borg_backup", "main", "--source", src, "--json")
    assert result.code == 0, result.err
    return json.loads(result.out)["result"]["archive_name"]


def tree_of(root):
    """Every entry below `root` by its name in bytes: type, content or target, and which
    entries share an inode (hardlinks)."""
    seen, out = {}, {}
    for folder, dirs, files in os.walk(os.fsencode(root)):
        for name in dirs + files:
            path = os.path.join(folder, name)
            rel = os.path.relpath(path, os.fsencode(root))
            info = os.lstat(path)
            if os.path.islink(path):
                out[rel] = ("link", os.readlink(path))
            elif os.path.isdir(path):
                out[rel] = ("dir",)
            else:
                with open(path, "rb") as handle:
                    data = handle.read()
                group = seen.setdefault((info.st_dev, info.st_ino), rel)
                out[rel] = ("file", data, group if info.st_nlink > 1 else None)
    return out


def borg_running(roots) -> list:
    where = str(roots.repos / "main")
    return borg_processes_by_repo([where])[where]


@pytest.fixture(autouse=True)
def downloads_end():
    """A single file's download answers before borg has read to the archive's end: each
    test waits for its jobs' ends, so none outlives the test's database."""
    yield
    from borgapp.models import Job

    wait_for(lambda: not Job.objects.filter(status__in=["queued", "running"]).exists())


def body(response) -> bytes:
    return b"".join(response.streaming_content)


def test_single_file_comes_as_itself(repo, roots, tmp_path):
    top = awkward_tree(tmp_path / "src")
    name = backup(top)
    archive = repo.archives.get(name=name)
    path = str(top / "a/b/c/report.txt").lstrip("/")
    response = client_for("operator").get(
        f"/api/v1/archives/{archive.pk}/download/", {"path": path}
    )
    assert response.status_code == 200
    assert body(response) == (top / "a/b/c/report.txt").read_bytes()
    assert response["Content-Length"] == str((top / "a/b/c/report.txt").stat().st_size)
    assert response["Content-Disposition"] == 'attachment; filename="report.txt"'
    assert response["Cache-Control"] == "no-store"
    from borgapp.models import Job

    job = wait_for(lambda: Job.objects.filter(kind="download", status="succeeded").first())
    assert job.requested_by.username == "user-operator-False"
    assert job.params["paths"] == [path]
    assert job.result["bytes"] == (top / "a/b/c/report.txt").stat().st_size
    repo.refresh_from_db()
    assert repo.lease_job_id is None


def test_lone_hardlink_comes_with_its_bytes(repo, roots, tmp_path):
    """`borg extract --stdout` gives nothing for the second name of a hardlink; the download
    gives the file, as `borg extract` of that one path does."""
    top = awkward_tree(tmp_path / "src")
    archive = repo.archives.get(name=backup(top))
    client = client_for("operator")
    for name in ("hard-1", "hard-2"):
        path = str(top / name).lstrip("/")
        response = client.get(f"/api/v1/archives/{archive.pk}/download/", {"path": path})
        assert response.status_code == 200, response.content
        assert body(response) == b"one inode, two names"


@pytest.mark.parametrize("fmt", ["tar", "tar.gz", "tar.zst"])
def test_folder_tar_equals_borg_extract(repo, roots, tmp_path, fmt, passfile):
    top = awkward_tree(tmp_path / "src")
    archive = repo.archives.get(name=backup(top))
    folder = str(top).lstrip("/")
    response = client_for("operator").get(
        f"/api/v1/archives/{archive.pk}/download/", {"path": folder, "format": fmt}
    )
    assert response.status_code == 200, response.content
    assert response.get("Content-Length") is None  # a stream of unknown length
    assert response["Content-Disposition"].endswith(f'-team.{fmt}"')
    data = body(response)
    if fmt == "tar.gz":
        data = gzip.decompress(data)
    elif fmt == "tar.zst":
        data = zstandard.ZstdDecompressor().decompressobj().decompress(data)
    unpacked = tmp_path / "from-download"
    unpacked.mkdir()
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        tar.extractall(unpacked, filter="tar")
    expected = borg_extract_via_cli(repo, archive.name, folder, tmp_path / "from-borg")
    got = tree_of(unpacked)
    assert got == expected
    names = set(got)
    assert os.fsencode(folder) + b"/caf\xe9-latin1.txt" in names
    assert os.fsencode(folder) + b"/line\nbreak.txt" in names
    assert os.fsencode(folder) + b"/" + LONG.encode() in names
    hard = got[os.fsencode(folder) + b"/hard-2"]
    assert hard[2] is not None and hard[2] == got[os.fsencode(folder) + b"/hard-1"][2]
    assert got[os.fsencode(folder) + b"/link-out"] == ("link", b"/etc/hostname")


def borg_extract_via_cli(repo, archive, path, into):
    """What `borg extract` restores, through the app's own extract (a restore root)."""
    from django.conf import settings

    target = settings.RESTORE_ROOTS[0] / into.name
    result = cli("borg_extract", "main", archive, path, "--target", target)
    assert result.code == 0, result.err
    return tree_of(target)


def test_selection_is_one_tar(repo, roots, tmp_path):
    top = awkward_tree(tmp_path / "src")
    archive = repo.archives.get(name=backup(top))
    paths = [str(top / "hard-1").lstrip("/"), str(top / "a/b").lstrip("/")]
    response = client_for("admin").get(f"/api/v1/archives/{archive.pk}/download/", {"path": paths})
    assert response.status_code == 200
    assert response["Content-Disposition"].endswith('-selection.tar"')
    with tarfile.open(fileobj=io.BytesIO(body(response))) as tar:
        names = tar.getnames()
    assert paths[0] in names
    assert f"{paths[1]}/c/report.txt" in names
    assert not any(n.endswith("big.bin") for n in names)


def test_refusals_are_clear_and_leave_nothing_running(repo, roots, tmp_path, settings):
    from borgapp.models import Job

    top = awkward_tree(tmp_path / "src")
    archive = repo.archives.get(name=backup(top))
    url = f"/api/v1/archives/{archive.pk}/download/"
    operator = client_for("operator")

    viewer = client_for("viewer").get(url, {"path": "srv"})
    assert viewer.status_code == 403

    missing = operator.get(url, {"path": "srv/no/such/file.txt"})
    assert missing.status_code == 404
    assert missing.json()["error"] == "path_not_found"
    assert "srv/no/such/file.txt" in missing.json()["message"]

    folder_as_file = operator.get(url, {"path": str(top).lstrip("/"), "format": "file"})
    assert folder_as_file.status_code == 400
    assert "download it as a tar" in folder_as_file.json()["message"]
    refused = wait_for(lambda: Job.objects.filter(kind="download", status="cancelled").first())
    assert refused.error_message.startswith("The download was refused before it was sent")

    for query, words in [
        ({}, "at least one path"),
        ({"path": "srv/../etc/passwd"}, "'..'"),
        ({"path": "srv", "format": "rar"}, "Format must be one of"),
    ]:
        answer = operator.get(url, query)
        assert answer.status_code == 400, query
        assert words in answer.json()["message"]
    settings.DOWNLOAD_SLOTS = 0  # every download place of this process taken
    made = Job.objects.count()
    full = operator.get(url, {"path": "srv"})
    assert full.status_code == 429 and "OPSCENTER_DOWNLOAD_SLOTS" in full.json()["message"]
    assert Job.objects.count() == made  # refused before any job was recorded
    repo.refresh_from_db()
    assert repo.lease_job_id is None
    assert not Job.objects.filter(kind="download", status__in=["queued", "running"]).exists()
    assert not borg_running(roots)


def test_busy_repository_answers_409(repo, roots, tmp_path, settings):
    from borgapp import jobs, procs
    from borgapp.models import Job, Repository

    top = awkward_tree(tmp_path / "src")
    archive = repo.archives.get(name=backup(top))
    settings.DOWNLOAD_LEASE_WAIT = 0.5
    holder = jobs.create(Job.Kind.CHECK, repo, trigger="cli", inline=True)
    assert jobs.claim(holder)
    assert Repository.objects.get(pk=repo.pk).lease_job_id == holder.pk
    assert holder.worker_pid == os.getpid() and procs.alive(
        holder.worker_pid, holder.worker_started
    )
    answer = client_for("operator").get(f"/api/v1/archives/{archive.pk}/download/", {"path": "srv"})
    assert answer.status_code == 409
    assert f"busy with job {holder.pk}" in answer.json()["message"]
    refused = Job.objects.filter(kind="download").get()
    assert refused.status == "cancelled" and refused.error_code == "busy"
    jobs.end(holder, Job.Status.SUCCEEDED)


def test_command_line_download(repo, roots, tmp_path):
    top = awkward_tree(tmp_path / "src")
    name = backup(top)
    out = tmp_path / "report.txt"
    path = str(top / "a/b/c/report.txt").lstrip("/")
    result = cli("borg_download", "main", name, path, "--output", out)
    assert result.code == 0, result.err
    assert out.read_bytes() == (top / "a/b/c/report.txt").read_bytes()
    assert "Download job" in result.out

    again = cli("borg_download", "main", name, path, "--output", out)
    assert again.code == 2 and "exists" in again.err

    to_device = cli("borg_download", "main", name, path, "--output", "/dev/null")
    assert to_device.code == 0, to_device.err
    assert os.path.exists("/dev/null") and not os.path.isfile("/dev/null")  # not replaced

    missing = cli("borg_download", "main", name, "srv/nothing", "--output", tmp_path / "x")
    assert missing.code == 2 and "Not in archive" in missing.err
    assert not (tmp_path / "x").exists() and not (tmp_path / ".x.partial").exists()

    piped = subprocess.run(
        [sys.executable, "manage.py", "borg_download", "main", name, str(top).lstrip("/"),
         "--format", "tar.gz"],
        env=roots.env, capture_output=True, stdin=subprocess.DEVNULL, timeout=300,
    )  # fmt: skip
    assert piped.returncode == 0, piped.stderr
    with tarfile.open(fileobj=io.BytesIO(piped.stdout), mode="r:gz") as tar:
        assert f"{str(top).lstrip('/')}/a/b/c/report.txt" in tar.getnames()
    assert b"Download job" in piped.stderr


def test_client_that_leaves_stops_borg_and_frees_the_lease(repo, roots, tmp_path, web_server):
    """Through the real server: read a little of a large download, stop reading, then close
    the connection. borg must be gone and the lease free within a few seconds."""
    from borgapp.models import Job, Repository
    from tests.helpers import staff

    src = tmp_path / "src"
    src.mkdir()
    with open(src / "large.bin", "wb") as handle:
        for _ in range(24):
            handle.write(os.urandom(2**22))  # 96 MiB that do not compress
    archive = repo.archives.get(name=backup(src))
    user = staff("operator")
    from rest_framework.authtoken.models import Token

    token = Token.objects.create(user=user).key
    base, _log = web_server
    host, port = base.split("//")[1].split(":")
    path = str(src / "large.bin").lstrip("/")
    sock = socket.create_connection((host, int(port)))
    sock.sendall(
        f"GET /api/v1/archives/{archive.pk}/download/?path={path} HTTP/1.1\r\n"
        f"Host: {host}\r\nAuthorization: Token {token}\r\n\r\n".encode()
    )
    head = sock.recv(65536)
    assert head.startswith(b"HTTP/1.1 200"), head[:200]
    assert f"content-length: {96 * 2**20}".encode() in head.lower()
    running = wait_for(lambda: Job.objects.filter(kind="download", status="running").first())
    assert borg_running(roots)
    time.sleep(1.0)  # the client stalls: borg waits on a full pipe
    sock.close()
    left = time.monotonic()
    wait_for(lambda: not borg_running(roots), timeout=10)
    wait_for(lambda: Repository.objects.get(pk=repo.pk).lease_job_id is None, timeout=10)
    assert time.monotonic() - left < 6
    job = wait_for(lambda: Job.objects.filter(pk=running.pk).exclude(status="running").first())
    assert job.status == "cancelled"
    assert job.error_code == "client_gone"


@pytest.fixture
def short_send_timeout(roots):
    """The served app counts a client that takes nothing for 2 s as gone (default 60)."""
    roots.env["WEB_SEND_TIMEOUT"] = "2"


def test_client_that_stalls_is_let_go(repo, roots, tmp_path, short_send_timeout, web_server):
    """A client that keeps its connection but reads nothing must not hold a web thread and
    the repository's lease (a backup waits behind it) for ever."""
    from rest_framework.authtoken.models import Token

    from borgapp.models import Job, Repository
    from tests.helpers import staff

    src = tmp_path / "src"
    src.mkdir()
    with open(src / "large.bin", "wb") as handle:
        for _ in range(24):
            handle.write(os.urandom(2**22))
    archive = repo.archives.get(name=backup(src))
    token = Token.objects.create(user=staff("operator")).key
    base, _log = web_server
    host, port = base.split("//")[1].split(":")
    sock = socket.create_connection((host, int(port)))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    path = str(src / "large.bin").lstrip("/")
    sock.sendall(
        f"GET /api/v1/archives/{archive.pk}/download/?path={path} HTTP/1.1\r\n"
        f"Host: {host}\r\nAuthorization: Token {token}\r\n\r\n".encode()
    )
    assert sock.recv(4096).startswith(b"HTTP/1.1 200")
    running = wait_for(lambda: Job.objects.filter(kind="download", status="running").first())
    # the socket stays open and unread: within the send timeout and a little more, let go
    wait_for(lambda: Repository.objects.get(pk=repo.pk).lease_job_id is None, timeout=20)
    wait_for(lambda: not borg_running(roots), timeout=10)
    job = wait_for(lambda: Job.objects.filter(pk=running.pk).exclude(status="running").first())
    assert (job.status, job.error_code) == ("cancelled", "client_gone")
    sock.close()
