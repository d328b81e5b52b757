"""The file index (issue 16): what it answers equals what borg says of the same archives, on
awkward names, links, a second backup after real changes, deletes and prunes. Real borg."""

import functools
import itertools
import json
import os
import subprocess

import pytest

from tests.helpers import PASSPHRASE, ROOT, cli, client_for, write_files

pytestmark = pytest.mark.django_db(transaction=True)
BORG = str(ROOT / ".venv" / "bin" / "borg")
BORG_ENV = {"BORG_PASSPHRASE": PASSPHRASE, "PATH": os.environ["PATH"], "TZ": "UTC"}


def borg_entries(roots, archive: str) -> dict:
    """What borg itself lists: path -> (type, size, mtime to the microsecond, link)."""
    from borgapp import fileindex

    listed = subprocess.run(
        [BORG, "list", "--json-lines", f"{roots.repos / 'main'}::{archive}"],
        capture_output=True, env={**BORG_ENV, "BORG_BASE_DIR": roots.env["BORG_BASE_DIR"]},
        check=True,
    )  # fmt: skip
    found = {}
    for line in listed.stdout.splitlines():
        item = json.loads(line)
        found[item["path"]] = (item["type"], item["size"], fileindex.micros(item["mtime"]),
                               item.get("linktarget") or item.get("source") or "")  # fmt: skip
    return found


def index_entries(archive) -> dict:
    from borgapp import filesearch

    return {path: (v.type, v.size, v.mtime, v.target)
            for path, v in filesearch.entries_in(archive)}  # fmt: skip


def run_index_jobs():
    """What a worker would do with the index jobs that follow a backup, until none is left."""
    from borgapp import jobs
    from borgapp.models import Job

    ran = []
    while job := Job.objects.filter(kind="index", status="queued").order_by("pk").first():
        jobs.run_queued(job.pk)
        job.refresh_from_db()
        assert job.status == "succeeded", job.error_message
        ran.append(job)
    return ran


