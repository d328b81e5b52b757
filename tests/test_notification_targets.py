"""Issue 10, findings 3 and 15. Notification credentials (Apprise and webhook URLs, ping URLs)
are stored encrypted and shown to admins only; everyone else sees scheme and host. And no
notification goes to an internal or local target unless OPSCENTER_NOTIFY_ALLOW_HOSTS names
it: refused when saved, and again when sent, before any connection. No test here sends
anything to a non-loopback address: such targets are only shown to be refused."""

import io
import json
import logging
import socket
from http.server import BaseHTTPRequestHandler, HTTPServer
from threading import Thread

import pytest
from cryptography.fernet import Fernet
from django.core.management import call_command
from django.db import connection

from borgapp import notifications, outbound, vault
from borgapp.models import Channel, Repository, Schedule
from tests.helpers import Receiver, cli, client_for, staff

pytestmark = pytest.mark.django_db
CANARY = "CANARY-9d2b-notify-credential"
PUBLIC = "93.184.215.14"  # what the fake DNS answers for *.example: never connected to
APPRISE_URL = f"ntfys://ops:{CANARY}@ntfy.example/backups"
WEBHOOK_URL = f"https://hooks.example/in/{CANARY}"
PING_URL = f"https://hc-ping.example/{CANARY}"


@pytest.fixture
def fake_dns(monkeypatch):
    """*.example resolves to a public address without asking any resolver; other names (such
    as localhost) resolve as usual. Returns the table, for a test to change an answer."""
    table = {}
    real = outbound.resolve

    def resolve(host, port):
        if host in table:
            return table[host]
        return [PUBLIC] if host.endswith(".example") else real(host, port)

    monkeypatch.setattr(outbound, "resolve", resolve)
    return table


@pytest.fixture
def connections(monkeypatch):
    """Every connection attempted: to a loopback address it goes ahead, to any other it is
    stopped (and recorded), so that a test can never reach the network."""
    attempted = []
    real = socket.socket.connect

    def connect(sock, address):
        attempted.append(address[0])
        if address[0] not in ("127.0.0.1", "::1"):
            raise OSError("a test tried to connect outside this machine")
        return real(sock, address)

    monkeypatch.setattr(socket.socket, "connect", connect)
    return attempted


def channel_form(name, kind, target, **more):
    return {"name": name, "kind": kind, "target": target, "events": ["alert_firing"],
            "enabled": "on", "secret": "", **more}  # fmt: skip


def schedule_form(repo, **pings):
    return {
        "name": "nightly", "repositories": [repo.pk], "operation": "check", "enabled": "on",
        "cron": "0 2 * * *", "timezone": "UTC", "source_paths": "", "exclude_patterns": "",
        "archive_prefix": "backup", "compression": "lz4", "comment": "",
        "compact_after_prune": "on", "check_scope": "both", "sample_files": 20,
        "sample_max_bytes": 1000, **pings,
    }  # fmt: skip


def rows_of(table: str) -> str:
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT * FROM {table}")
        return repr(cursor.fetchall())


# --- finding 3: credentials at rest and on the pages ------------------------------------------


