"""The admin in a real browser (Playwright driving Debian's Chromium) against the app as
`make run` serves it (gunicorn) with a real worker (django-q2) and real borg."""

import os
from pathlib import Path

import pytest
from django.contrib.auth.models import Group, User

from borgapp.models import Archive, RetentionPolicy
from tests.conftest import PASSPHRASE, ROOT, write_files

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


def test_an_admin_backs_up_browses_restores_and_prunes(page, web_server, cluster, roots, tmp_path):
    from playwright.sync_api import expect

    url, _ = web_server
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    User.objects.create_superuser("boss", password="boss-password-123")
    RetentionPolicy.objects.create(name="keep-none", keep_within="1H")
    login(page, url, "boss", "boss-password-123")

    # create and initialize a repository
    page.goto(f"{url}/admin/borgapp/repository/add/")
    page.select_option("#id_setup", "init")
    page.fill("#id_name", "main")
    page.fill("#id_location", str(roots.repos / "main"))
    page.fill("#id_passphrase", PASSPHRASE)
    page.click("input[name=_save]")
    expect(page.locator(".messagelist")).to_contain_text("Initialization of repository main")
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
    page.click("input[value='Read the file list']")
    wait_for_job(page)
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
    from borgapp.models import Repository

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
