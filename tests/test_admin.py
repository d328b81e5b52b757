"""The admin as a control panel, in-process (the browser walk-through is test_browser.py):
every operation page queues a Job and says so; roles decide what is shown and allowed."""

import json
import os
import re
import time

import pytest
from django.contrib.auth.models import Group, User
from django.utils import timezone

from borgapp import jobs
from borgapp.models import Archive, Job, Repository, RetentionPolicy, Schedule
from tests.helpers import PASSPHRASE, cli, manage, staff, write_files

pytestmark = pytest.mark.django_db


def run_latest(kind: str) -> Job:
    """What a worker does with the newest queued job of this kind."""
    job = Job.objects.filter(kind=kind).latest("pk")
    jobs.run_queued(job.pk)
    job.refresh_from_db()
    assert job.status == "succeeded", (job.error_code, job.error_message)
    return job


def messages_of(response) -> list[str]:
    return [str(m) for m in response.context["messages"]] if response.context else []


@pytest.fixture
def admin_client(client):
    client.force_login(staff("admin"))
    return client


def test_the_whole_round_from_the_admin(admin_client, roots, tmp_path):
    # add and initialize a repository
    added = admin_client.post(
        "/admin/borgapp/repository/add/",
        {
            "setup": "init",
            "name": "main",
            "location": str(roots.repos / "main"),
            "encryption": "repokey-blake2",
            "passphrase": PASSPHRASE,
        },
        follow=True,
    )
    assert added.status_code == 200
    assert any("Initialization of repository main queued as" in m for m in messages_of(added))
    run_latest("init")
    repo = Repository.objects.get(name="main")
    assert repo.state == "ready" and repo.get_passphrase() == PASSPHRASE
    page = admin_client.get(f"/admin/borgapp/repository/{repo.pk}/change/").content.decode()
    assert PASSPHRASE not in page and "Back up now" in page
    # back up now, with a form for the sources
    src = write_files(tmp_path / "src", {"a.txt": "alpha", "sub/b.bin": b"\x00\x01" * 1000})
    started = admin_client.post(
        f"/admin/borgapp/repository/{repo.pk}/backup/",
        {"sources": str(src), "excludes": "", "prefix": "manual", "compression": "lz4"},
        follow=True,
    )
    job = Job.objects.filter(kind="backup").latest("pk")
    assert any(
        f"Backup of repository main queued as job {job.pk}" in re.sub("<[^>]+>", "", m)
        for m in messages_of(started)
    )
    assert started.request["PATH_INFO"] == f"/admin/borgapp/job/{job.pk}/change/"
    run_latest("backup")
    archive = Archive.objects.get(repository=repo)
    listed = admin_client.get("/admin/borgapp/archive/").content.decode()
    assert archive.name in listed
    # browse the contents: first a job reads the file list, then folders page from the DB
    contents_url = f"/admin/borgapp/archive/{archive.pk}/contents/"
    assert "Read the file list" in admin_client.get(contents_url).content.decode()
    admin_client.post(contents_url)
    run_latest("contents")
    top = admin_client.get(contents_url, {"path": str(src).lstrip("/")}).content.decode()
    assert "a.txt" in top and "sub/" in top and "b.bin" not in top
    inner = admin_client.get(contents_url, {"path": f"{str(src).lstrip('/')}/sub"})
    assert "b.bin" in inner.content.decode()
    # extract one file to a restore target and check its bytes
    target = roots.restore / "one"
    admin_client.post(
        f"/admin/borgapp/archive/{archive.pk}/extract/",
        {
            "target": str(target),
            "paths": f"{str(src).lstrip('/')}/sub/b.bin",
            "strip_components": 0,
        },
    )
    run_latest("extract")
    restored = target / str(src).lstrip("/") / "sub" / "b.bin"
    assert restored.read_bytes() == b"\x00\x01" * 1000
    assert not (target / str(src).lstrip("/") / "a.txt").exists()
    # prune with a preview first
    RetentionPolicy.objects.create(name="none-kept", keep_within="1H")
    preview = admin_client.post(
        f"/admin/borgapp/repository/{repo.pk}/prune/",
        {"prefix": "manual", "policy": "none-kept", "compact": "on"},
    )
    assert preview.status_code == 302
    dry = run_latest("prune")
    assert dry.params["dry_run"] is True and dry.result["kept"] == [archive.name]
    job_page = admin_client.get(f"/admin/borgapp/job/{dry.pk}/change/").content.decode()
    assert "Prune preview" in job_page and f"keep <code>{archive.name}</code>" in job_page
    confirm = admin_client.post(
        f"/admin/borgapp/repository/{repo.pk}/prune/",
        {"prefix": "manual", "policy": "none-kept", "compact": "on", "confirm": "1"},
    )
    assert confirm.status_code == 302
    real = run_latest("prune")
    assert real.params["dry_run"] is False
    # the dashboard shows the repository green, with its reasons and the jobs of the day
    dashboard = admin_client.get("/admin/").content.decode()
    assert 'data-health="green"' in dashboard and re.search(r"last backup \d+ min ago", dashboard)
    assert dashboard.count('class="oc-job"') == Job.objects.count()