def test_the_index_answers_what_borg_says(file_index, repo, roots, tmp_path):
    from borgapp import fileindex, filenames, filesearch
    from borgapp.models import Archive, IndexSpan, IndexVersion

    src = write_files(tmp_path / "src", {
        "srv/www/index.html": "<h1>home</h1>", "srv/www/img/logo.svg": "<svg/>",
        "home/ann/reports/2025/invoice-2025-03.pdf": "pdf" * 100,
        "home/ann/reports/2025/invoice-2025-04.pdf": "pdf" * 120,
        "etc/app.conf": "x=1\n", f"home/ann/{'long' * 50}.txt": "long name",
        "home/ann/line\nbreak.txt": "newline in the name",
    })  # fmt: skip
    with open(os.fsencode(src / "home/ann") + b"/caf\xe9.txt", "wb") as handle:
        handle.write(b"latin-1 name")
    (src / "srv/www/current").symlink_to("index.html")
    (src / "var/links").mkdir(parents=True)
    (src / "var/links/odd").symlink_to("tab\there, back\\slash, new\nline")  # PostgreSQL's COPY
    os.link(src / "etc/app.conf", src / "etc/app.conf.hard")
    first = cli("borg_backup", "main", "--source", src, "--prefix", "www", "--json")
    assert first.code == 0, first.err
    assert len(run_index_jobs()) == 1  # the backup queued the index job
    a1 = Archive.objects.get(name=json.loads(first.out)["result"]["archive_name"])
    assert index_entries(a1) == borg_entries(roots, a1.name)

    # a second backup after real changes: one file changed, one gone, one new
    (src / "etc/app.conf").write_text("x=2\n")  # the hardlink changes with it
    (src / "srv/www/img/logo.svg").unlink()
    (src / "srv/www/robots.txt").write_text("User-agent: *\n")
    before = IndexVersion.objects.count()
    second = cli("borg_backup", "main", "--source", src, "--prefix", "www", "--json")
    assert second.code == 0, second.err
    run_index_jobs()
    a2 = Archive.objects.get(name=json.loads(second.out)["result"]["archive_name"])
    assert index_entries(a2) == borg_entries(roots, a2.name)
    assert index_entries(a1) == borg_entries(roots, a1.name)  # the first one unchanged
    # the entries that did not change were known by the first archive's prints and not
    # stored again; the five that did were: app.conf and its hardlink, robots.txt, and the
    # two folders that gained or lost an entry (srv/www, srv/www/img)
    assert a2.indexed.reused == a2.indexed.entries - 5
    # only what changed was stored again (the changed files, robots.txt, the folders whose
    # times changed); the rest is shared by both archives
    assert IndexVersion.objects.count() - before < 12

    from django.db import connection

    assert filenames.has_trigrams() == (connection.vendor == "sqlite")  # SQLite: FTS5
    if filenames.has_trigrams():
        with connection.cursor() as cursor:
            cursor.execute(f"INSERT INTO {filenames.TRIGRAMS}({filenames.TRIGRAMS}, rank) "
                           "VALUES ('integrity-check', 1)")  # fmt: skip
    # the paths are numbered as they came, without a gap, each name once in its folder
    spans = list(IndexSpan.objects.order_by("start").values_list("start", "count", "folder"))
    assert spans[0][0] == 1 and all(
        start + count == after for (start, count, _), (after, _, _) in itertools.pairwise(spans)
    )
    in_folders = {}
    for start, _, folder in spans:
        names = filenames.unpack(IndexSpan.objects.get(start=start).names)
        in_folders.setdefault(folder, []).extend(names)
    assert all(len(set(names)) == len(names) for names in in_folders.values())
    upper = filesearch.search("INVOICE-2025", filesearch.Filters())["hits"]
    assert len(upper) == 2  # a fragment matches whatever its case, with or without trigrams
    found = filesearch.search("invoice", filesearch.Filters())
    paths = [hit["path"] for hit in found["hits"]]
    assert [p.rsplit("/", 1)[1] for p in paths] == ["invoice-2025-03.pdf", "invoice-2025-04.pdf"]
    versions = found["hits"][0]["versions"]
    assert len(versions) == 1 and versions[0]["archive_count"] == 2 and versions[0]["size"] == 300
    assert {a["name"] for a in versions[0]["archives"]} == {a1.name, a2.name}
    assert found["index"] == {"archives": 2, "indexed": 2, "behind": 0, "complete": True}

    conf = str(src / "etc/app.conf").lstrip("/")
    history = filesearch.history(repo, conf)
    assert [v["size"] for v in history["versions"]] == [4, 4]
    assert [[a["name"] for a in v["archives"]] for v in history["versions"]] == [
        [a1.name], [a2.name]]  # fmt: skip
    gone = filesearch.history(repo, str(src / "srv/www/img/logo.svg"))
    assert [[a["name"] for a in v["archives"]] for v in gone["versions"]] == [[a1.name]]

    # the tree of an indexed archive opens at once, from the index, from its real top
    from django.test import Client

    from tests.helpers import staff

    browser = Client()
    browser.force_login(staff("viewer"))
    tree = f"/admin/borgapp/archive/{a2.pk}/contents/"
    top = browser.get(tree).content.decode()
    first = str(src).lstrip("/").split("/")[0]
    assert f'?path={first}"' in top and "Read the file list" not in top
    www = str(src / "srv/www").lstrip("/")
    page = browser.get(tree, {"path": www}).content.decode()
    assert "robots.txt" in page and "index.html" in page and "logo.svg" not in page
    assert "current</a>" not in page and "current → index.html" in page  # the link's target
    img = {"path": f"{www}/img"}
    old = browser.get(f"/admin/borgapp/archive/{a1.pk}/contents/", img).content
    assert b"logo.svg" in old and b"logo.svg" not in browser.get(tree, img).content
    assert browser.get(tree, {"path": "../etc"}).status_code == 302  # refused, said why
    found = browser.get(tree, {"path": www, "q": "robots"})
    assert found.status_code == 302 and f"/archive/{a2.pk}/files/?q=robots" in found["Location"]

    # the API's contents of an indexed archive: at once, the whole archive equal to borg's
    # listing, a folder's children, a subtree
    api = client_for("viewer")
    url = f"/api/v1/archives/{a2.pk}/contents/"
    listed, page = {}, 1
    while True:
        answer = api.get(url, {"page": page})
        assert answer.status_code == 200, answer.content
        for row in answer.json()["results"]:
            listed[row["path"]] = (row["type"], row["size"], fileindex.micros(row["mtime"]),
                                   row["linktarget"])  # fmt: skip
        if not answer.json()["next"]:
            break
        page += 1
    assert listed == borg_entries(roots, a2.name)
    children = api.get(url, {"parent": www}).json()["results"]
    assert sorted(row["path"].rsplit("/", 1)[1] for row in children) == [
        "current", "img", "index.html", "robots.txt"]  # fmt: skip
    below = api.get(url, {"path": str(src / "home").lstrip("/"), "type": "-"}).json()
    assert below["count"] == 5 and all(r["path"].startswith(str(src / "home").lstrip("/"))
                                       for r in below["results"])  # fmt: skip
    assert api.get(url, {"path": "no/such/folder"}).json()["count"] == 0
    printed = cli("borg_contents", "main", a2.name, "--json")
    assert printed.code == 0 and {r["path"] for r in json.loads(printed.out)} == set(listed)

    # the same answers from the command line and the API, and bad input named, never a 500
    found = cli("borg_find", "main", "invoice-*.pdf", "--json")
    assert found.code == 0 and len(json.loads(found.out)["hits"]) == 2
    assert cli("borg_find", "no-such-invoice").code == 1
    told = cli("borg_history", "main", conf)
    assert told.code == 0 and f"{conf}: 2 version(s)" in told.out and "4 B" in told.out
    for args, words in ((("main", "[abc"), "never closes"), (("nope", "x"), "No repository"),
                        (("*",), "every file"), (("x", "--min-size", "big"), "whole number"),
                        (("x", "--modified-after", "March"), "date or time")):  # fmt: skip
        refused = cli("borg_find", *args)
        assert refused.code == 2 and words in refused.err, (args, refused.err)
    climbed = cli("borg_history", "main", "../etc/passwd")
    assert climbed.code == 2 and "must not contain" in climbed.err
    answer = api.get("/api/v1/files/", {"q": "robots", "repository": "main", "type": "file"})
    assert answer.status_code == 200, answer.content
    assert [h["path"].rsplit("/", 1)[1] for h in answer.json()["hits"]] == ["robots.txt"]
    assert answer.json()["hits"][0]["versions"][0]["archives"][0]["name"] == a2.name
    small = api.get("/api/v1/files/", {"q": "invoice", "min_size": 301})
    assert [h["path"][-19:] for h in small.json()["hits"]] == ["invoice-2025-04.pdf"]
    history_url = "/api/v1/files/history/"
    answer = api.get(history_url, {"repository": "main", "path": conf})
    assert answer.status_code == 200 and len(answer.json()["versions"]) == 2
    for url, query in ((history_url, {"repository": "nope", "path": conf}),
                       (history_url, {"path": conf}), ("/api/v1/files/", {"q": "[x"}),
                       ("/api/v1/files/", {"q": "x", "archived_after": "soon"}),
                       ("/api/v1/files/", {"q": "x", "limit": 0})):  # fmt: skip
        refused = api.get(url, query)
        assert refused.status_code == 400 and refused.json()["error"] == "invalid_input", query
    assert client_for(None).get("/api/v1/files/", {"q": "x"}).status_code == 403

    # a verify-restore samples from the index: no listing copy of the archive is made
    from borgapp.models import ArchiveItem, Job

    verified = cli("borg_verify_restore", "main", "--prefix", "www", "--sample-percent", "100")
    job = Job.objects.filter(kind="verify_restore").latest("pk")
    assert verified.code == 0, verified.err
    assert job.result["files_in_archive"] == 8 and ArchiveItem.objects.count() == 0
    # the names borg cannot be given back (a newline; '?' for non-UTF-8 bytes) are not
    # sampled, and the hardlink (listed without content) is not a candidate: 6 of 8 compared
    assert (job.result["sampled"], job.result["not_sampled"], job.result["problems"]) == (6, 2, [])

    # deleting the first archive removes its share: the logo is no longer anywhere
    assert cli("borg_delete", "main", a1.name).code == 0
    run_index_jobs()
    assert filesearch.history(repo, str(src / "srv/www/img/logo.svg"))["versions"] == []
    assert index_entries(a2) == borg_entries(roots, a2.name)
    assert IndexVersion.objects.count() == len(borg_entries(roots, a2.name))

    # without its prints (lost, say), what went is found among every entry instead
    from borgapp import fileprints

    fileprints.path_of(a2.indexed.chain_id).unlink()
    (src / "home/ann/reports/2025/invoice-2025-04.pdf").unlink()
    third = cli("borg_backup", "main", "--source", src, "--prefix", "www", "--json")
    assert third.code == 0, third.err
    run_index_jobs()
    a3 = Archive.objects.get(name=json.loads(third.out)["result"]["archive_name"])
    assert a3.indexed.reused == 0 and index_entries(a3) == borg_entries(roots, a3.name)
    assert index_entries(a2) == borg_entries(roots, a2.name)