def test_viewers_and_operators_never_see_notification_credentials(client, fake_dns):
    repo = Repository.objects.create(name="main", location="/nonexistent/main", state="ready")
    client.force_login(staff("admin"))
    for form in (
        channel_form("push", "apprise", APPRISE_URL),
        channel_form("hook", "webhook", WEBHOOK_URL, secret="signing secret"),
        channel_form("mail", "email", "ops@example.com"),
    ):
        added = client.post("/admin/borgapp/channel/add/", form)
        assert added.status_code == 302, added.context["adminform"].form.errors
    pings = {"ping_start_url": f"{PING_URL}-start", "ping_success_url": f"{PING_URL}-ok",
             "ping_failure_url": f"{PING_URL}-fail"}  # fmt: skip
    added = client.post("/admin/borgapp/schedule/add/", schedule_form(repo, **pings))
    assert added.status_code == 302, added.context["adminform"].form.errors
    push, hook = Channel.objects.get(name="push"), Channel.objects.get(name="hook")
    schedule = Schedule.objects.get(name="nightly")
    # an admin sees (and so can check) the URLs themselves on the change pages
    page = client.get(f"/admin/borgapp/channel/{push.pk}/change/").content.decode()
    assert APPRISE_URL in page
    page = client.get(f"/admin/borgapp/schedule/{schedule.pk}/change/").content.decode()
    assert f"{PING_URL}-ok" in page
    # at rest: no canary in any column, nor in a dump; the app still reads them
    assert CANARY not in rows_of("borgapp_channel") + rows_of("borgapp_schedule")
    dump = io.StringIO()
    call_command("dumpdata", "borgapp", stdout=dump)
    assert CANARY not in dump.getvalue()
    assert push.get_target() == APPRISE_URL and hook.get_target() == WEBHOOK_URL
    assert schedule.get_ping("success") == f"{PING_URL}-ok"
    assert Channel.objects.get(name="mail").target == "ops@example.com"  # not a secret
    # a viewer and an operator: masked everywhere, the canary nowhere
    pages = [
        "/admin/borgapp/channel/",
        f"/admin/borgapp/channel/{push.pk}/change/",
        f"/admin/borgapp/channel/{hook.pk}/change/",
        "/admin/borgapp/schedule/",
        f"/admin/borgapp/schedule/{schedule.pk}/change/",
    ]
    for role in ("viewer", "operator"):
        client.force_login(staff(role))
        seen = {}
        for url in pages:
            response = client.get(url)
            assert response.status_code == 200, (role, url)
            seen[url] = response.content.decode()
            assert seen[url].count(CANARY) == 0, (role, url)
        assert "ntfys://…@ntfy.example/…" in seen["/admin/borgapp/channel/"]
        assert "https://hooks.example/…" in seen[f"/admin/borgapp/channel/{hook.pk}/change/"]
        assert "ntfys://…@ntfy.example/…" in seen[f"/admin/borgapp/channel/{push.pk}/change/"]
        assert "https://hc-ping.example/…" in seen[f"/admin/borgapp/schedule/{schedule.pk}/change/"]
        api = client_for(role)
        for url in ("/api/v1/schedules/", f"/api/v1/schedules/{schedule.pk}/"):
            response = api.get(url)
            assert response.status_code == 200 and CANARY not in response.content.decode()


def test_an_admin_sets_the_urls_and_they_still_deliver(client, settings):
    settings.NOTIFY_ALLOW_HOSTS = ["127.0.0.1"]
    receiver = Receiver()
    try:
        port = receiver.url.rsplit(":", 1)[1]
        client.force_login(staff("admin"))
        target = f"json://127.0.0.1:{port}/notify/{CANARY}"
        added = client.post("/admin/borgapp/channel/add/", channel_form("push", "apprise", target))
        assert added.status_code == 302, added.context["adminform"].form.errors
        assert notifications.send("alert_firing", "subject line", "the body", {}) == 1
        result = cli("test_notification", "push")
        assert result.code == 0, result.err
        assert [(m, p) for m, p, _, _ in receiver.requests] == [("POST", f"/notify/{CANARY}")] * 2
        assert json.loads(receiver.requests[0][3])["message"] == "the body"
        # an unchanged form keeps the URL; a new one replaces it
        push = Channel.objects.get(name="push")
        url = f"/admin/borgapp/channel/{push.pk}/change/"
        assert client.post(url, channel_form("push", "apprise", target)).status_code == 302
        assert Channel.objects.get(name="push").get_target() == target
        # ping URLs set in the admin are pinged
        repo = Repository.objects.create(name="main", location="/nonexistent/main", state="ready")
        form = schedule_form(repo, ping_success_url=f"{receiver.url}/ok/{CANARY}")
        assert client.post("/admin/borgapp/schedule/add/", form).status_code == 302
        notifications.ping(Schedule.objects.get().ping_success_url)
        assert receiver.requests[-1][:2] == ("GET", f"/ok/{CANARY}")
    finally:
        receiver.close()


