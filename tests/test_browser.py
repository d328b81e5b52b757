"""The admin in a real browser (Playwright driving Debian's Chromium) against the app as
`make run` serves it (gunicorn) with a real worker (django-q2) and real borg."""

import os
import time
from pathlib import Path

import pytest
from django.contrib.auth.models import Group, User

from borgapp.models import Archive, Job, Repository, RetentionPolicy
from tests.helpers import PASSPHRASE, ROOT, write_files

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]
CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(os.environ.get("OPSCENTER_TEST_ARTIFACTS", ROOT / "test-artifacts"))
WAIT = 120_000  # ms

# Playwright's sync API runs an event loop in this thread; the test's own ORM reads are plain
# synchronous calls between browser steps.
os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")


@pytest.fixture(scope="session")
def browser_type_launch_args(browser_type_launch_args):
    if not Path(CHROMIUM).exists():
        pytest.fail("Debian's chromium is missing: `make test` installs it")
    return {**browser_type_launch_args, "executable_path": CHROMIUM, "args": ["--no-sandbox"]}


def login(page, url, username, password):
    page.goto(f"{url}/admin/login/")
    page.fill("#id_username", username)
    page.fill("#id_password", password)
    page.click("input[type=submit]")
    page.wait_for_url(f"{url}/admin/")


def wait_for_job(page, status="succeeded"):
    """On a job page: it updates itself (and reloads when the job ends)."""
    from playwright.sync_api import expect

    expect(page.locator("#job-status")).to_have_text(status, timeout=WAIT)


def open_job_from_message(page):
    page.locator(".messagelist a").first.click()
    page.wait_for_selector("#job-status")


def add_repository(page, url, roots, name="main"):
    """Add and initialize a repository with the admin's form; its message names the job."""
    from playwright.sync_api import expect

    page.goto(f"{url}/admin/borgapp/repository/add/")
    page.select_option("#id_setup", "init")
    page.fill("#id_name", name)
    page.fill("#id_location", str(roots.repos / name))
    page.fill("#id_passphrase", PASSPHRASE)
    page.click("input[name=_save]")
    expect(page.locator(".messagelist")).to_contain_text(f"Initialization of repository {name}")


def test_an_admin_backs_up_browses_restores_and_prunes(page, web_server, cluster, roots, tmp_path):
    from playwright.sync_api import expect

    url, _ = web_server
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    User.objects.create_superuser("boss", password="boss-password-123")
    RetentionPolicy.objects.create(name="keep-none", keep_within="1H")
    login(page, url, "boss", "boss-password-123")

    # create and initialize a repository
    add_repository(page, url, roots)
    open_job_from_message(page)
    wait_for_job(page)

    # back up a folder with "back up now"; watch the job page reach success
    src = write_files(
        tmp_path / "src",
        {"docs/a.txt": "the bytes that come back", "big.bin": os.urandom(12_000_000)},
    )
    page.goto(f"{url}/admin/borgapp/repository/")
    page.get_by_role("link", name="main", exact=True).click()
    page.get_by_role("link", name="Back up now").click()
    page.fill("textarea[name=sources]", str(src))
    page.fill("input[name=prefix]", "web")
    page.fill("input[name=compression]", "lzma,6")  # slow enough to watch it run
    page.click("input[type=submit]")
    page.wait_for_selector("#job-status")
    expect(page.locator("#job-status")).to_have_text("running", timeout=WAIT)
    page.screenshot(path=str(ARTIFACTS / "job-running.png"), full_page=True)
    wait_for_job(page)
    expect(page.locator("#job-result")).to_contain_text("web-")

    # see the archive in the catalog, browse its contents
    archive = Archive.objects.get(repository__name="main")
    page.goto(f"{url}/admin/borgapp/archive/")
    page.get_by_role("link", name=archive.name, exact=True).click()
    page.get_by_role("link", name="Browse contents").click()
    # the page reads the file list by itself, says so, and opens the tree when it is read
    expect(page.locator("#contents")).to_be_visible(timeout=WAIT)
    folder = str(src).lstrip("/")
    page.goto(f"{url}/admin/borgapp/archive/{archive.pk}/contents/?path={folder}")
    page.get_by_role("link", name="docs/", exact=True).click()
    expect(page.locator("#contents")).to_contain_text("a.txt")

    # extract one file to a restore target and check its bytes on disk
    page.check(f"input[value='{folder}/docs/a.txt']")
    page.click("input[value='Extract selected…']")
    target = roots.restore / "from-browser"
    page.fill("input[name=target]", str(target))
    page.click("input[type=submit]")
    wait_for_job(page)
    restored = target / folder / "docs" / "a.txt"
    assert restored.read_bytes() == b"the bytes that come back"
    assert not (target / folder / "big.bin").exists()

    # prune with a preview, then confirm
    page.goto(f"{url}/admin/borgapp/repository/{archive.repository_id}/prune/")
    page.fill("input[name=prefix]", "web")
    page.select_option("select[name=policy]", "keep-none")
    page.click("input[type=submit]")
    wait_for_job(page)
    expect(page.locator("#prune-preview")).to_contain_text(archive.name)
    page.click("input[name=confirm]")
    wait_for_job(page)
    assert Archive.objects.filter(repository__name="main").count() == 1  # keep-within 1H

    # the dashboard
    page.goto(f"{url}/admin/")
    expect(page.locator("tr.oc-repo")).to_have_attribute("data-health", "green")
    page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)