def test_an_index_job_lets_a_backup_go_first(file_index, repo, roots, tmp_path):
    """A backup asked for while an archive is being indexed does not wait for the index: the
    index job stops (borg, or its storing), ends as yielded and is queued again behind the
    backup, which runs next; the archive is indexed afterwards, whole. (The index job holds
    the lease when the backup is asked for, as a worker running it would.)"""
    from borgapp import intake, jobs
    from borgapp.models import Archive, Job

    src = tmp_path / "src"
    for folder in range(100):
        write_files(src / f"d{folder:03d}", {f"f{n:03d}.txt": "x" for n in range(200)})
    first = cli("borg_backup", "main", "--source", src, "--prefix", "big")
    assert first.code == 0, first.err
    index = Job.objects.get(kind="index", status="queued")
    assert jobs.claim(index)  # what a worker does first: the lease is the index job's
    backup = intake.start("backup", repo, {"sources": [str(src)], "prefix": "next"},
                          trigger="cli")  # fmt: skip
    jobs.execute(index)  # it meets the waiting backup at its first look, mid-run
    index.refresh_from_db()
    assert index.status == "succeeded" and index.result.get("yielded_to_another_job")
    backup.refresh_from_db()
    assert backup.status == "queued"  # first in line: the requeued index job waits behind it
    queued = list(Job.objects.filter(status="queued").order_by("pk").values_list("kind", flat=True))
    assert queued == ["backup", "index"]
    assert jobs.yields_to_another(Job.objects.get(kind="index", status="queued"))
    jobs.run_queued(backup.pk)
    backup.refresh_from_db()
    assert backup.status == "succeeded", backup.error_message
    run_index_jobs()
    for archive in Archive.objects.filter(repository=repo):
        assert archive.indexed.entries == 20_101  # the source folder, 100 folders, the files


def test_a_prune_drops_its_share_and_the_rest_still_equals_borg(file_index, repo, roots,
                                                                tmp_path):  # fmt: skip
    """Three archives of a set, each after a change; a prune keeps the newest: the index
    holds only what that archive holds, exactly as borg lists it, and a file only the
    pruned archives held has no history any more."""
    import shutil
    import time

    from django.db.models import Sum

    from borgapp import filenames, filesearch
    from borgapp.models import Archive, IndexSpan, IndexVersion

    src = write_files(tmp_path / "src", {"keep.txt": "k", "a/b/c/deep.txt": "d"})
    for day in range(3):
        write_files(src, {f"day-{day}.txt": str(day) * (day + 1), f"days/{day}/note.txt": "n"})
        if day:
            (src / f"day-{day - 1}.txt").unlink()
            shutil.rmtree(src / f"days/{day - 1}")
        assert cli("borg_backup", "main", "--source", src, "--prefix", "set").code == 0
        time.sleep(1.1)
    run_index_jobs()
    assert IndexVersion.objects.filter(type="-").count() == 8  # keep, deep, day-0/1/2, notes
    pruned = cli("borg_prune", "main", "--prefix", "set", "--keep-last", "1")
    assert pruned.code == 0, pruned.err
    run_index_jobs()
    [newest] = Archive.objects.filter(repository=repo)
    assert index_entries(newest) == borg_entries(roots, newest.name)
    assert IndexVersion.objects.count() == len(borg_entries(roots, newest.name))
    day0 = str(src / "day-0.txt").lstrip("/")
    assert filesearch.history(repo, day0)["versions"] == []
    assert filesearch.search("day-0", filesearch.Filters())["hits"] == []
    # a folder no archive holds any more goes with what was in it, names and trigrams
    gone = str(src / "days/0").lstrip("/")
    assert filenames.node_of(gone) is None and filenames.node_of(f"{gone}/note.txt") is None
    assert filenames.node_of(str(src / "days/2/note.txt").lstrip("/")) is not None
    assert IndexSpan.objects.aggregate(n=Sum("count"))["n"] >= IndexVersion.objects.count()
    if filenames.has_trigrams():
        from django.db import connection

        with connection.cursor() as cursor:
            cursor.execute(f"INSERT INTO {filenames.TRIGRAMS}({filenames.TRIGRAMS}, rank) "
                           "VALUES ('integrity-check', 1)")  # fmt: skip
    assert [hit["path"] for hit in filesearch.search("note.txt", filesearch.Filters())["hits"]
            ] == [str(src / "days/2/note.txt").lstrip("/")]  # fmt: skip


def test_an_index_made_without_content_identities_goes_on_without_storing_again(
    file_index, repo, roots, tmp_path, monkeypatch
):
    """Archives indexed by the borg binary (or before the lister gave content identities)
    hold versions without one. The next archive, read by the lister, stores no version
    again but gives those it holds alike their identity; a touched file is then told from
    a modified one, as borg tells it."""
    import time

    from borgapp import borg, filediff
    from borgapp.models import Archive, IndexVersion

    src = write_files(tmp_path / "src", {"same.txt": "s", "touched.txt": "t", "d/e.txt": "e"})

    def backup():
        done = cli("borg_backup", "main", "--source", src, "--prefix", "set", "--json")
        assert done.code == 0, done.err
        run_index_jobs()
        time.sleep(1.1)
        return Archive.objects.get(name=json.loads(done.out)["result"]["archive_name"])

    monkeypatch.setattr(borg, "lister_usable", lambda: False)
    a1 = backup()
    assert not IndexVersion.objects.exclude(content=None).exists()
    monkeypatch.undo()
    a2 = backup()  # nothing changed: every version as it was, none stored again
    assert IndexVersion.objects.count() == a1.indexed.entries == a2.indexed.entries
    files = IndexVersion.objects.filter(type="-")
    assert files.count() == 3 and not files.filter(content=None).exists()
    (src / "touched.txt").touch()
    a3 = backup()
    assert index_entries(a3) == borg_entries(roots, a3.name)
    touched = str(src / "touched.txt").lstrip("/")
    for older in (a1, a2):
        said = borg_diff(roots, older.name, a3.name)
        told = {row.path: {c["type"] for c in row.changes} for row in filediff.compare(older, a3)}
        assert told == said and said[touched] == {"mtime"}


def test_a_path_borg_stored_twice_is_indexed_once(file_index, repo, roots, tmp_path):
    """Overlapping sources (a folder and one inside it) make borg store the inner paths
    twice in one archive. The index keeps one version of each (the first listed), and the
    next archive, with a file changed in there, is indexed as borg lists it."""
    import time

    from borgapp import filenames
    from borgapp.models import Archive, IndexVersion

    src = write_files(tmp_path / "src", {"top.txt": "t", "inner/a.txt": "a", "inner/b/c.txt": "c"})

    def backup():
        done = cli("borg_backup", "main", "--source", src, "--source", src / "inner",
                   "--prefix", "set", "--json")  # fmt: skip
        assert done.code == 0, done.err
        run_index_jobs()
        return Archive.objects.get(name=json.loads(done.out)["result"]["archive_name"])

    first = backup()
    paths = subprocess.run(
        [BORG, "list", "--format", "{path}{NL}", f"{roots.repos / 'main'}::{first.name}"],
        capture_output=True, text=True, check=True,
        env={**BORG_ENV, "BORG_BASE_DIR": roots.env["BORG_BASE_DIR"]},
    ).stdout.splitlines()  # fmt: skip
    assert paths.count(str(src / "inner" / "a.txt").lstrip("/")) == 2  # borg stored it twice
    assert index_entries(first) == borg_entries(roots, first.name)
    inner = str(src / "inner" / "a.txt").lstrip("/")
    assert IndexVersion.objects.filter(node_id=filenames.node_of(inner)).count() == 1
    time.sleep(1.1)
    (src / "inner" / "a.txt").write_text("changed, and longer")
    second = backup()
    assert index_entries(second) == borg_entries(roots, second.name)
    assert index_entries(second)[inner][1] == len("changed, and longer")
    assert index_entries(first)[inner][1] == 1  # the first archive's version still there


