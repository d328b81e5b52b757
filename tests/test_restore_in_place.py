"""Restores in place through the app's doors (command line, API, admin), with real borg: a
preview first, then the restore, which does what the preview said; each policy on a tree where
files changed, were deleted, were added, and one file and one folder were replaced by links
pointing outside; bad requests refused with nothing written."""

import json
import os
import subprocess

import pytest

from tests.helpers import cli, client_for, staff, worker_runs

pytestmark = pytest.mark.django_db

CATEGORIES = ("created", "replaced", "kept", "left_alone", "blocked")


@pytest.fixture
def live(tmp_path, settings, repo):
    """A live tree under an in-place root, backed up, then changed the way a server changes."""
    root = tmp_path / "live"
    app = root / "srv" / "app"
    (app / "conf").mkdir(parents=True)
    (app / "data" / "deep" / "er").mkdir(parents=True)
    files = {
        "conf/app.ini": b"[main]\nworkers = 4\n",
        "conf/keep-me.ini": b"unchanged\n",
        "data/deep/er/record.csv": b"id,value\n1,2\n" * 500,
        "data/notes.txt": b"first version\n",
        "data/gone.txt": b"deleted after the backup\n",
        "data/swapped.txt": b"replaced by a link after the backup\n",
    }
    for rel, data in files.items():
        (app / rel).write_bytes(data)
        os.utime(app / rel, (1_700_000_000, 1_700_000_000))
    os.chmod(app / "conf/app.ini", 0o640)
    # an ACL the restore must keep: the file's extra reader (make test installs acl)
    subprocess.run(["setfacl", "-m", "u:1234:r", app / "data/notes.txt"], check=True)
    settings.INPLACE_ROOTS = [root]
    result = cli("borg_backup", "main", "--source", app, "--json")
    assert result.code == 0, result.err
    archive = json.loads(result.out)["result"]["archive_name"]
    outside = tmp_path / "outside"
    (outside / "dir").mkdir(parents=True)
    (outside / "secret.txt").write_bytes(b"must never be written")
    # the changes after the backup
    (app / "data/notes.txt").write_bytes(b"second version, longer\n")
    (app / "data/gone.txt").unlink()
    (app / "data/new.txt").write_bytes(b"made after the backup\n")
    (app / "data/swapped.txt").unlink()
    (app / "data/swapped.txt").symlink_to(outside / "secret.txt")
    for name in os.listdir(app / "data/deep/er"):
        (app / "data/deep/er" / name).unlink()
    (app / "data/deep/er").rmdir()
    (app / "data/deep/er").symlink_to(outside / "dir")
    return {"root": root, "app": app, "archive": archive, "outside": outside, "files": files}


def restore(live, policy, *extra):
    path = str(live["app"]).lstrip("/")
    args = ["borg_restore", "main", live["archive"], path, "--policy", policy, "--json"]
    result = cli(*args, *extra)
    assert result.code == 0, result.err
    return json.loads(result.out)


def report(job):
    return {name: job["result"][name] for name in CATEGORIES}


def paths(job, category):
    prefix = str(job["result"]["paths"][0]) + "/"
    return {item["path"].removeprefix(prefix) for item in job["result"][category]["items"]}


def outside_untouched(live):
    assert (live["outside"] / "secret.txt").read_bytes() == b"must never be written"
    assert os.listdir(live["outside"] / "dir") == []


@pytest.mark.parametrize("policy", ["keep", "replace", "if-different"])
def test_the_restore_does_what_its_preview_said(live, policy):
    preview = restore(live, policy)
    assert preview["status"] == "succeeded"
    assert preview["result"]["preview"] is True
    app = live["app"]
    assert (app / "data/new.txt").exists() and not (app / "data/gone.txt").exists()  # nothing yet
    done = restore(live, policy, "--yes")
    assert done["status"] == "succeeded", done
    assert report(done) == report(preview)
    assert "data/gone.txt" in paths(done, "created")
    assert "data/new.txt" in paths(done, "left_alone")
    assert (app / "data/gone.txt").read_bytes() == live["files"]["data/gone.txt"]
    assert (app / "data/new.txt").read_bytes() == b"made after the backup\n"  # never deleted
    outside_untouched(live)
    if policy == "keep":
        assert (app / "data/notes.txt").read_bytes() == b"second version, longer\n"
        assert (app / "data/swapped.txt").is_symlink()  # kept: it exists
        assert {"data/deep/er", "data/deep/er/record.csv"} <= paths(done, "blocked")
        assert "data/notes.txt" in paths(done, "kept")
    else:
        assert (app / "data/notes.txt").read_bytes() == live["files"]["data/notes.txt"]
        assert not (app / "data/swapped.txt").is_symlink()
        assert (app / "data/swapped.txt").read_bytes() == live["files"]["data/swapped.txt"]
        assert {"data/notes.txt", "data/swapped.txt"} <= paths(done, "replaced")
    if policy == "if-different":
        assert "conf/keep-me.ini" in paths(done, "kept")
    if policy == "replace":
        assert "conf/keep-me.ini" in paths(done, "replaced")
        record = app / "data/deep/er/record.csv"
        assert not (app / "data/deep/er").is_symlink()
        assert record.read_bytes() == live["files"]["data/deep/er/record.csv"]
    if policy != "keep":
        assert oct(os.stat(app / "conf/app.ini").st_mode & 0o777) == "0o640"
        assert int(os.stat(app / "data/notes.txt").st_mtime) == 1_700_000_000
        acl = subprocess.run(["getfacl", "-cn", app / "data/notes.txt"], capture_output=True,
                             text=True, check=True).stdout  # fmt: skip
        assert "user:1234:r--" in acl
    staging = [n for n in os.listdir(live["root"]) if n.startswith(".opscenter-restore-")]
    assert staging == []