def test_a_viewer_cannot_see_the_actions(page, web_server, roots):
    url, _ = web_server

    repo = Repository.objects.create(name="main", location=str(roots.repos / "m"), state="ready")
    viewer = User.objects.create_user("watcher", password="watcher-password-1", is_staff=True)
    viewer.groups.add(Group.objects.get(name="viewer"))
    login(page, url, "watcher", "watcher-password-1")
    page.goto(f"{url}/admin/borgapp/repository/{repo.pk}/change/")
    assert page.get_by_role("link", name="Back up now").count() == 0
    assert page.locator("input[name=_save]").count() == 0
    response = page.goto(f"{url}/admin/borgapp/repository/{repo.pk}/backup/")
    assert response.status == 403


def test_the_schedule_form_explains_the_cron_while_it_is_typed(page, web_server):
    from playwright.sync_api import expect

    url, _ = web_server
    User.objects.create_superuser("planner", password="planner-password-1")
    login(page, url, "planner", "planner-password-1")
    page.goto(f"{url}/admin/borgapp/schedule/add/")
    page.fill("#id_timezone", "Europe/Berlin")
    page.fill("#id_cron", "15 3 * * 0")
    preview = page.locator("#cron-preview")
    expect(preview).to_contain_text("At 03:15, only on Sunday", timeout=WAIT)
    expect(preview).to_contain_text("Next runs:")
    assert preview.inner_text().count(" 03:15 CE") == 5  # five runs, in Berlin time
    page.fill("#id_cron", "15 3 * *")
    expect(preview).to_contain_text("needs five fields", timeout=WAIT)


# --- the first hour of a new admin, at the two widths people use ---------------------------

# Run in the page: what a person would notice. Lines are counted by the boxes of a text range.
LOOKS = """() => {
  const found = {sideways: document.documentElement.scrollWidth > window.innerWidth + 1,
                 clipped: [], broken: [], dashboard: null, tall: [], untitled: []};
  for (const box of document.querySelectorAll('#content *')) {  // boxes that cut or scroll
    const style = getComputedStyle(box);
    if (box.matches('.oc-clip')) {  // cut on purpose: the whole text must be its title
      if (box.title.trim() !== box.textContent.trim()) found.untitled.push(box.textContent);
      continue;
    }
    if (style.overflowX === 'visible' || box.closest('.visually-hidden, .selector')) continue;
    if (box.offsetParent !== null && box.scrollWidth > box.clientWidth + 1) {
      found.clipped.push(box.id || box.className || box.tagName);
    }
  }
  const lines = el => {  // the most lines any one piece of text of `el` takes
    const walker = document.createTreeWalker(el, NodeFilter.SHOW_TEXT);
    let most = 0;
    for (let node = walker.nextNode(); node; node = walker.nextNode()) {
      if (!node.textContent.trim()) continue;
      const r = document.createRange(); r.selectNodeContents(node);
      most = Math.max(most, new Set([...r.getClientRects()].map(b => Math.round(b.top))).size);
    }
    return most;
  };
  for (const el of document.querySelectorAll('th, .oc-badge, #result_list td a')) {
    const text = el.textContent.trim();
    if (text && el.offsetParent !== null && lines(el) > 1) found.broken.push(text);
  }
  for (const cell of document.querySelectorAll('#dashboard tbody td')) {  // one line a row
    const tops = [], bottoms = [];
    const walker = document.createTreeWalker(cell, NodeFilter.SHOW_TEXT);
    for (let node = walker.nextNode(); node; node = walker.nextNode()) {
      if (!node.textContent.trim()) continue;
      const r = document.createRange(); r.selectNodeContents(node);
      for (const b of r.getClientRects()) { tops.push(b.top); bottoms.push(b.bottom); }
    }
    const size = parseFloat(getComputedStyle(cell).fontSize);
    if (tops.length && Math.max(...bottoms) - Math.min(...tops) > 2 * size) {
      found.tall.push(cell.textContent.trim().slice(0, 60));
    }
  }
  const table = document.querySelector('#dashboard table');
  const content = document.getElementById('content');
  if (table && content) {
    const style = getComputedStyle(content);
    const pad = parseFloat(style.paddingLeft) + parseFloat(style.paddingRight);
    const inner = content.clientWidth - pad;
    found.dashboard = table.getBoundingClientRect().width / inner;
  }
  return found;
}"""