def test_a_path_met_by_the_prints_and_listed_again_is_not_counted_twice(
    file_index, repo, roots, tmp_path
):
    """A second archive with a file added as a source of its own lists it twice: once where
    the previous archive had it (the prints meet it) and once more as new. Counted once,
    a file deleted meanwhile is still seen to be gone (the counts would otherwise hide it),
    and the path keeps one version."""
    import time

    from borgapp import filenames
    from borgapp.models import Archive, IndexVersion

    src = write_files(tmp_path / "src", {"top.txt": "t", "inner/a.txt": "a"})

    def backup(*sources):
        given = [arg for source in sources for arg in ("--source", source)]
        done = cli("borg_backup", "main", *given, "--prefix", "set", "--json")
        assert done.code == 0, done.err
        run_index_jobs()
        return Archive.objects.get(name=json.loads(done.out)["result"]["archive_name"])

    backup(src)
    time.sleep(1.1)
    (src / "top.txt").unlink()
    second = backup(src, src / "inner" / "a.txt")
    assert index_entries(second) == borg_entries(roots, second.name)
    assert str(src / "top.txt").lstrip("/") not in index_entries(second)
    inner = filenames.node_of(str(src / "inner" / "a.txt").lstrip("/"))
    assert IndexVersion.objects.filter(node_id=inner).count() == 1


def test_a_folder_added_to_in_many_batches_answers_as_borg_does(
    file_index, repo, roots, tmp_path, monkeypatch
):
    """A folder that gets new files day after day (logs, mail) has a span of numbers per
    index batch that met new names there. With a batch per entry, 240 files make 240 spans
    of one folder: its page, its children and everything below it still equal what borg
    lists, and so does a diff of that folder (its paths asked for by number, or by each
    changed row's folder when the subtree is large)."""
    import time

    from borgapp import filediff, fileindex, filenames, filesearch
    from borgapp.models import IndexSpan

    monkeypatch.setattr(fileindex, "BATCH", 1)  # a batch per record read
    monkeypatch.setattr(fileindex, "READ_BYTES", 64)  # under a record's length
    files = {f"logs/{day:03d}.log": "x" * day for day in range(240)}
    src = write_files(tmp_path / "src", {**files, "etc/a.conf": "a", "etc/deep/b.conf": "b"})

    def backup():
        done = cli("borg_backup", "main", "--source", src, "--prefix", "set", "--json")
        assert done.code == 0, done.err
        run_index_jobs()
        return Archive.objects.get(name=json.loads(done.out)["result"]["archive_name"])

    from borgapp.models import Archive

    first = backup()
    logs = str(src / "logs").lstrip("/")
    assert IndexSpan.objects.filter(folder=filenames.node_of(logs)).count() >= 240
    api = client_for("viewer")

    def listed(archive, query) -> dict:
        rows, number = {}, 1
        while True:
            answer = api.get(f"/api/v1/archives/{archive.pk}/contents/", {**query, "page": number})
            assert answer.status_code == 200, answer.content
            for row in answer.json()["results"]:
                rows[row["path"]] = (row["type"], row["size"], fileindex.micros(row["mtime"]),
                                     row["linktarget"])  # fmt: skip
            if not answer.json()["next"]:
                return rows
            number += 1

    def answers_as_borg(archive):
        said = borg_entries(roots, archive.name)
        in_logs = {path: entry for path, entry in said.items() if path.startswith(logs + "/")}
        page = filesearch.folder_entries(archive, logs)
        assert {f"{logs}/{row[0]}": (row[1], row[2], row[3], row[5]) for row in page} == in_logs
        assert listed(archive, {"parent": logs}) == in_logs
        for folder in (src, src / "etc", src / "logs", src / "etc/a.conf", src / "more/two",
                       src / "more/one.txt"):  # fmt: skip
            top = str(folder).lstrip("/")
            below = {p: entry for p, entry in said.items() if p == top or p.startswith(top + "/")}
            assert listed(archive, {"path": top}) == below, top

    answers_as_borg(first)
    # the next archive is read in batches as usual: spans of several names each
    monkeypatch.setattr(fileindex, "BATCH", 20_000)
    monkeypatch.setattr(fileindex, "READ_BYTES", 1 << 20)
    time.sleep(1.1)
    (src / "logs/007.log").write_text("changed")
    (src / "logs/100.log").unlink()
    write_files(
        src,
        {
            "logs/240.log": "new",
            "logs/241.log": "new",
            "etc/new/c.conf": "c",
            "more/one.txt": "1",
            "more/two/three.txt": "3",
            "more/zz.txt": "z",
        },
    )
    (src / "etc/a.conf").write_text("changed too")
    second = backup()
    answers_as_borg(second)
    answers_as_borg(first)
    said = {p for p in borg_diff(roots, first.name, second.name) if p.startswith(logs)}
    assert said == {logs, f"{logs}/007.log", f"{logs}/100.log", f"{logs}/240.log",
                    f"{logs}/241.log"}  # fmt: skip
    for by_number in (100_000, 10):  # by number; by each changed row's folder
        monkeypatch.setattr(filenames, "BY_NUMBER", by_number)
        assert {row.path for row in filediff.compare(first, second, path=logs)} == said
        etc = {row.path for row in filediff.compare(first, second, path=str(src / "etc"))}
        assert etc == {p for p in borg_diff(roots, first.name, second.name)
                       if p.startswith(str(src / "etc").lstrip("/"))}  # fmt: skip


def test_the_pipe_from_borg_holds_a_megabyte(file_index, repo, roots, tmp_path, monkeypatch):
    """The storing thread holds Python's lock for up to 5 ms at a time, while the reader
    cannot empty the pipe: Linux's default 64 KiB would stop borg in under a millisecond
    (a later archive of 1,025,844 entries: 7.8 s against 5.6 s)."""
    import fcntl

    from borgapp import fileindex

    with open("/proc/sys/fs/pipe-max-size") as limit:
        allowed = int(limit.read())
    if allowed < fileindex.PIPE_BYTES:
        pytest.skip("this system allows pipes of less than a megabyte")
    sizes, widen = [], fileindex._widen

    def widened(pipe):
        widen(pipe)
        sizes.append(fcntl.fcntl(pipe, fcntl.F_GETPIPE_SZ))

    monkeypatch.setattr(fileindex, "_widen", widened)
    src = write_files(tmp_path / "src", {"a.txt": "a"})
    done = cli("borg_backup", "main", "--source", src, "--prefix", "set", "--json")
    assert done.code == 0, done.err
    run_index_jobs()
    assert sizes == [fileindex.PIPE_BYTES]