def test_rotation_re_encrypts_channel_and_ping_urls(settings):
    Channel.objects.create(name="push", kind="apprise", target=APPRISE_URL, events=[])
    hook = Channel(name="hook", kind="webhook", target=WEBHOOK_URL, events=[])
    hook.set_secret("signing secret")
    hook.save()
    Schedule.objects.create(name="nightly", operation="check", cron="0 3 * * *",
                            ping_start_url=PING_URL)  # fmt: skip
    assert CANARY not in rows_of("borgapp_channel") + rows_of("borgapp_schedule")
    old_key = settings.BORG_ENCRYPTION_KEYS[0]
    new_key = Fernet.generate_key().decode()
    settings.BORG_ENCRYPTION_KEYS = [new_key, old_key]
    result = cli("rotate_encryption_key", "--json")
    assert result.code == 0, result.err
    assert json.loads(result.out) == {"rotated": 3}
    settings.BORG_ENCRYPTION_KEYS = [new_key]  # the old key gone: all of them still read
    assert Channel.objects.get(name="push").get_target() == APPRISE_URL
    hook = Channel.objects.get(name="hook")
    assert hook.get_target() == WEBHOOK_URL and hook.get_secret() == "signing secret"
    assert Schedule.objects.get().get_ping("start") == PING_URL
    settings.BORG_ENCRYPTION_KEYS = [old_key]
    with pytest.raises(vault.VaultError):
        Channel.objects.get(name="push").get_target()
    assert Schedule.objects.get().ping_start_url == ""  # a job's ping: none, never a crash


@pytest.mark.django_db(transaction=True)
def test_the_migration_encrypts_stored_urls_and_back():
    from django.db.migrations.executor import MigrationExecutor

    before, after = [("borgapp", "0011_one_firing_alert")], [("borgapp", "0012_encrypted_targets")]
    executor = MigrationExecutor(connection)
    leaves = executor.loader.graph.leaf_nodes()
    try:
        executor.migrate(before)
        old = MigrationExecutor(connection).loader.project_state(before).apps
        old.get_model("borgapp", "Channel").objects.create(
            name="push", kind="apprise", target=APPRISE_URL, events=[]
        )
        old.get_model("borgapp", "Channel").objects.create(
            name="mail", kind="email", target="ops@example.com", events=[]
        )
        old.get_model("borgapp", "Schedule").objects.create(
            name="nightly", operation="check", cron="0 3 * * *", ping_failure_url=PING_URL
        )
        executor = MigrationExecutor(connection)
        executor.migrate(after)
        assert CANARY not in rows_of("borgapp_channel") + rows_of("borgapp_schedule")
        new = executor.loader.project_state(after).apps
        push = new.get_model("borgapp", "Channel").objects.get(name="push")
        assert vault.decrypt(push.target_encrypted) == APPRISE_URL
        assert push.target == "ntfys://…@ntfy.example/…"
        assert new.get_model("borgapp", "Channel").objects.get(name="mail").target == (
            "ops@example.com"
        )
        schedule = new.get_model("borgapp", "Schedule").objects.get()
        assert vault.decrypt(schedule.ping_failure_encrypted) == PING_URL
        executor = MigrationExecutor(connection)
        executor.migrate(before)  # and back: nothing lost
        old = executor.loader.project_state(before).apps
        assert old.get_model("borgapp", "Channel").objects.get(name="push").target == APPRISE_URL
        assert old.get_model("borgapp", "Schedule").objects.get().ping_failure_url == PING_URL
    finally:
        MigrationExecutor(connection).migrate(leaves)