def looks_right(page, name, width):
    """Screenshot (a test artifact to look at), then what a person would notice: nothing
    scrolls sideways or is cut off, no header, pill or listed name breaks across lines."""
    page.wait_for_load_state("networkidle")
    page.screenshot(path=str(ARTIFACTS / f"first-hour-{width}-{name}.png"), full_page=True)
    found = page.evaluate(LOOKS)
    assert not found["sideways"], f"{name} scrolls sideways at {width} px"
    assert found["clipped"] == [], f"{name} at {width} px: cut off: {found['clipped']}"
    assert found["broken"] == [], f"{name} at {width} px: broken inside: {found['broken']}"
    assert found["tall"] == [], f"{name} at {width} px: rows on two lines: {found['tall']}"
    assert found["untitled"] == [], f"{name} at {width} px: cut with no title: {found['untitled']}"
    return found


def back_up_now(page, url, source, prefix):
    """The dashboard's Back up now, its form, then the job page until the backup succeeds."""
    page.goto(f"{url}/admin/")
    page.get_by_role("link", name="Back up now").click()
    page.fill("textarea[name=sources]", str(source))
    page.fill("input[name=prefix]", prefix)
    page.click("input[type=submit]")
    wait_for_job(page)


@pytest.mark.parametrize("width", [1440, 1024])
def test_a_new_admins_first_hour(page, web_server, cluster, roots, tmp_path, width):
    from playwright.sync_api import expect

    url, _ = web_server
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.set_viewport_size({"width": width, "height": 900})
    User.objects.create_superuser("boss", password="boss-password-123")
    RetentionPolicy.objects.create(name="newest-only", keep_last=1)
    src = write_files(
        tmp_path / "srv" / "data" / "projects",  # three folders deep, none stored by borg
        {"report-2026.txt": "the bytes that come back", "site/index.html": "<h1>",
         "site/css/a.css": "a{}"},
    )  # fmt: skip
    login(page, url, "boss", "boss-password-123")
    looks_right(page, "dashboard-empty", width)

    # add and initialize a repository: the form waits for borg's answer
    add_repository(page, url, roots)
    looks_right(page, "repositories", width)

    # back up now, from the dashboard's button; the job page says what happened
    back_up_now(page, url, src, "files")
    expect(page.locator("#job-summary")).to_contain_text("Backed up")
    looks_right(page, "backup-job", width)

    # browse from the archive's root down to the file: the list is read by the page itself
    page.get_by_role("link", name="Browse its files").click()
    expect(page.locator("#contents")).to_be_visible(timeout=WAIT)
    looks_right(page, "contents-root", width)
    for _ in range(20):
        if page.locator("#contents").get_by_text("report-2026.txt").count():
            break
        folders = page.locator("#contents a")
        assert folders.count() >= 1, "a folder with nothing to open"
        folders.first.click()
    assert page.locator("#contents").get_by_text("report-2026.txt").count() == 1
    looks_right(page, "contents-leaf", width)

    # find it from the root with the filter box, tick it, extract it
    page.locator(".oc-path a").first.click()  # the archive's root, from the path line
    page.fill("input[name=q]", "report")
    page.click("input[value=Find]")
    expect(page.locator("#found-count")).to_contain_text("1 entry matching")
    page.locator("#contents input[type=checkbox]").first.check()
    page.click("input[value='Extract selected…']")
    target = roots.restore / "first-hour"
    page.fill("input[name=target]", str(target))
    page.click("input[type=submit]")
    wait_for_job(page)
    restored = target / str(src).lstrip("/") / "report-2026.txt"
    assert restored.read_bytes() == b"the bytes that come back"
    expect(page.locator("#job-summary")).to_contain_text("Restored 1 file of files-")
    looks_right(page, "extract-job", width)
    page.get_by_role("link", name="Open the restored folder").click()  # what is on the disk
    for _ in range(20):
        if page.locator("#restored").get_by_text("report-2026.txt").count():
            break
        page.locator("#restored a").first.click()
    expect(page.locator("#restored tr", has_text="report-2026.txt")).to_contain_text("24 B")
    looks_right(page, "restored", width)

    # a second backup after real changes, then the comparison, older to newer
    (src / "report-2026.txt").write_text("changed, and longer than before")
    write_files(src, {"added.txt": "new"})
    time.sleep(1.1)  # archive names carry the second
    back_up_now(page, url, src, "files")
    page.get_by_role("link", name="Compare with the previous archive").click()
    page.click("input[value='Compare now']")
    wait_for_job(page)
    page.get_by_role("link", name="See the comparison").click()
    expect(page.locator("#diff")).to_contain_text("added.txt")
    expect(page.locator("tr[data-change=added]")).to_contain_text("added.txt")
    looks_right(page, "diff", width)

    # a schedule: only the backup's fields, and the cron explained while typed
    page.goto(f"{url}/admin/borgapp/schedule/add/")
    page.fill("#id_name", "nightly")
    page.select_option("#id_repositories_from", label="main")
    page.click("#id_repositories_add")
    page.select_option("#id_operation", "backup")
    assert page.locator("fieldset.oc-op-check").is_hidden()
    page.fill("#id_cron", "15 3 * * *")
    expect(page.locator("#cron-preview")).to_contain_text("At 03:15", timeout=WAIT)
    page.fill("#id_source_paths", str(src))
    page.fill("#id_archive_prefix", "files")
    looks_right(page, "schedule-form", width)
    page.fill("#id_cron", "61 3 * * *")  # a typo: refused, and said once, not twice
    page.click("input[name=_save]")
    page.wait_for_selector(".errornote")
    page.wait_for_timeout(1000)  # the preview has had time to speak, if it were to
    assert page.locator("text=is not valid").count() == 1
    page.fill("#id_cron", "15 3 * * *")
    page.click("input[name=_save]")
    expect(page.locator(".messagelist")).to_contain_text("nightly")
    looks_right(page, "schedules", width)

    # prune: the preview first, then the confirmed prune
    repo_pk = Archive.objects.first().repository_id
    page.goto(f"{url}/admin/borgapp/repository/{repo_pk}/prune/")
    page.fill("input[name=prefix]", "files")
    page.select_option("select[name=policy]", "newest-only")
    page.click("input[type=submit]")
    wait_for_job(page)
    oldest = Archive.objects.order_by("start").first().name
    expect(page.locator("#prune-preview")).to_contain_text(f"remove {oldest}")
    looks_right(page, "prune-preview", width)
    page.click("input[name=confirm]")
    wait_for_job(page)
    assert Archive.objects.count() == 1

    # a notification channel and its test message (email goes nowhere by default: said so)
    page.goto(f"{url}/admin/borgapp/channel/add/")
    page.fill("#id_name", "ops-mail")
    page.select_option("#id_kind", "email")
    page.fill("#id_target", "ops@example.com")
    page.check("input[name=events][value=job_failed]")
    page.click("input[name=_save]")
    page.check("input[name=_selected_action]")
    page.select_option("select[name=action]", "send_test")
    page.click("button[name=index]")
    expect(page.locator(".messagelist")).to_contain_text("not sent anywhere")
    looks_right(page, "channels", width)

    # the dashboard: the whole width, one line a row, the repository green, its jobs listed;
    # beside it a repository with every reason to be red and a job with a long error
    troubled = Repository.objects.create(
        name="offsite-archive-of-the-accounting-department", location=str(roots.repos / "off"),
        state="new", catalog_stale=True,
    )  # fmt: skip
    long_error = "Connection closed by remote host. Is borg working on the server? " * 3
    Job.objects.create(kind="check", repository=troubled, repository_name=troubled.name,
                       trigger="schedule", status="failed", error_message=long_error)  # fmt: skip
    page.goto(f"{url}/admin/")
    expect(page.locator("tr.oc-repo[data-health=red]")).to_contain_text("no backup yet")
    expect(page.locator("tr.oc-repo").first).to_have_attribute("data-health", "green")
    found = looks_right(page, "dashboard", width)
    assert found["dashboard"] >= 0.9, f"the dashboard table spans {found['dashboard']:.0%}"
    for path in ("/admin/borgapp/job/", "/admin/borgapp/archive/", "/admin/borgapp/alert/",
                 "/admin/borgapp/auditevent/"):  # fmt: skip
        page.goto(url + path)
        looks_right(page, path.strip("/").replace("/", "-"), width)