def test_a_viewer_sees_but_cannot_act(client, roots, tmp_path):
    repo = Repository.objects.create(name="main", location=str(roots.repos / "m"), state="ready")
    archive = Archive.objects.create(repository=repo, name="a1", borg_id="1" * 64)
    client.force_login(staff("viewer"))
    assert client.get("/admin/").status_code == 200
    assert client.get("/admin/borgapp/repository/").status_code == 200
    change = client.get(f"/admin/borgapp/repository/{repo.pk}/change/").content.decode()
    assert 'name="_save"' not in change  # read-only for a viewer
    assert "Back up now" not in change and "Break lock" not in change  # no operation shown
    archive_page = client.get(f"/admin/borgapp/archive/{archive.pk}/change/").content.decode()
    assert "Browse contents" in archive_page and "Extract" not in archive_page
    for url in (
        f"/admin/borgapp/repository/{repo.pk}/backup/",
        f"/admin/borgapp/repository/{repo.pk}/prune/",
        f"/admin/borgapp/repository/{repo.pk}/break-lock/",
        f"/admin/borgapp/repository/{repo.pk}/key-export/",
        f"/admin/borgapp/archive/{archive.pk}/extract/",
        f"/admin/borgapp/archive/{archive.pk}/delete-archive/",
    ):
        assert client.get(url).status_code == 403, url
        assert client.post(url, {"sources": "/etc"}).status_code == 403, url
    assert not Job.objects.exists()


def test_an_operator_runs_jobs_but_cannot_configure(client, roots):
    repo = Repository.objects.create(name="main", location=str(roots.repos / "m"), state="ready")
    client.force_login(staff("operator"))
    assert client.post(f"/admin/borgapp/repository/{repo.pk}/compact/").status_code == 302
    assert Job.objects.get().kind == "compact"
    assert client.get(f"/admin/borgapp/repository/{repo.pk}/break-lock/").status_code == 403
    assert client.get("/admin/borgapp/repository/add/").status_code == 403


def test_bad_input_in_a_form_names_the_problem_and_queues_nothing(admin_client, roots):
    repo = Repository.objects.create(name="main", location=str(roots.repos / "m"), state="ready")
    archive = Archive.objects.create(repository=repo, name="a1", borg_id="1" * 64)
    page = admin_client.post(
        f"/admin/borgapp/archive/{archive.pk}/extract/",
        {"target": "/etc/evil", "paths": "", "strip_components": 0},
        follow=True,
    )
    assert any("Target" in m and "allowed" in m for m in messages_of(page)), messages_of(page)
    page = admin_client.post(f"/admin/borgapp/repository/{repo.pk}/backup/", {"prefix": "x"})
    assert "Choose a backup schedule or give at least one source" in page.content.decode()
    bad_repo = admin_client.post(
        "/admin/borgapp/repository/add/",
        {"setup": "init", "name": "x", "location": "/etc/x", "encryption": "repokey-blake2",
         "passphrase": "p"},
    )  # fmt: skip
    assert bad_repo.status_code == 200 and "location" in bad_repo.content.decode().lower()
    assert not Job.objects.exists()
    assert not Repository.objects.filter(name="x").exists()