@pytest.mark.parametrize("sqlstate", ["40P01", "53100"])
def test_a_batch_stopped_in_a_deadlock_is_stored_again(file_index, repo, roots, tmp_path,
                                                       monkeypatch, sqlstate):  # fmt: skip
    """Two index jobs storing the same new paths at once can deadlock on PostgreSQL, which
    then stops one of them. Its batch is stored again, and the names and folders that the
    rolled back transaction had made are not taken for stored ones (their ids would point
    nowhere); any other database error still fails the job."""
    from django.db import OperationalError

    from borgapp import fileindex, jobs
    from borgapp.models import Archive, Job

    class Stopped(Exception):
        pass

    Stopped.sqlstate = sqlstate  # as psycopg's errors carry it
    src = write_files(tmp_path / "src", {f"srv/www/site{i}/pages/p{i}.html": str(i)
                                         for i in range(3)})  # fmt: skip
    real, stopped = fileindex.Indexer._versions, []

    def versions_then_stopped(self, nodes, attrs):
        real(self, nodes, attrs)  # names, paths and versions written, then the database stops it
        if not stopped:
            stopped.append(len(nodes))
            raise OperationalError("deadlock detected") from Stopped()

    monkeypatch.setattr(fileindex.Indexer, "_versions", versions_then_stopped)
    done = cli("borg_backup", "main", "--source", src, "--prefix", "set", "--json")
    assert done.code == 0, done.err
    job = Job.objects.get(kind="index")
    jobs.run_queued(job.pk)
    job.refresh_from_db()
    archive = Archive.objects.get(name=json.loads(done.out)["result"]["archive_name"])
    assert stopped
    if sqlstate == "40P01":
        assert job.status == "succeeded", job.error_message
        assert index_entries(archive) == borg_entries(roots, archive.name)
        assert archive.indexed.entries == len(borg_entries(roots, archive.name))
        assert archive.indexed.changed == archive.indexed.entries  # counted once, not twice
    else:  # out of memory, say: not a deadlock, not tried again
        assert job.status == "failed" and not fileindex.is_indexed(archive)


def test_the_cycle_collector_pauses_while_a_listing_is_stored_and_only_then(
    file_index, repo, roots, tmp_path, monkeypatch
):
    """Paused while the batches are stored (a third of the reading time at 200,000
    entries), and back on afterwards, also after a failed run: a worker process must not
    go on without it."""
    import gc

    from borgapp import fileindex, jobs
    from borgapp.models import Job

    states, write = [], fileindex.Indexer.write

    def noted(self, batch):
        states.append(gc.isenabled())
        return write(self, batch)

    monkeypatch.setattr(fileindex.Indexer, "write", noted)
    src = write_files(tmp_path / "src", {"a.txt": "a"})
    assert cli("borg_backup", "main", "--source", src, "--prefix", "set").code == 0
    run_index_jobs()
    assert states == [False] and gc.isenabled()

    def broken(self, batch):
        raise OSError("disk full")

    monkeypatch.setattr(fileindex.Indexer, "write", broken)
    (src / "b.txt").write_text("b")
    assert cli("borg_backup", "main", "--source", src, "--prefix", "set").code == 0
    job = Job.objects.get(kind="index", status="queued")
    jobs.run_queued(job.pk)
    job.refresh_from_db()
    assert job.status == "failed" and gc.isenabled()


def test_archives_no_job_would_index_are_caught_up_with(file_index, repo, roots, tmp_path,
                                                         settings):  # fmt: skip
    """Archives made while the index was off, or kept through migration 0028 (which empties
    the index), are indexed without waiting for the next backup: the maintenance task
    queues one index job per repository that lacks some; none while one waits, and none
    for a day after one failed."""
    from datetime import timedelta

    from django.utils import timezone

    from borgapp import fileindex, jobs, tasks
    from borgapp.models import Archive, Job

    src = write_files(tmp_path / "src", {"a.txt": "a"})

    def backup_unindexed():
        settings.FILE_INDEX = False
        assert cli("borg_backup", "main", "--source", src, "--prefix", "set").code == 0
        settings.FILE_INDEX = True

    backup_unindexed()
    assert not Job.objects.filter(kind="index").exists()
    assert tasks.maintenance()["index_jobs_queued"] == 1
    assert jobs.index_catch_up() == 0  # one waits already
    run_index_jobs()
    assert all(map(fileindex.is_indexed, Archive.objects.all()))
    assert jobs.index_catch_up() == 0

    backup_unindexed()
    Job.objects.filter(kind="index").update(status="failed", finished_at=timezone.now())
    assert jobs.index_catch_up() == 0  # a broken archive is not tried again every minute
    a_day_ago = timezone.now() - jobs.CATCH_UP_PAUSE - timedelta(minutes=1)
    Job.objects.filter(kind="index").update(finished_at=a_day_ago)
    assert jobs.index_catch_up() == 1
    run_index_jobs()
    assert all(map(fileindex.is_indexed, Archive.objects.all()))
    settings.FILE_INDEX = False
    backup_unindexed()
    settings.FILE_INDEX = False
    assert jobs.index_catch_up() == 0  # the index turned off: nothing


def borg_diff(roots, older: str, newer: str) -> dict:
    """What `borg diff` says changed: path -> its change types, ctime left out (the index
    holds none; a path whose only change is its ctime is no change to it)."""
    said = subprocess.run(
        [BORG, "diff", "--json-lines", f"{roots.repos / 'main'}::{older}", newer],
        capture_output=True, env={**BORG_ENV, "BORG_BASE_DIR": roots.env["BORG_BASE_DIR"]},
        check=True,
    )  # fmt: skip
    found = {}
    for line in said.stdout.splitlines():
        item = json.loads(line)
        kinds = {change["type"] for change in item["changes"]} - {"ctime"}
        if kinds:
            found[item["path"]] = kinds
    return found