@pytest.mark.parametrize("width", [1440, 1024])
def test_database_and_hook_pages_look_finished(page, web_server, roots, tmp_path, width):
    """The pages issue 13 added, as an admin sees them: a database source, a schedule with
    hooks, a backup job with its hooks' lines and a dump, an archive's restore page."""
    import sqlite3

    from playwright.sync_api import expect

    from borgapp.models import DatabaseSource, Schedule
    from tests.helpers import cli

    url, _ = web_server
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.set_viewport_size({"width": width, "height": 900})
    User.objects.create_superuser("boss", password="boss-password-123")
    db = tmp_path / "crm.sqlite"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE people (name TEXT)")
    source = DatabaseSource.objects.create(name="crm", kind="sqlite", path=str(db))
    passfile = write_files(tmp_path / "secret", {"pw": PASSPHRASE}) / "pw"
    made = cli(
        "borg_init", "main", "--location", roots.repos / "main", "--passphrase-file", passfile
    )
    assert made.code == 0, made.err
    src = write_files(tmp_path / "src", {"a.txt": "a"})
    schedule = Schedule(name="nightly", operation="backup", cron="0 2 * * *",
                        source_paths=[str(src)], archive_prefix="nightly",
                        hooks_before=["echo 'stopping the crm container'"],
                        hooks_always_after=["echo started again"])  # fmt: skip
    schedule.full_clean()
    schedule.save()
    schedule.repositories.set(Repository.objects.filter(name="main"))
    schedule.databases.set([source])
    assert cli("borg_schedule", "run", "nightly").code == 0
    job = Job.objects.filter(kind="backup").latest("pk")
    archive = Archive.objects.get(name=job.result["archive_name"])

    login(page, url, "boss", "boss-password-123")
    page.goto(f"{url}/admin/borgapp/databasesource/add/")
    looks_right(page, "database-add", width)
    page.goto(f"{url}/admin/borgapp/databasesource/")
    expect(page.locator("#result_list")).to_contain_text(str(db))
    looks_right(page, "databases", width)
    page.goto(f"{url}/admin/borgapp/schedule/{schedule.pk}/change/")
    expect(page.locator("#id_hooks_before")).to_have_value("echo 'stopping the crm container'")
    looks_right(page, "schedule-hooks", width)
    page.goto(f"{url}/admin/borgapp/job/{job.pk}/change/")
    expect(page.locator("#job-summary")).to_contain_text("with 1 database dumped in")
    expect(page.locator("#job-hooks")).to_contain_text("stopping the crm container")
    looks_right(page, "job-with-hooks", width)
    page.goto(f"{url}/admin/borgapp/archive/{archive.pk}/restore-database/")
    expect(page.locator("select[name=database]")).to_contain_text("crm/main")
    looks_right(page, "restore-database", width)


