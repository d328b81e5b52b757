"""Issue 10, findings 8 and 11: the sign-in throttle stops guessing without locking out the
valid credentials of everyone at the same address, a same-host proxy that is not trusted is
noticed (and /metrics does not vouch for what it forwards), and refused sign-ins are
counted on a few audit rows instead of one row each."""

import pytest
from django.contrib.auth.models import Group, User
from django.test import Client
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from borgapp import checks, proxy, throttle
from borgapp.models import AuditEvent
from tests.helpers import manage

pytestmark = pytest.mark.django_db

BAD = {"HTTP_AUTHORIZATION": "Token " + "0" * 40}


def viewer_token() -> str:
    user = User.objects.create_user("scraper", password="x" * 20)
    user.groups.add(Group.objects.get(name="viewer"))
    return Token.objects.create(user=user).key


def test_a_valid_token_passes_an_address_blocked_by_bad_ones():
    api = APIClient()
    codes = [api.get("/api/v1/jobs/", **BAD).status_code for _ in range(10)]
    assert codes == [401] * 10
    good = {"HTTP_AUTHORIZATION": f"Token {viewer_token()}"}
    assert api.get("/api/v1/jobs/", **good).status_code == 200
    assert api.get("/api/v1/jobs/", **BAD).status_code == 429  # the 11th bad one
    assert api.get("/api/v1/jobs/", **good).status_code == 200  # still


def test_an_unknown_key_from_a_blocked_address_is_refused_without_a_lookup():
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    api = APIClient()
    for _ in range(10):
        api.get("/api/v1/jobs/", **BAD)
    other = {"HTTP_AUTHORIZATION": "Token " + "1" * 40}
    with CaptureQueriesContext(connection) as queries:
        assert api.get("/api/v1/jobs/", **other).status_code == 429
    assert queries.captured_queries  # the audit row
    assert not any("authtoken_token" in query["sql"] for query in queries.captured_queries)


def test_cache_keys_name_no_token_and_no_user_name():
    assert "secret-token" not in throttle._known_key("secret-token")
    keys = [key for key, _ in throttle._login_keys("192.0.2.1", "ann")]
    assert keys and not any("ann" in key for key in keys)


def make_staff(name: str, password: str) -> User:
    user = User.objects.create_user(name, password=password, is_staff=True)
    user.groups.add(Group.objects.get(name="viewer"))
    return user


def test_guessing_one_password_does_not_lock_out_another_user_from_the_address():
    make_staff("ann", "ann-password-123")
    make_staff("bob", "bob-password-123")
    guesser = Client()
    for attempt in range(10):
        page = guesser.post("/admin/login/", {"username": "ann", "password": f"guess-{attempt}"})
        assert "Too many failed" not in page.content.decode()
    # ann is throttled from this address, even with her right password ...
    page = guesser.post("/admin/login/", {"username": "ann", "password": "ann-password-123"})
    assert page.status_code == 200 and "Too many failed" in page.content.decode()
    # ... bob, at the same address (behind the same proxy, say), is not
    bob = Client()
    signed_in = bob.post("/admin/login/", {"username": "bob", "password": "bob-password-123"})
    assert signed_in.status_code == 302
    assert bob.get("/admin/").status_code == 200


def test_one_user_name_is_throttled_across_addresses_and_one_address_across_names():
    for index in range(throttle.USER_FAILURES_ALLOWED):
        throttle.note_login_failure(f"198.51.100.{index}", "ann")
    assert throttle.login_blocked("203.0.113.1", "ann")  # a new address: still refused
    assert not throttle.login_blocked("203.0.113.1", "bob")
    for index in range(throttle.ADDRESS_LOGIN_FAILURES_ALLOWED):
        throttle.note_login_failure("203.0.113.2", f"name-{index}")
    assert throttle.login_blocked("203.0.113.2", "carol")