def test_health_colours_their_reasons_and_the_size_chart(admin_client, roots):
    from datetime import timedelta

    from django.utils import timezone

    from borgapp import health

    now = timezone.now()
    fresh = Repository.objects.create(name="fresh", location=str(roots.repos / "f"), state="ready")
    stale = Repository.objects.create(name="stale", location=str(roots.repos / "s"), state="ready")
    broken = Repository.objects.create(
        name="broken", location=str(roots.repos / "b"), state="ready"
    )
    Repository.objects.create(name="empty", location=str(roots.repos / "e"), state="ready")
    for repo, age in ((fresh, 2), (stale, 30), (broken, 1)):
        for day in range(3):
            Archive.objects.create(
                repository=repo, name=f"n-{day}", borg_id=f"{repo.pk}{day}".ljust(64, "0"),
                start=now - timedelta(hours=age, days=day), deduplicated_size=1000 * (day + 1),
            )  # fmt: skip
    Job.objects.create(kind="backup", repository=broken, repository_name="broken",
                       trigger="schedule", status="failed", finished_at=now)  # fmt: skip
    Job.objects.create(kind="check", repository=fresh, repository_name="fresh",
                       trigger="schedule", status="skipped", finished_at=now)  # fmt: skip
    rows = {row.repository.name: row for row in health.repositories()}
    assert rows["fresh"].colour == "green" and rows["fresh"].reasons == ["last backup 2 h ago"]
    assert (
        rows["stale"].colour == "red" and "last backup 30 h ago: overdue" in rows["stale"].reasons
    )
    assert rows["broken"].colour == "red" and "last job (Backup) failed" in rows["broken"].reasons
    assert rows["empty"].colour == "red" and rows["empty"].reasons == ["no backup yet"]
    # the worst reasons first: a cut line on the dashboard shows what matters most
    Repository.objects.create(name="new", location=str(roots.repos / "n"), catalog_stale=True)
    new = next(row for row in health.repositories() if row.repository.name == "new")
    assert new.reasons[0] == "no backup yet" and len(new.reasons) == 3
    assert new.reasons[1:] == [
        "not initialized or imported yet",
        "catalog may lag borg (a sync is due)",
    ]
    series = health.size_series([fresh.pk])[fresh.pk]
    assert [size for _, size in series] == [3000, 5000, 6000]  # running sum, oldest first
    page = admin_client.get("/admin/").content.decode()
    assert page.count("<polyline") == 3  # one chart per repository with archives
    assert 'data-health="red"' in page and "no backup yet" in page


def test_a_schedule_is_edited_as_lines_and_validated(admin_client, roots, tmp_path):
    repo = Repository.objects.create(name="main", location=str(roots.repos / "m"), state="ready")
    src = write_files(tmp_path / "src", {"a.txt": "alpha"})
    form = {
        "name": "nightly", "repositories": [repo.pk], "operation": "backup", "enabled": "on",
        "cron": "0 2 * * *", "timezone": "Europe/Berlin",
        "source_paths": f"{src}\n\n  {tmp_path}/other  \n",
        "exclude_patterns": "sh:**/*.tmp\npp:/home/cache\n",
        "archive_prefix": "nightly", "compression": "lz4", "comment": "",
        "compact_after_prune": "on", "check_scope": "both",
        "sample_files": 20, "sample_max_bytes": 1000,
    }  # fmt: skip
    saved = admin_client.post("/admin/borgapp/schedule/add/", form, follow=True)
    assert saved.status_code == 200
    from borgapp.models import Schedule

    schedule = Schedule.objects.get(name="nightly")
    assert schedule.source_paths == [str(src), f"{tmp_path}/other"]
    assert schedule.exclude_patterns == ["sh:**/*.tmp", "pp:/home/cache"]
    page = admin_client.get(f"/admin/borgapp/schedule/{schedule.pk}/change/").content.decode()
    assert f"{src}\n{tmp_path}/other</textarea>" in page  # shown back one per line, not as JSON
    assert ">At 02:00" in page  # the cron described for a person
    # bad input names the field and changes nothing
    bad = admin_client.post(
        f"/admin/borgapp/schedule/{schedule.pk}/change/",
        {**form, "source_paths": "relative/path", "cron": "61 * * * *"},
    )
    assert bad.status_code == 200
    errors = bad.context["adminform"].form.errors
    assert set(errors) >= {"source_paths", "cron"}, errors
    schedule.refresh_from_db()
    assert schedule.source_paths == [str(src), f"{tmp_path}/other"] and schedule.cron == "0 2 * * *"