@pytest.mark.parametrize("width", [1440, 1024])
def test_downloads_and_a_restore_in_place_from_the_tree(
    page, web_server, cluster, roots, tmp_path, width
):
    """Issue 14 in Chromium: a file and a folder downloaded from the archive's tree equal
    what was backed up; a selection restored in place, preview first, then confirmed."""
    import io
    import tarfile

    from playwright.sync_api import expect

    from tests.helpers import cli

    url, _ = web_server
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.set_viewport_size({"width": width, "height": 900})
    User.objects.create_superuser("boss", password="boss-password-123")
    live = write_files(
        roots.inplace / "srv" / "www",
        {"index.html": "<h1>home</h1>", "img/logo.svg": "<svg/>", "img/photo.jpg": "jpeg"},
    )
    passfile = write_files(tmp_path / "secret", {"pw": PASSPHRASE}) / "pw"
    assert cli("borg_init", "main", "--location", roots.repos / "main",
               "--passphrase-file", passfile).code == 0  # fmt: skip
    assert cli("borg_backup", "main", "--source", live, "--prefix", "www").code == 0
    archive = Archive.objects.get()
    assert cli("borg_contents", "main", archive.name).code == 0
    (live / "index.html").write_text("<h1>defaced</h1>")
    (live / "img" / "photo.jpg").unlink()

    login(page, url, "boss", "boss-password-123")
    # no recovery kit yet: the dashboard says so and links to the page that exports one
    expect(page.locator("#recovery-kit-reminder")).to_contain_text("1 repository is in no")
    looks_right(page, "dashboard-kit-reminder", width)
    page.locator("#recovery-kit-reminder a").click()
    expect(page.locator("input[name=again]")).to_be_visible()
    looks_right(page, "recovery-kit", width)
    folder = str(live).lstrip("/")
    page.goto(f"{url}/admin/borgapp/archive/{archive.pk}/contents/?path={folder}")
    expect(page.locator("#contents")).to_contain_text("index.html")
    looks_right(page, "tree-with-downloads", width)

    row = page.locator("#contents tr", has_text="index.html")
    with page.expect_download() as file_download:
        row.get_by_role("link", name="file").click()
    got = file_download.value
    assert got.suggested_filename == "index.html"
    assert Path(got.path()).read_bytes() == b"<h1>home</h1>"

    with page.expect_download() as folder_download:
        page.locator("#contents tr", has_text="img/").get_by_role("link", name=".tar.gz").click()
    got = folder_download.value
    assert got.suggested_filename == f"{archive.name.replace(':', '-')}-img.tar.gz"
    with tarfile.open(fileobj=io.BytesIO(Path(got.path()).read_bytes()), mode="r:gz") as tar:
        assert tar.extractfile(f"{folder}/img/photo.jpg").read() == b"jpeg"
    downloads = Job.objects.filter(kind="download")
    assert downloads.count() == 2
    assert {job.requested_by.username for job in downloads} == {"boss"}

    # tick two entries, restore them in place: preview, then confirm
    page.locator("#contents tr", has_text="index.html").locator("input[type=checkbox]").check()
    page.locator("#contents tr", has_text="img/").locator("input[type=checkbox]").check()
    page.click("#restore-selected")
    expect(page.locator("textarea[name=paths]")).to_have_value(f"{folder}/img\n{folder}/index.html")
    page.select_option("select[name=policy]", "if-different")
    looks_right(page, "restore-form", width)
    page.click("input[type=submit]")
    wait_for_job(page)
    expect(page.locator("#job-summary")).to_contain_text("would be 1 created, 1 replaced")
    expect(page.locator("#restore-report tr[data-category=created]")).to_contain_text("1")
    looks_right(page, "restore-preview", width)
    assert (live / "index.html").read_text() == "<h1>defaced</h1>"  # not yet
    page.click("#restore-confirm input[type=submit]")
    wait_for_job(page)
    expect(page.locator("#job-summary")).to_contain_text("Restored into /: 1 created, 1 replaced")
    looks_right(page, "restore-done", width)
    assert (live / "index.html").read_text() == "<h1>home</h1>"
    assert (live / "img" / "photo.jpg").read_text() == "jpeg"