def test_metrics_through_an_unlisted_loopback_proxy_needs_a_token(settings, monkeypatch):
    settings.TRUSTED_PROXIES = []
    monkeypatch.setattr(proxy, "_noted_at", 0.0, raising=False)
    assert Client().get("/metrics").status_code == 200  # loopback, no proxy: allowed
    forwarded = Client().get("/metrics", HTTP_X_FORWARDED_FOR="203.0.113.9")
    assert forwarded.status_code in (401, 403)  # came from anyone, through the proxy
    token = viewer_token()
    with_token = Client().get(
        "/metrics", HTTP_X_FORWARDED_FOR="203.0.113.9", HTTP_AUTHORIZATION=f"Token {token}"
    )
    assert with_token.status_code == 200
    warned = [c for c in checks.unlisted_proxy_check() if c.id == "borgapp.W041"]
    assert len(warned) == 1 and "127.0.0.1" in warned[0].msg
    assert "OPSCENTER_TRUSTED_PROXIES=127.0.0.1" in warned[0].hint
    # listed as a trusted proxy: the warning goes, and the allow list applies to the client
    settings.TRUSTED_PROXIES = ["127.0.0.1"]
    assert not [c for c in checks.unlisted_proxy_check() if c.id == "borgapp.W041"]
    assert Client().get("/metrics", HTTP_X_FORWARDED_FOR="203.0.113.9").status_code == 403


def test_the_check_reports_the_proxy_at_the_next_start_up(roots, settings, monkeypatch):
    settings.TRUSTED_PROXIES = []
    monkeypatch.setattr(proxy, "_noted_at", 0.0, raising=False)
    Client().get("/healthz", HTTP_X_FORWARDED_FOR="203.0.113.9")
    checked = manage(["check"], roots.env)
    assert checked.returncode == 0, checked.stderr
    assert "borgapp.W041" in checked.stdout + checked.stderr
    listed = manage(["check"], {**roots.env, "OPSCENTER_TRUSTED_PROXIES": "127.0.0.1"})
    assert "borgapp.W041" not in listed.stdout + listed.stderr


def test_five_hundred_bad_tokens_write_a_handful_of_audit_rows():
    api = APIClient()
    codes = [api.get("/api/v1/jobs/", **BAD).status_code for _ in range(500)]
    assert codes.count(401) == 10 and codes.count(429) == 490
    rows = list(AuditEvent.objects.filter(action="sign_in"))
    assert len(rows) <= 5
    assert sum(row.count for row in rows) == 500
    assert {(row.outcome, row.count) for row in rows} == {("failure", 10), ("refused", 490)}
    assert {row.client_address for row in rows} == {"127.0.0.1"}
    api_rows = APIClient()
    api_rows.credentials(HTTP_AUTHORIZATION=f"Token {admin_token()}")
    listed = api_rows.get("/api/v1/audit/", {"outcome": "refused"})
    assert listed.status_code == 200, listed.content
    assert "490" in listed.content.decode()


def test_another_address_and_a_later_window_get_rows_of_their_own(monkeypatch):
    from datetime import timedelta

    from django.utils import timezone

    from borgapp import audit

    api = APIClient()
    for _ in range(3):
        api.get("/api/v1/jobs/", REMOTE_ADDR="192.0.2.7", **BAD)
    api.get("/api/v1/jobs/", REMOTE_ADDR="192.0.2.8", **BAD)
    rows = {row.client_address: row.count for row in AuditEvent.objects.all()}
    assert rows == {"192.0.2.7": 3, "192.0.2.8": 1}
    later = timezone.now() + timedelta(seconds=audit.ATTEMPT_WINDOW + 1)
    monkeypatch.setattr(audit.timezone, "now", lambda: later)
    api.get("/api/v1/jobs/", REMOTE_ADDR="192.0.2.7", **BAD)  # the cached row is too old
    assert AuditEvent.objects.filter(client_address="192.0.2.7").count() == 2


def test_many_user_names_from_one_address_share_a_row_after_the_first_few():
    from borgapp import audit

    for index in range(8):
        Client().post("/admin/login/", {"username": f"name-{index}", "password": "wrong"})
    rows = list(AuditEvent.objects.filter(action="sign_in", outcome="failure"))
    assert len(rows) == audit.ATTEMPT_ROWS + 1
    several = [row for row in rows if row.target == "(several)"]
    assert len(several) == 1 and several[0].count == 8 - audit.ATTEMPT_ROWS


def admin_token() -> str:
    user = User.objects.create_user("auditor", password="x" * 20)
    user.groups.add(Group.objects.get(name="admin"))
    return Token.objects.create(user=user).key