def test_the_cron_preview_explains_and_lists_the_next_runs(admin_client):
    url = "/admin/borgapp/schedule/cron-preview/"
    good = admin_client.get(url, {"cron": "30 1 * * 1", "timezone": "America/New_York"}).json()
    assert good["ok"] and good["description"] == "At 01:30, only on Monday"
    assert len(good["next"]) == 5
    assert all(run.endswith(("EST", "EDT")) and " 01:30 " in run for run in good["next"])
    bad = admin_client.get(url, {"cron": "0 25 * * *"}).json()
    assert bad["ok"] is False and "25" in bad["error"]
    never = admin_client.get(url, {"cron": "0 0 30 2 *"}).json()
    assert never["ok"] is False and "never matches" in never["error"]
    zone = admin_client.get(url, {"cron": "0 2 * * *", "timezone": "Mars/Base"}).json()
    assert zone == {"ok": False, "error": zone["error"]} and "Mars/Base" in zone["error"]
    from django.test import Client

    assert Client().get(url, {"cron": "0 2 * * *"}).status_code == 302  # signed-in staff only


def test_admin_sign_in_is_throttled_with_a_counter_every_web_process_shares(
    client, roots, monkeypatch
):
    from borgapp.models import AuditEvent

    ann = User.objects.create_user("ann", password="right-password-1", is_staff=True)
    ann.groups.add(Group.objects.get(name="viewer"))  # staff in no group open nothing
    for _ in range(5):
        client.post("/admin/login/", {"username": "ann", "password": "wrong"})
    # five more failures counted by another process, as another gunicorn worker would
    counted = manage(
        ["shell", "-c",
         "from borgapp import throttle\n"
         "for _ in range(5): throttle.note_login_failure('127.0.0.1', 'ann')"],
        roots.env,
    )  # fmt: skip
    assert counted.returncode == 0, counted.stderr
    page = client.post("/admin/login/", {"username": "ann", "password": "right-password-1"})
    assert page.status_code == 200
    assert "Too many failed sign-in attempts" in page.content.decode()
    assert client.get("/admin/").status_code == 302  # not signed in
    refused = AuditEvent.objects.filter(action="sign_in", outcome="refused").get()
    assert (refused.actor, refused.client_address) == ("ann", "127.0.0.1")
    from borgapp import throttle

    now = throttle.clock()
    monkeypatch.setattr(throttle, "clock", lambda: now + 30)  # half a minute on: still refused
    still = client.post("/admin/login/", {"username": "ann", "password": "right-password-1"})
    assert "Too many failed sign-in attempts" in still.content.decode()
    monkeypatch.setattr(throttle, "clock", lambda: now + 61)  # the minute is over
    signed_in = client.post("/admin/login/", {"username": "ann", "password": "right-password-1"})
    assert signed_in.status_code == 302 and client.get("/admin/").status_code == 200


def test_the_root_opens_the_control_panel_and_no_page_links_to_a_missing_site(client):
    root = client.get("/")
    assert root.status_code == 302 and root["Location"] == "/admin/"
    client.force_login(staff("viewer"))
    page = client.get(client.get("/", follow=True).redirect_chain[-1][0]).content.decode()
    assert "Ops Center" in page and "View site" not in page