@pytest.mark.parametrize("width", [1440, 1024])
def test_a_host_added_in_the_admin_and_its_agent_enrolled(page, web_server, roots, tmp_path,
                                                          width):  # fmt: skip
    """Issue 15 in Chromium: Add host shows the one-time token and the commands to run on the
    host; an agent enrolled with them shows up active with its borg version; the host's page
    gives the append-only line for an ssh repository; the token is never shown again."""
    import subprocess
    import sys

    from playwright.sync_api import expect

    from borgapp.models import Host
    from tests.test_fleet import agent_env

    url, _ = web_server
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.set_viewport_size({"width": width, "height": 900})
    User.objects.create_superuser("boss", password="boss-password-123")
    Repository.objects.create(name="offsite", location="ssh://backup@vault.example:22/./web1",
                              state="ready")  # fmt: skip
    login(page, url, "boss", "boss-password-123")
    page.goto(f"{url}/admin/borgapp/host/add/")
    page.fill("input[name=name]", "web1")
    page.click("input[name=_save]")
    token = page.locator("#host-token").inner_text().strip()
    expect(page.locator("#host-enroll")).to_contain_text(f"echo '{token}' | python3 -m agent")
    looks_right(page, "host-token", width)
    enrolled = subprocess.run(
        [sys.executable, "-m", "agent", "enroll", "--center", url, "--data", tmp_path / "agent"],
        input=token + "\n", env=agent_env(), cwd=ROOT, capture_output=True, text=True,
        timeout=60,
    )  # fmt: skip
    assert enrolled.returncode == 0, enrolled.stderr
    page.goto(f"{url}/admin/borgapp/host/")
    row = page.locator("#result_list tr", has_text="web1")
    expect(row).to_contain_text("Active")
    expect(row).to_contain_text("1.4.5")
    looks_right(page, "hosts", width)
    row.get_by_role("link", name="web1").click()
    expect(page.locator(".field-append_only_lines")).to_contain_text(
        'command="borg serve --append-only --restrict-to-repository web1",restrict ssh-ed25519'
    )
    assert token not in page.content()
    looks_right(page, "host", width)
    assert Host.objects.get(name="web1").state == "active"

    # with an active host, the pages that run a host's jobs offer it, and a database source
    # can be placed on it
    archive = Archive.objects.create(repository=Repository.objects.get(name="offsite"),
                                     name="www-2026-12-01T02:00:00", borg_id="b" * 64)  # fmt: skip
    page.goto(f"{url}/admin/borgapp/archive/{archive.pk}/download/")
    expect(page.locator("select[name=host]")).to_contain_text("web1")
    looks_right(page, "download-host", width)
    page.goto(f"{url}/admin/borgapp/databasesource/add/")
    expect(page.locator("select[name=agent_host]")).to_contain_text("web1")
    page.select_option("select[name=kind]", "sqlite")
    page.fill("input[name=name]", "web1-app")
    page.fill("input[name=path]", "/srv/app/app.sqlite")
    page.select_option("select[name=agent_host]", label="web1")
    looks_right(page, "database-add-host", width)
    page.click("input[name=_save]")
    expect(page.locator("#result_list tr", has_text="web1-app")).to_contain_text(
        "web1: /srv/app/app.sqlite"
    )
    looks_right(page, "databases-on-hosts", width)


