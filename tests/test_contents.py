"""Archive contents and diffs: read from real borg once by a job, then served page by page from
the database (API `contents`/`diff`, CLI `borg_contents`/`borg_diff`)."""

import json
import os
import re
import urllib.parse

import pytest

from borgapp import intake
from borgapp.models import Archive, ArchiveItem, AuditEvent, Job, Repository
from tests.helpers import cli, client_for, staff, worker_runs, write_files

pytestmark = pytest.mark.django_db


def backup(source, archive):
    """A backup to an exact archive name (as the guide's `create` route makes them)."""
    repo = Repository.objects.get(name="main")
    params = {"sources": [str(source)], "archive": archive}
    job = intake.start(Job.Kind.BACKUP, repo, params, trigger=Job.Trigger.CLI, inline=True)
    assert job.status == "succeeded", job.error_message
    return Archive.objects.get(name=archive)


def tree_of(source) -> dict[str, tuple[str, int | None]]:
    """What borg should list for `source`: every path (as borg prints it) with type and size."""
    found = {}
    prefix = str(source).lstrip("/")
    found[prefix] = ("d", 0)
    for dirpath, dirnames, filenames in os.walk(source):
        rel = dirpath.lstrip("/")
        for name in dirnames:
            found[f"{rel}/{name}"] = ("d", 0)
        for name in filenames:
            full = os.path.join(dirpath, name)
            if os.path.islink(full):
                found[f"{rel}/{name}"] = ("l", None)
            else:
                found[f"{rel}/{name}"] = ("-", os.path.getsize(full))
    return found


@pytest.fixture
def source(roots):
    src = roots.base / "src"
    write_files(
        src,
        {
            "docs/a.txt": "alpha",
            "Docs/upper.txt": "case matters",
            "docs/sub/b.bin": os.urandom(5000),
            "docs0/neighbour.txt": "not under docs/",
            "keep.txt": "unchanged",
            "gone.txt": "will be removed",
        },
    )
    (src / "link").symlink_to("keep.txt")
    return src


def test_cli_contents_lists_exactly_what_borg_stored(repo, source):
    archive = backup(source, "one")
    expected = tree_of(source)
    result = cli("borg_contents", "main", "one", "--json")
    assert result.code == 0, result.err
    rows = json.loads(result.out)
    listed = {
        row["path"]: (row["type"], row["size"] if row["type"] != "l" else None) for row in rows
    }
    assert listed == expected
    link = next(row for row in rows if row["type"] == "l")
    assert link["linktarget"] == "keep.txt"
    archive.refresh_from_db()
    assert archive.contents_ready and archive.contents_count == len(expected)
    assert Job.objects.filter(kind="contents").count() == 1
    # A second look reads the database only: no new job.
    again = cli("borg_contents", "main", "one", "--path", f"{source}/docs", "--json")
    assert Job.objects.filter(kind="contents").count() == 1
    paths = {row["path"] for row in json.loads(again.out)}
    docs = str(source / "docs").lstrip("/")
    assert paths == {p for p in expected if p == docs or p.startswith(docs + "/")}
    children = cli("borg_contents", "main", "one", "--path", str(source), "--children", "--json")
    top = {row["path"].rsplit("/", 1)[1] for row in json.loads(children.out)}
    assert top == {"docs", "Docs", "docs0", "keep.txt", "gone.txt", "link"}
    # each read is in the audit trail, as from the admin and the API
    reads = AuditEvent.objects.filter(action="browse", source="cli").order_by("pk")
    assert [(e.target, e.params["path"]) for e in reads] == [
        ("main::one", ""),
        ("main::one", f"{source}/docs"),
        ("main::one", str(source)),
    ]


def test_cli_diff_names_added_removed_and_modified(repo, source):
    backup(source, "one")
    (source / "gone.txt").unlink()
    (source / "docs" / "a.txt").write_text("alpha, changed")
    write_files(source, {"new.txt": "brand new"})
    backup(source, "two")
    result = cli("borg_diff", "main", "one", "two", "--json")
    assert result.code == 0, result.err
    top = str(source).lstrip("/")
    changes = {row["path"].removeprefix(top): row["change"] for row in json.loads(result.out)}
    assert changes["/gone.txt"] == "removed"
    assert changes["/new.txt"] == "added"
    assert changes["/docs/a.txt"] == "modified"
    assert changes[""] == "metadata"  # the top directory's times changed
    assert "/keep.txt" not in changes and "/docs/sub/b.bin" not in changes
    only = cli("borg_diff", "main", "one", "two", "--change", "added", "--json")
    assert [row["path"].rsplit("/", 1)[1] for row in json.loads(only.out)] == ["new.txt"]
    reads = AuditEvent.objects.filter(action="browse", source="cli")
    assert [e.params["diff_with"] for e in reads] == ["two", "two"]
    bad = cli("borg_diff", "main", "one", "two", "--change", "renamed")
    assert bad.code == 2 and "change must be one of" in bad.err
    missing = cli("borg_diff", "main", "one", "nope")
    assert missing.code == 2 and "'nope' is not in repository main" in missing.err