def test_a_finished_job_page_says_what_happened_and_links_what_comes_next(repo, tmp_path, client):
    src = write_files(tmp_path / "src", {"a.txt": "alpha", "b/c.txt": "charlie" * 1000})
    assert cli("borg_backup", "main", "--source", src, "--prefix", "docs").code == 0
    (src / "new.txt").write_text("new")
    time.sleep(1.1)  # archive names carry the second
    assert cli("borg_backup", "main", "--source", src, "--prefix", "docs").code == 0
    first, second = Archive.objects.order_by("start")
    job = Job.objects.filter(kind="backup").latest("pk")
    client.force_login(staff("viewer"))
    page = client.get(f"/admin/borgapp/job/{job.pk}/change/").content.decode()
    summary = re.search(r'<p id="job-summary"[^>]*>([^<]+)</p>', page)[1]
    nfiles = job.result["nfiles"]
    assert summary.startswith(f"Backed up {nfiles} files (") and second.name in summary
    assert re.search(r"\(\d+(\.\d)? kB\)", summary)  # a size with its unit
    links = dict(re.findall(r'<a class="button" href="([^"]+)">([^<]+)</a>', page))
    assert links[f"/admin/borgapp/archive/{second.pk}/change/"] == "Open the archive"
    assert links[f"/admin/borgapp/archive/{second.pk}/contents/"] == "Browse its files"
    assert links[f"/admin/borgapp/archive/{second.pk}/diff/?other={first.pk}"] == (
        "Compare with the previous archive"
    )
    assert "{'" not in page and "job-bar" not in page  # no Python dict, no empty bar
    assert re.search(r"<th>Created</th><td>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC</td>", page)
    assert f"<th>Files</th><td>{nfiles}</td>" in page  # the final count, from the result


def test_a_refused_registration_keeps_the_form_with_the_error_on_its_field(admin_client, roots):
    form = {"setup": "init", "name": "main", "location": str(roots.repos / "main"),
            "encryption": "repokey-blake2", "passphrase": ""}  # fmt: skip
    page = admin_client.post("/admin/borgapp/repository/add/", form)
    assert page.status_code == 200  # the form again, not a redirect that forgets it
    errors = page.context["adminform"].form.errors
    assert errors == {"passphrase": ["A passphrase is required for an encrypted repository."]}
    html = page.content.decode()
    assert f'value="{roots.repos / "main"}"' in html and 'value="main"' in html
    outside = admin_client.post(
        "/admin/borgapp/repository/add/", {**form, "location": "/etc/x", "passphrase": "p" * 12}
    )
    said = outside.content.decode().count("is not under an allowed root")
    assert said == 1  # once, not from the field and again from the model's clean
    assert not Repository.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_importing_with_a_wrong_passphrase_says_so_on_the_form(client, roots, passfile, cluster,
                                                                settings):  # fmt: skip
    settings.ADMIN_REGISTER_WAIT = 60  # the worker answers within it
    made = cli("borg_init", "old", "--location", roots.repos / "old", "--passphrase-file", passfile)
    assert made.code == 0, made.err
    Repository.objects.filter(name="old").delete()  # known to borg, not to the app
    client.force_login(User.objects.create_superuser("boss", password="boss-password-123"))
    page = client.post("/admin/borgapp/repository/add/", {
        "setup": "import", "name": "found", "location": str(roots.repos / "old"),
        "encryption": "repokey-blake2", "passphrase": "not the passphrase",
    })  # fmt: skip
    assert page.status_code == 200
    [error] = page.context["adminform"].form.errors["passphrase"]
    assert error.startswith("Import failed:") and "passphrase" in error
    assert "added successfully" not in page.content.decode()
    assert not Repository.objects.filter(name="found").exists()
    right = client.post("/admin/borgapp/repository/add/", {
        "setup": "import", "name": "found", "location": str(roots.repos / "old"),
        "encryption": "repokey-blake2", "passphrase": PASSPHRASE,
    }, follow=True)  # fmt: skip
    assert any("Import of repository found done in" in m for m in messages_of(right))
    assert Repository.objects.get(name="found").state == "ready"