def test_a_diff_from_the_index_says_what_borg_diff_says(file_index, repo, roots, tmp_path):
    """Two archives of a set after every kind of change, and an archive of another set: the
    comparison comes from the index at once (no diff job) and names the paths and changes
    `borg diff` names, from the API, the command line and the admin page alike."""
    import time

    from borgapp import filediff
    from borgapp.models import Archive, Job

    src = write_files(tmp_path / "src", {
        "grow.txt": "a", "same-size.txt": "abc", "mode.txt": "m", "gone.txt": "g",
        "old/dir/x.txt": "x", "keep/deep/er/file.txt": "kept", "kind": "a file first",
        "touched.txt": "only its time moves", "same-time.txt": "12345",
    })  # fmt: skip
    (src / "link").symlink_to("grow.txt")
    (src / "old-link").symlink_to("gone.txt")
    os.link(src / "grow.txt", src / "grow.hard")
    with open(os.fsencode(src) + b"/caf\xe9.txt", "wb") as handle:
        handle.write(b"latin-1 name")

    def backup(prefix):
        done = cli("borg_backup", "main", "--source", src, "--prefix", prefix, "--json")
        assert done.code == 0, done.err
        run_index_jobs()
        time.sleep(1.1)
        return Archive.objects.get(name=json.loads(done.out)["result"]["archive_name"])

    a1 = backup("set")
    (src / "grow.txt").write_text("grown")  # and its hardlink with it
    (src / "same-size.txt").write_text("xyz")
    (src / "touched.txt").touch()  # borg: its mtime changed, not its content
    kept = os.stat(src / "same-time.txt")
    (src / "same-time.txt").write_text("54321")  # the content, under the same size and time
    os.utime(src / "same-time.txt", ns=(kept.st_atime_ns, kept.st_mtime_ns))
    (src / "mode.txt").chmod(0o600)
    (src / "gone.txt").unlink()
    (src / "old-link").unlink()
    for path in (src / "old/dir/x.txt", src / "old/dir", src / "old"):
        path.unlink() if path.is_file() else path.rmdir()
    (src / "link").unlink()
    (src / "link").symlink_to("same-size.txt")
    (src / "kind").unlink()
    (src / "kind").mkdir()
    write_files(src, {"new/dir/y.txt": "new", "keep/deep/er/added.txt": "more"})
    (src / "new-link").symlink_to("new")
    a2 = backup("set")
    a3 = backup("other")  # another set: compared entry by entry, no change of content

    said = borg_diff(roots, a1.name, a2.name)
    assert {
        "modified",
        "mode",
        "changed link",
        "added",
        "removed",
        "removed directory",
        "added directory",
        "added link",
        "removed link",
    } <= set().union(*said.values())
    told = {row.path: {c["type"] for c in row.changes} for row in filediff.compare(a2, a1)}
    assert told == said
    by_name = {path.rsplit("/", 1)[-1]: kinds for path, kinds in said.items()}
    assert by_name["touched.txt"] == {"mtime"} and by_name["same-time.txt"] == {"modified"}
    assert {
        row.path: {c["type"] for c in row.changes} for row in filediff.compare(a2, a3)
    } == borg_diff(roots, a2.name, a3.name)
    keep = str(src / "keep").lstrip("/")
    under = {p: k for p, k in said.items() if p == keep or p.startswith(keep + "/")}
    assert {row.path for row in filediff.compare(a1, a2, path=keep)} == set(under)

    api = client_for("viewer")
    url = f"/api/v1/archives/{a1.pk}/diff/"
    rows, page = [], 1
    while True:
        answer = api.get(url, {"other": a2.pk, "page": page})
        assert answer.status_code == 200, answer.content
        rows += answer.json()["results"]
        if not answer.json()["next"]:
            break
        page += 1
    assert {row["path"]: {c["type"] for c in row["changes"]} for row in rows} == said
    kinds = {row["path"].rsplit("/", 1)[-1]: row["change"] for row in rows}
    assert (kinds["grow.txt"], kinds["mode.txt"], kinds["gone.txt"], kinds["y.txt"],
            kinds["link"], kinds["kind"]) == ("modified", "metadata", "removed", "added",
                                              "modified", "metadata")  # fmt: skip
    added = api.get(url, {"other": a2.pk, "change": "added", "page_size": 500}).json()
    assert {r["path"] for r in added["results"]} == {
        p for p, k in said.items() if k & {"added", "added directory", "added link"}}  # fmt: skip
    refused = api.get(url, {"other": a2.pk, "change": "touched"})
    assert refused.status_code == 400 and "change must be one of" in refused.json()["message"]
    assert not Job.objects.filter(kind="diff").exists()  # no borg diff job was needed

    printed = cli("borg_diff", "main", a2.name, a1.name, "--json")
    assert printed.code == 0, printed.err
    assert {r["path"]: {c["type"] for c in r["changes"]} for r in json.loads(printed.out)} == said

    from django.test import Client

    from tests.helpers import staff

    browser = Client()
    browser.force_login(staff("viewer"))
    shown = browser.get(f"/admin/borgapp/archive/{a2.pk}/diff/", {"other": a1.pk})
    text = shown.content.decode()
    assert shown.status_code == 200 and f"{len(said)} changes" in text
    assert "content: 1 B → 5 B" in text and "mode -rw-r--r-- → -rw-------" in text
    assert "From the file index" in text and "Compare now" not in text


def test_an_archive_not_indexed_yet_is_indexed_when_asked_for_never_copied(
    file_index, settings, repo, roots, tmp_path
):
    """With the file index on, asking for the contents or a comparison of archives it does
    not hold yet (made before it was on, or still waiting their turn) queues the index job
    of the archive missing, never a listing copy or a borg diff: the API's protocol stays
    (202 and the job, GET again), the command line indexes then answers."""
    import time

    from borgapp import jobs
    from borgapp.models import Archive, ArchiveDiff, ArchiveItem, Job

    settings.FILE_INDEX = False  # two archives made while the index was off
    src = write_files(tmp_path / "src", {"a.txt": "a", "deep/er/b.txt": "b"})
    assert cli("borg_backup", "main", "--source", src, "--prefix", "set").code == 0
    time.sleep(1.1)
    write_files(src, {"c.txt": "c"})
    assert cli("borg_backup", "main", "--source", src, "--prefix", "set").code == 0
    a1, a2 = Archive.objects.filter(repository=repo).order_by("start")
    settings.FILE_INDEX = True
    assert not Job.objects.filter(kind="index").exists()

    api = client_for("viewer")
    contents = f"/api/v1/archives/{a2.pk}/contents/"
    told = api.get(contents)
    assert told.status_code == 409 and told.json()["error"] == "listing_not_loaded"
    queued = api.post(contents)
    assert queued.status_code == 202, queued.content
    job = Job.objects.get(pk=queued.json()["id"])
    assert (job.kind, job.archive_name) == ("index", a2.name)
    assert api.post(contents).json()["id"] == job.pk  # asked again: the same job
    assert api.get(contents).json()["job"]["id"] == job.pk  # a GET says which job reads it
    jobs.run_queued(job.pk)
    listed = api.get(contents, {"page_size": 100})
    assert listed.status_code == 200 and any(
        r["path"].endswith("/c.txt") for r in listed.json()["results"]
    )  # fmt: skip

    from django.test import Client

    from tests.helpers import staff

    browser = Client()
    browser.force_login(staff("viewer"))
    page = browser.get(f"/admin/borgapp/archive/{a2.pk}/diff/", {"other": a1.pk}).content.decode()
    assert f"{a1.name} is not in the file index yet: index it" in page

    diff = f"/api/v1/archives/{a2.pk}/diff/"
    asked = api.post(diff, {"other": a1.pk}, format="json")
    assert asked.status_code == 202, asked.content
    job = Job.objects.get(pk=asked.json()["id"])
    assert (job.kind, job.archive_name) == ("index", a1.name)  # the one still missing
    jobs.run_queued(job.pk)
    changed = api.get(diff, {"other": a1.pk}).json()["results"]
    assert any(r["path"].endswith("/c.txt") and r["change"] == "added" for r in changed)

    # the command line: indexes what is missing inline, then answers from the index
    write_files(src, {"d.txt": "d"})
    assert cli("borg_backup", "main", "--source", src, "--prefix", "set").code == 0
    Job.objects.filter(kind="index", status="queued").update(status="cancelled")
    a3 = Archive.objects.filter(repository=repo).latest("start")
    printed = cli("borg_diff", "main", a2.name, a3.name, "--json")
    assert printed.code == 0, printed.err
    assert [r["change"] for r in json.loads(printed.out) if r["path"].endswith("/d.txt")] == [
        "added"]  # fmt: skip
    assert ArchiveItem.objects.count() == 0 and ArchiveDiff.objects.count() == 0
    assert not Job.objects.filter(kind__in=["contents", "diff"]).exists()