def test_a_listing_bigger_than_one_batch_streams_completely(repo, roots):
    src = roots.base / "many"
    write_files(src, {f"d{i // 500}/f{i:05d}": str(i) for i in range(4500)})
    backup(src, "many")
    result = cli("borg_contents", "main", "many", "--json")
    assert result.code == 0, result.err
    # 4500 files + 9 directories + the top directory, more than two write batches
    assert ArchiveItem.objects.count() == 4510
    assert len(json.loads(result.out)) == 4510


def test_api_contents_starts_one_job_then_pages_from_the_database(repo, source):
    archive = backup(source, "one")
    viewer = client_for("viewer")
    url = f"/api/v1/archives/{archive.pk}/contents/"
    unread = viewer.get(url)  # a GET starts nothing
    assert unread.status_code == 409 and unread.json()["error"] == "listing_not_loaded"
    assert not Job.objects.filter(kind="contents").exists()
    first = viewer.post(url)
    assert first.status_code == 202, first.content
    assert first.headers["Location"].endswith(f"/api/v1/jobs/{first.json()['id']}/")
    again = viewer.post(url)
    assert again.json()["id"] == first.json()["id"]  # the same job, not a second one
    waiting = viewer.get(url)
    assert waiting.status_code == 409 and waiting.json()["job"]["id"] == first.json()["id"]
    assert worker_runs(first.json()["id"]).status == "succeeded"
    assert viewer.post(url).status_code == 200  # there already
    page = viewer.get(url, {"path": f"{source}/docs"}).json()
    docs = str(source / "docs").lstrip("/")
    assert [row["path"] for row in page["results"]] == [
        docs,
        f"{docs}/a.txt",
        f"{docs}/sub",
        f"{docs}/sub/b.bin",
    ]
    assert page["count"] == 4
    row = page["results"][3]
    assert row["type"] == "-" and row["size"] == 5000 and row["parent"] == f"{docs}/sub"
    top = viewer.get(url, {"parent": str(source)}).json()
    assert top["count"] == 6
    files = viewer.get(url, {"type": "l"}).json()
    assert [r["linktarget"] for r in files["results"]] == ["keep.txt"]
    assert viewer.get(url, {"path": "a/../b"}).status_code == 400


def test_api_diff(repo, source):
    one = backup(source, "one")
    (source / "keep.txt").write_text("now changed")
    two = backup(source, "two")
    admin = client_for("admin")
    url = f"/api/v1/archives/{one.pk}/diff/"
    assert admin.get(url, {"other": two.pk}).status_code == 409  # not read yet
    started = admin.post(f"{url}?other={two.pk}")
    assert started.status_code == 202
    assert worker_runs(started.json()["id"]).status == "succeeded"
    body = admin.get(url, {"other": two.pk, "change": "modified"}).json()
    assert [r["path"].rsplit("/", 1)[1] for r in body["results"]] == ["keep.txt"]
    assert body["results"][0]["changes"][0]["type"] == "modified"
    assert admin.get(url).status_code == 400
    assert admin.get(url, {"other": 999999}).status_code == 404
    assert admin.get(url, {"other": one.pk}).status_code == 400
    assert admin.get(url, {"other": two.pk, "change": "x"}).json()["error"] == "invalid_input"


def test_a_reused_archive_name_does_not_show_old_contents(repo, source):
    archive = backup(source, "one")
    assert cli("borg_contents", "main", "one").code == 0
    assert cli("borg_delete", "main", "one").code == 0
    (source / "extra.txt").write_text("only in the new archive")
    backup(source, "one")
    archive = Archive.objects.get(name="one")
    assert not archive.contents_ready
    rows = json.loads(cli("borg_contents", "main", "one", "--json").out)
    assert any(row["path"].endswith("/extra.txt") for row in rows)
    assert ArchiveItem.objects.filter(archive=archive).count() == len(rows)