def test_help_texts_show_their_words(admin_client):
    """Django's admin renders help text as HTML: "<prefix>" vanished as an unknown tag."""
    for url in ("/admin/borgapp/schedule/add/",):
        page = admin_client.get(url).content.decode()
        assert "Archives are named PREFIX-TIME in UTC" in page
    for field in Schedule._meta.fields:
        assert "<" not in str(field.help_text), field.name


def test_a_running_backup_is_judged_by_the_previous_archive_of_its_set(client, tmp_path):
    repo = Repository.objects.create(name="r", location=str(tmp_path / "r"), state="ready")
    running = Job.objects.create(kind="backup", repository=repo, repository_name="r",
                                 trigger="admin", status="running", params={"prefix": "docs"},
                                 progress_bytes=5_000_000)  # fmt: skip
    client.force_login(staff("viewer"))
    page = client.get(f"/admin/borgapp/job/{running.pk}/change/").content.decode()
    assert "data-expected-bytes" not in page
    assert '<div id="job-progress" hidden>' in page  # nothing to measure by: no bar
    Archive.objects.create(repository=repo, name="docs-2026-12-01T02:00:00Z", borg_id="1" * 64,
                           start=timezone.now(), original_size=20_000_000)  # fmt: skip
    Archive.objects.create(repository=repo, name="docs-old-2026-12-02T02:00:00Z", borg_id="2" * 64,
                           start=timezone.now(), original_size=1)  # fmt: skip
    page = client.get(f"/admin/borgapp/job/{running.pk}/change/").content.decode()
    assert 'data-expected-bytes="20000000"' in page  # the set's own, not another set's


def test_an_extract_links_to_the_folder_it_restored(client, repo, roots, tmp_path):
    """The job page's next step after a restore opens the restored folder; the page reads the
    disk one folder at a time and never follows a link planted inside it."""
    src = write_files(tmp_path / "src", {"docs/report.txt": "x" * 2500, "top.txt": "t"})
    (src / os.fsdecode(b"caf\xe9.txt")).write_text("latin-1 name")  # not UTF-8
    backed = cli("borg_backup", "main", "--source", src, "--prefix", "docs", "--json")
    name = json.loads(backed.out)["result"]["archive_name"]
    target = roots.restore / "r1"
    assert cli("borg_extract", "main", name, "--target", target).code == 0
    job = Job.objects.get(kind="extract")
    client.force_login(staff("viewer"))
    page = client.get(f"/admin/borgapp/job/{job.pk}/change/").content.decode()
    url = f"/admin/borgapp/job/{job.pk}/restored/"
    assert f'href="{url}"' in page and "Open the restored folder" in page

    top = client.get(url)
    assert top.status_code == 200 and str(target) in top.content.decode()
    inner = str(src).lstrip("/")
    folder = client.get(url, {"path": inner}).content.decode()
    assert "report.txt" not in folder and f'?path={inner}/docs"' in folder
    assert "caf\ufffd.txt" in folder  # shown, not a server error
    docs = client.get(url, {"path": f"{inner}/docs"}).content.decode()
    assert "report.txt" in docs and "2.5 kB" in docs

    # a symbolic link to /etc planted in the restored folder is shown, never followed
    (target / "etc-link").symlink_to("/etc")
    linked = client.get(url, {"path": "etc-link"}).content.decode()
    assert "a symbolic link, not followed" in linked and "passwd" not in linked
    assert "(symbolic link)" in client.get(url).content.decode()
    climbed = client.get(url, {"path": "../../.."}).content.decode()
    assert "must not contain" in climbed and "passwd" not in climbed

    # a job that restored nothing has no such page; a user in no group gets nothing
    backup_job = Job.objects.get(kind="backup")
    assert client.get(f"/admin/borgapp/job/{backup_job.pk}/restored/").status_code == 404
    client.force_login(staff(None))
    refused = client.get(url)
    assert refused.status_code == 302 and refused.url.startswith("/admin/login/")