def test_migration_0028_empties_the_index_and_keys_the_trigrams_by_name_ids():
    """Names were stored under their hash and numbered for SQLite's trigram index (0024);
    0028 empties the index (the index jobs read the archives again) and keys the trigram
    index by the names' ids. Back to 0027 and forward again works. On PostgreSQL too, with
    paths that use the names (whose deferred foreign-key checks must not stop the names
    table's change)."""
    from django.db import connection
    from django.db.migrations.executor import MigrationExecutor

    from borgapp import filenames

    before, after = (
        [("borgapp", "0027_index_version_content")],
        [("borgapp", "0028_index_name_keys")],
    )
    executor = MigrationExecutor(connection)
    leaves = executor.loader.graph.leaf_nodes()
    try:
        executor.migrate(before)
        state = executor.loader.project_state(before).apps
        name = state.get_model("borgapp", "IndexName").objects.create(
            id=0x5EED_0000_0001, name="report.txt", num=1
        )
        state.get_model("borgapp", "IndexNode").objects.create(parent=None, name=name)
        MigrationExecutor(connection).migrate(after)
        names = MigrationExecutor(connection).loader.project_state(after).apps
        assert not names.get_model("borgapp", "IndexName").objects.exists()
        MigrationExecutor(connection).migrate(before)  # and back
        if connection.vendor == "sqlite" and filenames.has_trigrams():  # the names' view
            with connection.cursor() as cursor:
                cursor.execute("SELECT 1 FROM sqlite_master WHERE name = %s",
                               ["borgapp_indexname_numbered"])  # fmt: skip
                assert cursor.fetchone() is not None
    finally:
        MigrationExecutor(connection).migrate(leaves)


def test_migration_0029_keys_versions_by_path_chain_and_first_and_keeps_them(repo):
    """0029 drops the versions' ids: a version is found by (node, chain, first), on SQLite
    in a table that is that key's tree alone (WITHOUT ROWID), and stays so after every
    later migration. Versions are kept, but for the extra ones the index stored for a path
    that borg listed twice in an archive: of two with one key, the one closed stays (the
    other was never closed again); an older open one is closed where the newer begins.
    Back to 0028, each has an id again, and forward once more."""
    from django.db import connection
    from django.db.migrations.executor import MigrationExecutor

    from borgapp.models import IndexVersion

    before, after = [("borgapp", "0028_index_name_keys")], [("borgapp", "0029_index_version_key")]
    executor = MigrationExecutor(connection)
    leaves = executor.loader.graph.leaf_nodes()

    def key_of_versions():
        with connection.cursor() as cursor:
            if connection.vendor == "sqlite":  # (its introspection lists a key's columns
                cursor.execute(  # in the table's order)
                    "SELECT sql FROM sqlite_master WHERE name = 'borgapp_indexversion'"
                )
                made = cursor.fetchone()[0]
                assert made.endswith(' PRIMARY KEY ("node_id", "chain_id", "first")) WITHOUT ROWID')
                return ("node_id", "chain_id", "first")
            found = connection.introspection.get_constraints(cursor, "borgapp_indexversion")
        (primary,) = [tuple(c["columns"]) for c in found.values() if c["primary_key"]]
        return primary

    given = {  # path: versions (first, last, size) as the index before 0029 left them
        "plain.txt": [(1, 1, 10), (2, None, 20)],
        "twice.txt": [(1, None, 1), (1, 1, 1), (2, None, 19), (2, None, 19)],  # listed twice
        "stale.txt": [(1, None, 5), (3, None, 6)],  # in 1, then listed twice: one not closed
    }
    kept = {"plain.txt": [(1, 1, 10), (2, None, 20)], "twice.txt": [(1, 1, 1), (2, None, 19)],
            "stale.txt": [(1, 2, 5), (3, None, 6)]}  # fmt: skip

    def versions(model):
        found = {}
        for version in model.objects.select_related("node__name").order_by("first", "last"):
            found.setdefault(version.node.name.name, []).append(
                (version.first, version.last, version.size)
            )
        return found

    try:
        executor.migrate(before)
        state = executor.loader.project_state(before).apps
        model = functools.partial(state.get_model, "borgapp")
        chain = model("IndexChain").objects.create(repository_id=repo.pk, key="set", last_seq=3)
        owner = model("IndexOwner").objects.create(user="root", group="root")
        for number, (path, rows) in enumerate(given.items()):
            name = model("IndexName").objects.create(key=number, name=path)
            node = model("IndexNode").objects.create(parent=None, name=name)
            for first, last, size in rows:
                model("IndexVersion").objects.create(node=node, chain=chain, first=first,
                                                     last=last, type="-", owner=owner,
                                                     size=size)  # fmt: skip
        MigrationExecutor(connection).migrate(after)
        assert key_of_versions() == ("node_id", "chain_id", "first")
        state = MigrationExecutor(connection).loader.project_state(after).apps
        assert versions(state.get_model("borgapp", "IndexVersion")) == kept
        MigrationExecutor(connection).migrate(before)  # and back
        state = MigrationExecutor(connection).loader.project_state(before).apps
        assert versions(state.get_model("borgapp", "IndexVersion")) == kept
        assert all(state.get_model("borgapp", "IndexVersion").objects.values_list("id", flat=True))
    finally:
        MigrationExecutor(connection).migrate(leaves)
    assert key_of_versions() == ("node_id", "chain_id", "first")  # after 0030 too
    assert not IndexVersion.objects.exists()  # (0030 empties the index)


def test_a_migrate_back_to_before_the_index_ends_without_error():
    """`migrate` signals when it ends; the handler that keeps SQLite's trigram index in step
    with the names (apps._trigrams_after_flush) finds no names table there, and no error."""
    from django.core.management import call_command

    try:
        call_command("migrate", "borgapp", "0021_database_source_agent_host", verbosity=0)
    finally:
        call_command("migrate", verbosity=0)