def test_the_folder_tree_opens_at_the_archives_real_top(repo, roots, client):
    """borg stores no item for the folders above a source (`usr`, `usr/share` of
    /usr/share/doc): the tree synthesizes them, so a person walks from the root to any file."""
    deep = write_files(roots.base / "srv" / "data" / "projects", {"site/index.html": "<h1>"})
    other = write_files(roots.base / "etc2", {"app.conf": "x=1"})
    repository = Repository.objects.get(name="main")
    params = {"sources": [str(deep), str(other)], "archive": "two-sources"}
    job = intake.start(Job.Kind.BACKUP, repository, params, trigger=Job.Trigger.CLI, inline=True)
    archive = Archive.objects.get(name="two-sources")
    assert job.status == "succeeded"
    assert worker_runs(intake.load_listing(archive, trigger=Job.Trigger.CLI).pk).status == (
        "succeeded"
    )
    archive.refresh_from_db()
    assert sorted(archive.contents_tops) == sorted([str(deep).lstrip("/"), str(other).lstrip("/")])
    client.force_login(staff("viewer"))
    url = f"/admin/borgapp/archive/{archive.pk}/contents/"
    folder, walked = "", []
    while True:  # follow the one folder link of each level, from the root down
        page = client.get(url, {"path": folder}).content.decode()
        assert "Empty folder." not in page, folder
        links = re.findall(r'href="\?path=([^"&]+)">([^<]+)/</a>', page)
        names = [name for _, name in links]
        if folder == str(roots.base).lstrip("/"):
            assert names == ["etc2", "srv"]  # both sources meet here
            folder = f"{folder}/srv"
        elif folder.endswith("projects/site"):
            assert "index.html" in page
            break
        else:
            assert len(names) == 1, (folder, names)
            folder = urllib.parse.unquote(links[0][0])
        walked.append(folder)
        assert len(walked) < 20
    # the tree's search: part of a name, anywhere below the folder
    found = client.get(url, {"path": "", "q": "INDEX.h"}).content.decode()
    assert f"{str(deep).lstrip('/')}/site/index.html" in found and "1 entry matching" in found
    none = client.get(url, {"path": str(other).lstrip("/"), "q": "index"}).content.decode()
    assert "Nothing here matches." in none
    # what borg stored is unchanged: the CLI lists no synthesized folder
    listed = {row["path"] for row in json.loads(cli("borg_contents", "main", "two-sources",
                                                    "--json").out)}  # fmt: skip
    assert str(roots.base).lstrip("/") not in listed and str(deep).lstrip("/") in listed


@pytest.mark.django_db(transaction=True)
def test_listings_stored_before_the_tops_get_them_from_their_rows():
    from django.db import connection
    from django.db.migrations.executor import MigrationExecutor

    before, after = (
        [("borgapp", "0014_channel_warning_event")],
        [("borgapp", "0015_archive_contents_tops")],
    )
    executor = MigrationExecutor(connection)
    leaves = executor.loader.graph.leaf_nodes()
    try:
        executor.migrate(before)
        old = MigrationExecutor(connection).loader.project_state(before).apps
        repo = old.get_model("borgapp", "Repository").objects.create(
            name="r", location="/nonexistent/r", state="ready"
        )
        archive = old.get_model("borgapp", "Archive").objects.create(
            repository=repo, name="a", borg_id="1" * 64, contents_borg_id="1" * 64,
            contents_count=4,
        )  # fmt: skip
        for path in ("usr/share/doc", "usr/share/doc/x", "etc", "etc/hosts"):
            old.get_model("borgapp", "ArchiveItem").objects.create(
                archive=archive, path=path, parent=path.rpartition("/")[0], type="d"
            )
        executor = MigrationExecutor(connection)
        executor.migrate(after)
        new = executor.loader.project_state(after).apps
        assert new.get_model("borgapp", "Archive").objects.get().contents_tops == [
            "usr/share/doc"
        ]  # `etc` sits at the archive's root: nothing above it to synthesize
    finally:
        MigrationExecutor(connection).migrate(leaves)


def test_a_diff_reads_older_to_newer_from_either_archive_and_says_what_changed(
    repo, source, client
):
    one = backup(source, "one")
    (source / "docs" / "a.txt").write_text("alpha, changed and longer")
    (source / "keep.txt").chmod(0o600)
    write_files(source, {"new.txt": "brand new"})
    two = backup(source, "two")
    client.force_login(staff("operator"))
    # opened from the newest archive, compared with the older one
    url = f"/admin/borgapp/archive/{two.pk}/diff/"
    client.post(url, {"other": one.pk})
    [job] = Job.objects.filter(kind="diff")
    assert worker_runs(job.pk).status == "succeeded"
    page = client.get(url, {"other": one.pk}).content.decode()
    assert "From the older <b>one</b> to the newer <b>two</b>" in page
    pairs = re.findall(r'<tr data-change="(\w+)"><td>[^<]*</td><td>([^<]*)</td>', page)
    changes = {path.rsplit("/", 1)[-1]: change for change, path in pairs}
    assert changes["new.txt"] == "added" and changes["a.txt"] == "modified"
    assert "added 9 B" in page  # new.txt, by its size
    assert "mode -rw-r--r-- → -rw-------" in page
    assert re.search(r"content: \+\d+ B −\d+ B", page)
    # the other way round: the same stored comparison, no second job
    back = client.get(f"/admin/borgapp/archive/{one.pk}/diff/", {"other": two.pk})
    assert "From the older <b>one</b> to the newer <b>two</b>" in back.content.decode()
    assert Job.objects.filter(kind="diff").count() == 1
    only = client.get(url, {"other": one.pk, "change": "added"}).content.decode()
    assert re.findall(r'data-change="(\w+)"', only) == ["added"]