def test_the_masked_form_shows_scheme_and_host_only():
    assert outbound.mask(APPRISE_URL) == "ntfys://…@ntfy.example/…"
    assert outbound.mask("https://hc-ping.com/5f1c-uuid") == "https://hc-ping.com/…"
    assert outbound.mask("json://127.0.0.1:8080/notify") == "json://127.0.0.1:8080/…"
    assert outbound.mask("https://hooks.example") == "https://hooks.example"
    # where a token stands in the host's place, nothing of it is shown
    assert outbound.mask("tgram://123456789:AAHsecret/4242") == "tgram://…"
    assert outbound.mask("discord://4174216298/JHMHI8qBe7bk2Z") == "discord://…"
    assert outbound.mask("slack://T1JJ3T3L2/A1BRTD4JD/TIiajkdnlazkcOXrIdevi7FQ") == "slack://…"


# --- finding 15: no internal or local targets -------------------------------------------------

REFUSED_ON_SAVE = [
    ("webhook", "http://127.0.0.1:8080/hook", "127.0.0.1 is a loopback address"),
    ("webhook", "http://169.254.169.254/latest/meta-data/", "a link-local address"),
    ("webhook", "http://10.1.2.3/hook", "10.1.2.3 is a private address"),
    ("webhook", "http://[::1]:8080/hook", "::1 is a loopback address"),
    ("webhook", "http://localhost:8080/hook", "localhost resolves to"),
    ("webhook", "http://0.0.0.0:8080/hook", "an unspecified address"),
    ("apprise", "json://127.0.0.1:8080/notify", "127.0.0.1 is a loopback address"),
    ("apprise", "gotify://169.254.169.254/token", "a link-local address"),
    ("apprise", "file:///etc/passwd", "The Apprise scheme file:// is not allowed"),
    ("apprise", "windows://", "The Apprise scheme windows:// is not allowed"),
    ("apprise", "json://hooks.example/?attach=file:///etc/passwd", "parameter attach="),
    ("apprise", "discord://4174216298/token?template=/etc/passwd", "parameter template="),
    ("apprise", "json://hooks.example/, file:///etc/passwd", "exactly one Apprise URL"),
]


@pytest.mark.parametrize(("kind", "target", "error"), REFUSED_ON_SAVE)
def test_internal_and_local_targets_are_refused_when_saved(
    client, fake_dns, connections, kind, target, error
):
    client.force_login(staff("admin"))
    refused = client.post("/admin/borgapp/channel/add/", channel_form("bad", kind, target))
    assert refused.status_code == 200
    errors = refused.context["adminform"].form.errors
    assert error in " ".join(errors.get("target", [])), errors
    assert not Channel.objects.exists() and connections == []


def test_a_ping_url_to_cloud_metadata_is_refused_when_saved(client, connections):
    repo = Repository.objects.create(name="main", location="/nonexistent/main", state="ready")
    client.force_login(staff("admin"))
    form = schedule_form(repo, ping_start_url="http://169.254.169.254/latest/meta-data/")
    refused = client.post("/admin/borgapp/schedule/add/", form)
    assert refused.status_code == 200
    errors = refused.context["adminform"].form.errors
    assert "169.254.169.254 is a link-local address" in errors["ping_start_url"][0]
    assert not Schedule.objects.exists() and connections == []


def test_the_allow_setting_admits_named_internal_targets(client, settings, connections):
    settings.NOTIFY_ALLOW_HOSTS = ["10.0.0.0/8", "ntfy.lan"]
    client.force_login(staff("admin"))
    for name, kind, target in (
        ("hook", "webhook", "http://10.1.2.3/hook"),
        ("push", "apprise", "ntfy://ntfy.lan/backups"),
    ):
        added = client.post("/admin/borgapp/channel/add/", channel_form(name, kind, target))
        assert added.status_code == 302, added.context["adminform"].form.errors
    refused = client.post(
        "/admin/borgapp/channel/add/", channel_form("other", "webhook", "http://192.168.1.2/")
    )
    assert "192.168.1.2 is a private address" in str(refused.context["adminform"].form.errors)
    assert connections == []