def test_a_repository_delete_page_counts_its_file_index_instead_of_reading_it(client, roots):
    """The page before a delete lists what goes with the object. A repository's index
    versions (millions, in a real one) are counted in one line, never read row by row: the
    page costs the same whatever their number. Confirmed, they go with the repository."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from borgapp.models import IndexChain, IndexOwner, IndexSpan, IndexVersion

    repo = Repository.objects.create(name="main", location=str(roots.repos / "main"),
                                     state="ready")  # fmt: skip
    chain = IndexChain.objects.create(repository=repo, key="set", last_seq=1)
    owner = IndexOwner.objects.create(user="root", group="root")
    IndexSpan.objects.create(start=1, folder=0, count=50, names=b"")
    for number in range(1, 51):
        IndexVersion.objects.create(node_id=number, chain=chain, first=1, type="-", owner=owner)
    client.force_login(staff("admin"))
    url = f"/admin/borgapp/repository/{repo.pk}/delete/"
    with CaptureQueriesContext(connection) as queries:
        page = client.get(url)
    assert page.status_code == 200
    text = page.content.decode()
    assert "Index versions: 50 (counted, not listed)" in text and "IndexVersion object" not in text
    assert ">main</a>" in text  # the repository itself, as Django lists it
    read = [query["sql"] for query in queries if "borgapp_indexversion" in query["sql"]]
    assert read and all("COUNT(" in sql.upper() for sql in read)
    # with archives too, nothing of the index is read
    Archive.objects.create(repository=repo, name="docs-1", borg_id="a" * 64)
    with CaptureQueriesContext(connection) as queries:
        assert client.get(url).status_code == 200
    read = [query["sql"] for query in queries if "borgapp_indexversion" in query["sql"]]
    assert read and all("COUNT(" in sql.upper() for sql in read)
    assert client.post(url, {"post": "yes"}).status_code == 302
    assert not Repository.objects.exists() and not IndexVersion.objects.exists()
    assert not IndexChain.objects.exists() and IndexSpan.objects.count() == 1  # paths: shared
    assert not Archive.objects.exists()


def test_the_admin_forgets_a_repository_with_archives_as_the_api_does_but_not_a_busy_one(
    client, tmp_path
):
    """Deleting a repository forgets its registration and the app's records of its
    archives; borg's repository stays on disk. An archive's row may not be deleted alone
    (that runs borg delete), but it goes with its repository: the page once refused for that
    reason while the API's DELETE went through. A repository a job holds is refused by both,
    and the refusal links to that job."""
    target = tmp_path / "main"
    target.mkdir()
    (target / "config").write_text("borg's own files")
    repo = Repository.objects.create(name="main", location=str(target), state="ready")
    Archive.objects.create(repository=repo, name="docs-1", borg_id="a" * 64)
    url = f"/admin/borgapp/repository/{repo.pk}/delete/"

    client.force_login(staff("operator"))  # deleting registrations is the admin's
    assert client.get(url).status_code == 403

    client.force_login(staff("admin"))
    job = Job.objects.create(kind="backup", repository=repo, repository_name="main",
                             trigger="admin", status="running")  # fmt: skip
    Repository.objects.filter(pk=repo.pk).update(lease_job=job)
    page = client.get(url).content.decode()
    assert "cannot be deleted now" in page and "main is busy" in page
    assert f'href="/admin/borgapp/job/{job.pk}/change/"' in page and "Yes, I’m sure" not in page
    client.post(url, {"post": "yes"})
    bulk = {"action": "delete_selected", "_selected_action": [repo.pk], "post": "yes"}
    assert "main is busy" in client.post("/admin/borgapp/repository/", bulk).content.decode()
    assert Repository.objects.filter(pk=repo.pk).exists() and Archive.objects.count() == 1

    job.status = "succeeded"
    job.save()
    Repository.objects.filter(pk=repo.pk).update(lease_job=None)
    page = client.get(url).content.decode()
    assert "your account doesn" not in page and "Yes, I’m sure" in page
    assert f"<code>{target}</code> and its archives stay where they are" in page
    assert client.post(url, {"post": "yes"}).status_code == 302
    assert not Repository.objects.exists() and not Archive.objects.exists()
    assert (target / "config").read_text() == "borg's own files"
    assert Job.objects.get(pk=job.pk).repository_name == "main"  # history keeps its name