def test_bad_requests_write_nothing(live, settings, tmp_path):
    before = sorted(os.walk(live["root"]))
    path = str(live["app"]).lstrip("/")
    cases = [
        ([path, "--target", str(tmp_path / "elsewhere")], "not under an in-place root"),
        ([str(live["app"] / "nope").lstrip("/"), "--yes"], "Not in archive"),
        ([str(live["app"] / "nope").lstrip("/")], "Not in archive"),
        ([path + "/../../etc"], "'..'"),
    ]
    for args, words in cases:
        result = cli("borg_restore", "main", live["archive"], *args)
        assert result.code == 2, args
        assert words in result.err, (args, result.err)
    settings.INPLACE_ROOTS = []
    off = cli("borg_restore", "main", live["archive"], path)
    assert off.code == 2 and "OPSCENTER_INPLACE_ROOTS" in off.err
    settings.INPLACE_ROOTS = [live["root"]]
    settings.DATA_DIR = live["app"] / "data"
    own = cli("borg_restore", "main", live["archive"], path)
    assert own.code == 2 and "keeps its own data" in own.err
    assert sorted(os.walk(live["root"])) == before
    outside_untouched(live)


def test_api_restore_is_for_admins_and_previews_first(live):
    from borgapp.models import Archive

    archive = Archive.objects.get(name=live["archive"])
    url = f"/api/v1/archives/{archive.pk}/restore/"
    body = {"paths": [str(live["app"]).lstrip("/")], "policy": "replace"}
    assert client_for("operator").post(url, body, format="json").status_code == 403
    admin = client_for("admin")
    answer = admin.post(url, body, format="json")
    assert answer.status_code == 202, answer.content
    job = worker_runs(answer.json()["id"])
    assert job.status == "succeeded" and job.params["preview"] is True
    assert (live["app"] / "data/swapped.txt").is_symlink()  # a preview writes nothing
    bad = admin.post(url, {**body, "policy": "overwrite"}, format="json")
    assert bad.status_code == 400
    confirmed = admin.post(url, {**body, "preview": False}, format="json")
    job = worker_runs(confirmed.json()["id"])
    assert job.status == "succeeded", job.error_message
    assert job.result["replaced"]["count"] >= 2
    assert not (live["app"] / "data/swapped.txt").is_symlink()


def test_admin_preview_then_confirm(live, client):
    from borgapp.models import Archive, Job

    archive = Archive.objects.get(name=live["archive"])
    client.force_login(staff("admin"))
    page = f"/admin/borgapp/archive/{archive.pk}/restore/"
    path = str(live["app"]).lstrip("/")
    form = client.get(page, {"path": path})
    assert form.status_code == 200
    assert path in form.content.decode()
    answer = client.post(page, {"paths": path, "target": "/", "policy": "if-different"})
    assert answer.status_code == 302
    job = worker_runs(Job.objects.filter(kind="restore").latest("id").pk)
    shown = client.get(f"/admin/borgapp/job/{job.pk}/change/").content.decode()
    assert 'id="restore-report"' in shown and 'id="restore-confirm"' in shown
    assert "Left alone (not in the archive)" in shown
    assert (live["app"] / "data/gone.txt").exists() is False
    confirm = client.post(
        page, {"paths": path, "target": "/", "policy": "if-different", "confirm": "1"}
    )
    assert confirm.status_code == 302
    done = worker_runs(Job.objects.filter(kind="restore").latest("id").pk)
    assert done.params["preview"] is False and done.status == "succeeded"
    assert (live["app"] / "data/gone.txt").exists()
    shown = client.get(f"/admin/borgapp/job/{done.pk}/change/").content.decode()
    assert "What the restore did" in shown and 'id="restore-confirm"' not in shown
    viewer = client_for("viewer")
    assert viewer.get(page).status_code in (302, 403)