def test_migration_0030_packs_the_paths_and_empties_the_index(repo):
    """0030 replaces the names and paths tables with packed spans: the index is emptied (the
    index jobs read the archives again), a version's node is a number with no reference,
    and on SQLite the versions table is still its key's tree alone (WITHOUT ROWID). Back to
    0029, versions reference paths again; forward once more. Then an index job's paths go
    in and come out by number."""
    from django.db import connection, transaction
    from django.db.migrations.executor import MigrationExecutor

    from borgapp import filenames
    from borgapp.models import IndexSpan, IndexVersion

    before = [("borgapp", "0029_index_version_key")]
    after = [("borgapp", "0030_index_spans")]
    executor = MigrationExecutor(connection)
    leaves = executor.loader.graph.leaf_nodes()

    def versions_sql():
        with connection.cursor() as cursor:
            if connection.vendor == "sqlite":
                cursor.execute("SELECT sql FROM sqlite_master WHERE name = 'borgapp_indexversion'")
                return cursor.fetchone()[0]
            found = connection.introspection.get_constraints(cursor, "borgapp_indexversion")
            return " ".join(f"{c['columns']} {c['foreign_key']}" for c in found.values()
                            if c["foreign_key"])  # fmt: skip

    try:
        executor.migrate(before)
        model = functools.partial(executor.loader.project_state(before).apps.get_model,
                                  "borgapp")  # fmt: skip
        chain = model("IndexChain").objects.create(repository_id=repo.pk, key="set", last_seq=1)
        owner = model("IndexOwner").objects.create(user="root", group="root")
        name = model("IndexName").objects.create(key=7, name="report.txt")
        node = model("IndexNode").objects.create(parent=None, name=name)
        model("IndexVersion").objects.create(node=node, chain=chain, first=1, type="-",
                                             owner=owner)  # fmt: skip
        assert "indexnode" in versions_sql()
        MigrationExecutor(connection).migrate(after)
        assert not IndexVersion.objects.exists() and not IndexSpan.objects.exists()
        assert "indexnode" not in versions_sql()
        if connection.vendor == "sqlite":
            assert versions_sql().endswith('PRIMARY KEY ("node_id", "chain_id", "first")) '
                                           "WITHOUT ROWID")  # fmt: skip
        MigrationExecutor(connection).migrate(before)  # and back
        assert "indexnode" in versions_sql()
    finally:
        MigrationExecutor(connection).migrate(leaves)
    assert "indexnode" not in versions_sql()
    with transaction.atomic():
        filenames.lock()
        srv = filenames.add({0: ["srv"]})[(0, "srv")]
        made = filenames.add({srv: ["index.html", "caf\udce9.txt"]})
    assert filenames.paths_of([srv, *made.values()]) == {
        srv: "srv", made[(srv, "index.html")]: "srv/index.html",
        made[(srv, "caf\udce9.txt")]: "srv/caf\udce9.txt",
    }  # fmt: skip
    assert filenames.node_of("srv/caf\udce9.txt") == made[(srv, "caf\udce9.txt")]


def test_a_flushed_database_searches_its_new_names_without_error():
    """`manage.py flush` empties the paths but knows nothing of SQLite's trigram index;
    the index is emptied with them, so new names (new numbers, the old ones again) are
    found and nothing reads as a malformed database."""
    from django.core.management import call_command
    from django.db import transaction

    from borgapp import filenames, filesearch

    def add(*names):
        with transaction.atomic():
            filenames.lock()
            filenames.add({0: list(names)})

    add("report.txt", "invoice-2025-03.pdf", "invoice-2025-04.pdf")
    call_command("flush", interactive=False, verbosity=0)
    add("invoice-2026-01.pdf")
    found = [num for batch in filesearch._candidates("nvoice-20") for num in batch]
    assert filenames.paths_of(found) == {1: "invoice-2026-01.pdf"}


def test_a_name_fragment_search_reads_the_trigram_index():
    """A fragment search reads a trigram index, not every name: on SQLite the FTS5 table (an
    AND of the fragment's trigrams: FTS5 takes no phrase where it keeps no positions), each
    candidate then checked against its name, so that a name holding the trigrams apart
    (`oicvoi-ice`) is not taken for `voice`; on PostgreSQL pg_trgm's index (migration 0030)
    serves the query (its expression is the one Django's icontains writes) and the
    iterator's cursor is planned for all its rows. Either way, case aside, the fragment
    finds exactly its names."""
    from django.db import connection, transaction
    from django.test.utils import CaptureQueriesContext

    from borgapp import filenames, filesearch
    from borgapp.models import IndexSearchName

    given = ["invoice-2025-03.pdf", "Invoice-2024.PDF", "report.txt", "photo.jpg", "oicvoi-ice"]
    with transaction.atomic():
        filenames.lock()
        made = filenames.add({0: given})

    def found(pattern):
        nums = [num for batch in filesearch._candidates(pattern) for num in batch]
        return sorted(filenames.paths_of(nums).values())

    with CaptureQueriesContext(connection) as queries:
        assert found("NVOICE-20") == ["Invoice-2024.PDF", "invoice-2025-03.pdf"]
        assert found("voice") == ["Invoice-2024.PDF", "invoice-2025-03.pdf"]
    if connection.vendor == "sqlite":
        if not filenames.has_trigrams():
            pytest.skip("this SQLite has no FTS5 trigram tokenizer")
        sql = " ".join(query["sql"] for query in queries)
        assert f"{filenames.TRIGRAMS} MATCH" in sql and "WHERE start >" not in sql  # no scan
        assert found("pd") == ["Invoice-2024.PDF", "invoice-2025-03.pdf"]  # every name read
        assert made[(0, "oicvoi-ice")] not in [
            num for batch in filesearch._candidates("voice") for num in batch
        ]  # fmt: skip
        return
    names = IndexSearchName.objects.filter(name__icontains="NVOICE-20").values_list("num", "name")
    sql, params = names.query.sql_with_params()
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SET LOCAL enable_seqscan = off")  # a table this small is read whole
        cursor.execute(f"EXPLAIN {sql}", params)
        plan = "\n".join(row[0] for row in cursor.fetchall())
        # the iterator's server-side cursor is planned for all its rows, not the first
        # tenth (for which a large table's names were all read instead)
        cursor.execute("SHOW cursor_tuple_fraction")
        assert float(cursor.fetchone()[0]) == 1.0
    assert "indexsearchname_trigram" in plan, plan


def test_a_path_dropped_while_a_job_knew_it_is_made_again_not_pointed_at(repo):
    """An index job keeps the names of the folders it met in memory. Another repository's
    prune may drop those of them that no archive holds any more (collect_garbage) while
    the job runs; a name the job then meets again is given a new number, in the batch stored
    again, never the dropped one (whose path no search, tree or history could find)."""
    from django.db import transaction
    from django.utils import timezone

    from borgapp import fileindex, filenames
    from borgapp.models import Archive, IndexVersion

    with transaction.atomic():
        filenames.lock()
        data = filenames.add({0: ["data"]})[(0, "data")]
        old = filenames.add({data: ["old.txt"]})[(data, "old.txt")]  # no archive holds it
    archive = Archive.objects.create(repository=repo, name="set-1", borg_id="1" * 64,
                                     start=timezone.now())  # fmt: skip
    indexer = fileindex.Indexer(archive)
    attrs = ("-", 0o644, ("root", "root"), 1, 0, "", True, None)
    [new] = indexer._store([("data/new.txt", attrs)])  # the job now knows old.txt in data
    assert filenames.drop_unused() == 1  # meanwhile, a prune elsewhere drops it
    assert filenames.node_of("data/old.txt") is None
    [again] = indexer._store([("data/old.txt", attrs)])
    assert again != old
    assert filenames.paths_of([new, again]) == {new: "data/new.txt", again: "data/old.txt"}
    assert set(IndexVersion.objects.values_list("node_id", flat=True)) == {new, again}