@pytest.mark.parametrize("width", [1440, 1024])
def test_a_file_found_from_the_dashboard_and_its_history(page, file_index, web_server, roots,
                                                         tmp_path, width):  # fmt: skip
    """Issue 16 in Chromium: the dashboard's search box finds a file in every archive; its
    history shows each version with the archives holding it and the next steps (download,
    extract, restore) as links; a lagging index says so."""
    from playwright.sync_api import expect

    from tests.helpers import cli
    from tests.test_file_index import run_index_jobs

    url, _ = web_server
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.set_viewport_size({"width": width, "height": 900})
    User.objects.create_superuser("boss", password="boss-password-123")
    src = write_files(tmp_path / "src", {
        "home/ann/reports/2025/invoice-2025-03.pdf": "pdf" * 3000,
        "home/ann/reports/2025/invoice-2025-04.pdf": "pdf" * 4000,
        "srv/www/index.html": "<h1>home</h1>",
    })  # fmt: skip
    passfile = write_files(tmp_path / "secret", {"pw": PASSPHRASE}) / "pw"
    assert cli("borg_init", "main", "--location", roots.repos / "main",
               "--passphrase-file", passfile).code == 0  # fmt: skip
    assert cli("borg_backup", "main", "--source", src, "--prefix", "docs").code == 0
    (src / "home/ann/reports/2025/invoice-2025-03.pdf").write_text("pdf" * 3500)
    time.sleep(1.1)  # a second archive name
    assert cli("borg_backup", "main", "--source", src, "--prefix", "docs").code == 0
    run_index_jobs()

    login(page, url, "boss", "boss-password-123")
    page.fill("#dash-q", "invoice-2025")
    page.click("#dashboard-file-search input[type=submit]")
    expect(page.locator("#file-hits tr.oc-hit")).to_have_count(2)
    expect(page.locator("#index-status")).to_contain_text("Searching 2 indexed archives")
    expect(page.locator("#file-hits")).to_contain_text("9.0 kB")  # sizes have units
    looks_right(page, "file-search", width)
    page.locator("#file-hits tr", has_text="invoice-2025-03.pdf").get_by_role(
        "link", name="main"
    ).click()
    rows = page.locator("#file-history tr.oc-version")
    expect(rows).to_have_count(2)  # changed between the two backups
    expect(rows.nth(0)).to_contain_text("9.0 kB")
    expect(rows.nth(1)).to_contain_text("10.5 kB")
    download = rows.nth(1).get_by_role("link", name="Download")
    assert "invoice-2025-03.pdf" in download.get_attribute("href")
    expect(rows.nth(1).get_by_role("link", name="Restore in place…")).to_be_visible()
    looks_right(page, "file-history", width)

    # the two archives compared: from the index at once, no job, the sizes in units
    from borgapp.models import Archive

    older, newer = Archive.objects.order_by("start")
    page.goto(f"{url}/admin/borgapp/archive/{newer.pk}/diff/?other={older.pk}")
    expect(page.locator(".oc-diff-source")).to_contain_text("From the file index")
    changed = page.locator("#diff tr", has_text="invoice-2025-03.pdf")
    expect(changed).to_contain_text("Content changed")
    expect(changed).to_contain_text("9.0 kB → 10.5 kB")
    looks_right(page, "diff-from-index", width)

    # an unparsable glob is named, and a third archive not indexed yet is said to be missing
    page.goto(f"{url}/admin/files/?q=%5Binvoice")
    expect(page.locator("#search-error")).to_contain_text("never closes")
    assert cli("borg_backup", "main", "--source", src, "--prefix", "docs2").code == 0
    page.goto(f"{url}/admin/files/?q=invoice")
    expect(page.locator("#index-status")).to_contain_text("1 of 3 archives not indexed yet")
    looks_right(page, "file-search-lagging", width)