@pytest.fixture
def listener():
    """A listening socket on 127.0.0.1 that must be sent nothing."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        sock.setblocking(False)
        yield sock


def nothing_arrived(sock) -> bool:
    try:
        sock.accept()[0].close()
    except BlockingIOError:
        return True
    return False


def test_internal_targets_are_refused_when_sent_before_any_connection(
    listener, fake_dns, connections, caplog
):
    port = listener.getsockname()[1]
    # rows written as they are, past every form: sending checks again
    targets = [
        ("webhook", f"http://127.0.0.1:{port}/hook", "127.0.0.1 is a loopback address"),
        ("webhook", f"http://localhost:{port}/hook", "localhost resolves to"),
        ("webhook", f"http://[::1]:{port}/hook", "::1 is a loopback address"),
        ("webhook", "http://169.254.169.254/latest/meta-data/", "a link-local address"),
        ("webhook", "http://10.1.2.3/hook", "10.1.2.3 is a private address"),
        ("apprise", f"json://127.0.0.1:{port}/notify", "127.0.0.1 is a loopback address"),
        ("apprise", f"json://localhost:{port}/notify", "localhost resolves to"),
        ("apprise", "json://169.254.169.254/notify", "a link-local address"),
        ("apprise", "file:///etc/passwd", "The Apprise scheme file:// is not allowed"),
        ("apprise", "json://hooks.example/?attach=file:///etc/passwd", "parameter attach="),
    ]
    for index, (kind, target, error) in enumerate(targets):
        channel = Channel.objects.create(name=f"c{index}", kind=kind, target=target, events=[])
        assert not notifications.send_to(channel, "test", "subject", "text", {})
        channel.refresh_from_db()
        assert channel.last_error.startswith("Not sent: ") and error in channel.last_error
        assert "Refused" not in channel.last_error  # words, not a Python class name
        assert channel.last_error_at is not None
    assert (
        "unless OPSCENTER_NOTIFY_ALLOW_HOSTS names them"
        in Channel.objects.get(name="c0").last_error
    )
    # a host name that was public when saved and now resolves inside (DNS rebinding)
    fake_dns["hooks.example"] = ["10.0.0.5"]
    late = Channel.objects.create(name="late", kind="webhook", target=WEBHOOK_URL, events=[])
    assert not notifications.send_to(late, "test", "subject", "text", {})
    late.refresh_from_db()
    assert "hooks.example resolves to 10.0.0.5, a private address" in late.last_error
    # pings: refused the same way, and said so in the log (masked: the URL is a secret)
    caplog.set_level(logging.WARNING)
    notifications.ping(f"http://127.0.0.1:{port}/ping/{CANARY}")
    notifications.ping("http://169.254.169.254/latest/meta-data/")
    assert "127.0.0.1 is a loopback address" in caplog.text and CANARY not in caplog.text
    assert "a link-local address" in caplog.text
    assert connections == [] and nothing_arrived(listener)


class Redirecting(BaseHTTPRequestHandler):
    """Answers every request with a redirect to the cloud metadata address."""

    def _redirect(self):
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.send_response(307)
        self.send_header("Location", "http://169.254.169.254/latest/meta-data/")
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_GET = do_POST = _redirect

    def log_message(self, *args):
        pass


def test_a_redirect_to_an_internal_address_is_not_followed(settings, connections):
    settings.NOTIFY_ALLOW_HOSTS = ["127.0.0.1"]
    server = HTTPServer(("127.0.0.1", 0), Redirecting)
    Thread(target=server.serve_forever, daemon=True).start()
    base = f"127.0.0.1:{server.server_port}"
    try:
        hook = Channel.objects.create(name="hook", kind="webhook", target=f"http://{base}/",
                                      events=[])  # fmt: skip
        assert not notifications.send_to(hook, "test", "subject", "text", {})
        hook.refresh_from_db()
        assert "the webhook answered HTTP 307" in hook.last_error
        push = Channel.objects.create(name="push", kind="apprise", target=f"json://{base}/",
                                      events=[])  # fmt: skip
        assert not notifications.send_to(push, "test", "subject", "text", {})
        push.refresh_from_db()
        assert "169.254.169.254 is a link-local address" in push.last_error
    finally:
        server.shutdown()
    assert "169.254.169.254" not in connections  # refused before connecting
