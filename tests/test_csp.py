"""The Content-Security-Policy and the self-hosted Swagger UI (issue 10, finding 13), in a real
browser (Playwright driving Debian's Chromium) against the app as `make run` serves it, with
every request to another host refused: the pages render from the app's own files and the
policy reports nothing."""

import os
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from django.contrib.auth.models import User
from django.utils import timezone

from borgapp.models import Job, Repository
from borgapp.security_headers import POLICY
from tests.helpers import ROOT

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]
CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(os.environ.get("OPSCENTER_TEST_ARTIFACTS", ROOT / "test-artifacts"))
WAIT = 60_000  # ms

os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")  # ORM calls between browser steps


@pytest.fixture(scope="session")
def browser_type_launch_args(browser_type_launch_args):
    if not Path(CHROMIUM).exists():
        pytest.fail("Debian's chromium is missing: `make test` installs it")
    return {**browser_type_launch_args, "executable_path": CHROMIUM, "args": ["--no-sandbox"]}


class Watch:
    """What a page tried to reach outside the app, and what the policy refused."""

    def __init__(self, page, app_url):
        self.app = urlsplit(app_url).netloc
        self.outside, self.violations, self.console = [], [], []
        page.context.route("**/*", self._route)
        page.expose_binding("reportViolation", lambda _source, text: self.violations.append(text))
        page.add_init_script(
            "document.addEventListener('securitypolicyviolation', e =>"
            " window.reportViolation(e.violatedDirective + ' ' + e.blockedURI));"
        )
        page.on("console", lambda message: self.console.append(message.text))
        page.on("pageerror", lambda error: self.console.append(f"page error: {error}"))

    def _route(self, route):
        parts = urlsplit(route.request.url)
        if parts.scheme in ("http", "https", "ws", "wss") and parts.netloc != self.app:
            self.outside.append(route.request.url)
            route.abort("blockedbyclient")
        else:
            route.continue_()

    def assert_clean(self):
        assert self.outside == [], f"requests that left the app: {self.outside}"
        assert self.violations == [], f"CSP violations: {self.violations}"
        refused = [text for text in self.console if "Content Security Policy" in text]
        assert refused == [], refused
        errors = [text for text in self.console if text.startswith("page error")]
        assert errors == [], errors


def policy_of(url):
    try:
        response = urllib.request.urlopen(url, timeout=10)
    except urllib.error.HTTPError as exc:
        response = exc
    return response.headers.get("Content-Security-Policy")


def test_the_policy_is_on_every_kind_of_answer(web_server):
    url, _ = web_server
    for path in (
        "/api/v1/",  # 401 from the API
        "/api/v1/backups/borg/archives",  # the guide's routes
        "/api/docs/",
        "/api/docs/?script=",
        "/api/schema/",
        "/admin/login/",
        "/admin/",  # a redirect to the login
        "/static/admin/css/base.css",  # whitenoise
        "/no-such-page",  # 404
        "/healthz",
    ):
        assert policy_of(f"{url}{path}") == POLICY, path
    for directive in ("frame-ancestors 'none'", "object-src 'none'", "base-uri 'self'"):
        assert directive in POLICY


def test_docs_admin_and_dashboard_render_with_nothing_from_outside(page, web_server, roots):
    from playwright.sync_api import expect

    url, _ = web_server
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    watch = Watch(page, url)

    response = page.goto(f"{url}/admin/login/")
    assert response.headers["content-security-policy"] == POLICY
    User.objects.create_superuser("boss", password="boss-password-123")
    page.fill("#id_username", "boss")
    page.fill("#id_password", "boss-password-123")
    page.click("input[type=submit]")
    page.wait_for_url(f"{url}/admin/")

    # the dashboard, with a running job's progress bar, and that job's page
    repo = Repository.objects.create(name="main", location=str(roots.repos / "m"), state="ready")
    now = timezone.now()
    job = Job.objects.create(
        kind=Job.Kind.BACKUP,
        repository=repo,
        repository_name="main",
        trigger="manual",
        status=Job.Status.RUNNING,
        progress_percent=40.0,
        started_at=now,
        heartbeat_at=now,
    )
    Repository.objects.filter(pk=repo.pk).update(lease_job=job)  # the job holds its lease
    response = page.goto(f"{url}/admin/")
    assert response.headers["content-security-policy"] == POLICY
    expect(page.locator("#dashboard")).to_be_visible()
    expect(page.locator("svg.oc-progress rect")).to_have_attribute("width", "40%")
    page.goto(f"{url}/admin/borgapp/job/{job.pk}/change/")
    expect(page.locator("#job-bar rect")).to_have_attribute("width", "40%")
    expect(page.locator("#job-elapsed")).to_contain_text(" s", timeout=WAIT)  # its script runs

    # the schedule form's cron preview (a script file now)
    page.goto(f"{url}/admin/borgapp/schedule/add/")
    page.fill("#id_cron", "15 3 * * 0")
    expect(page.locator("#cron-preview")).to_contain_text("Next runs:", timeout=WAIT)

    # Swagger UI, from the app's own files
    for width in (1440, 1024):
        page.set_viewport_size({"width": width, "height": 900})
        response = page.goto(f"{url}/api/docs/")
        assert response.headers["content-security-policy"] == POLICY
        expect(page.locator(".swagger-ui .opblock").first).to_be_visible(timeout=WAIT)
        expect(page.locator(".swagger-ui .info .title")).to_contain_text("Ops Center")
        assert page.locator(".swagger-ui .opblock").count() > 20
        page.screenshot(path=str(ARTIFACTS / f"api-docs-{width}.png"))

    watch.assert_clean()