@pytest.mark.parametrize("width", [1440, 1024])
def test_deleting_a_repository_says_what_stays_and_why_not_now(page, web_server, roots, width):
    """The delete page of a repository with archives: refused while a job holds it (the job a
    link), then a confirmation that names what stays (borg's repository at its location) and
    what goes; confirmed, the registration is gone and the job's history keeps its name."""
    from playwright.sync_api import expect

    url, _ = web_server
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.set_viewport_size({"width": width, "height": 900})
    User.objects.create_superuser("boss", password="boss-password-123")
    repo = Repository.objects.create(name="main", location=str(roots.repos / "main"),
                                     state="ready")  # fmt: skip
    for day in range(1, 4):
        Archive.objects.create(repository=repo, name=f"docs-2026-12-0{day}T02:00:00Z",
                               borg_id=str(day) * 64)  # fmt: skip
    job = Job.objects.create(kind="backup", repository=repo, repository_name="main",
                             trigger="admin", status="running")  # fmt: skip
    Repository.objects.filter(pk=repo.pk).update(lease_job=job)
    login(page, url, "boss", "boss-password-123")

    page.goto(f"{url}/admin/borgapp/repository/{repo.pk}/delete/")
    expect(page.locator("#content")).to_contain_text("cannot be deleted now")
    assert page.get_by_role("button", name="Yes, I’m sure").count() == 0
    looks_right(page, "repository-delete-busy", width)
    page.locator("#deleted-objects a").click()
    expect(page.locator("#job-status")).to_have_text("running")
    page.goto(f"{url}/admin/")  # (a job page reloads itself when its job ends)

    Job.objects.filter(pk=job.pk).update(status="succeeded")
    Repository.objects.filter(pk=repo.pk).update(lease_job=None)
    page.goto(f"{url}/admin/borgapp/repository/{repo.pk}/delete/")
    expect(page.locator("#content")).to_contain_text(
        f"the borg repository at {roots.repos / 'main'} and its archives stay"
    )
    expect(page.locator("#deleted-objects")).to_contain_text("docs-2026-12-03T02:00:00Z")
    looks_right(page, "repository-delete", width)
    page.get_by_role("button", name="Yes, I’m sure").click()
    expect(page.locator(".messagelist")).to_contain_text("was deleted successfully")
    assert not Repository.objects.exists() and not Archive.objects.exists()
    assert Job.objects.get(pk=job.pk).repository_name == "main"
