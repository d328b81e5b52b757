"""Monitoring: alerts on the guide's thresholds, notifications (email, signed webhook, pings,
digest), /metrics and /healthz, all from the database."""

import hashlib
import hmac
import json
import re
import threading
import time
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest
from django.contrib.auth.models import User
from django.core import mail
from django.utils import timezone

from borgapp import alerts, notifications
from borgapp.models import Alert, Archive, Channel, Job, Repository, WorkerHeartbeat
from tests.helpers import Receiver, cli, staff, write_files

pytestmark = pytest.mark.django_db
SECRET = "webhook signing secret"


@pytest.fixture
def allow_loopback(settings):
    """The local test servers are internal targets: allowed the documented way."""
    settings.NOTIFY_ALLOW_HOSTS = ["127.0.0.1"]


@pytest.fixture
def receiver(allow_loopback):
    server = Receiver()
    yield server
    server.close()


def metric(client, name, repository):
    text = client.get("/metrics", REMOTE_ADDR="127.0.0.1").content.decode()
    for line in text.splitlines():
        if line.startswith(f'{name}{{repository="{repository}"}}'):
            return float(line.rsplit(" ", 1)[1])
    return None


def webhook_events(receiver):
    events = []
    for method, _, headers, body in receiver.requests:
        if method != "POST":
            continue
        expected = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
        assert hmac.compare_digest(headers["X-OpsCenter-Signature"], expected)
        events.append(json.loads(body))
    return events


def test_overdue_fires_notifies_and_resolves_after_a_backup(
    repo, roots, tmp_path, receiver, client
):
    Repository.objects.filter(pk=repo.pk).update(min_deduplication=0)  # a tiny test backup
    src = write_files(tmp_path / "src", {"a.txt": "alpha"})
    assert cli("borg_backup", "main", "--source", src).code == 0
    Channel.objects.create(name="mail", kind="email", target="ops@example.com",
                           events=["alert_firing", "alert_resolved"])  # fmt: skip
    hook = Channel(name="hook", kind="webhook", target=f"{receiver.url}/hook",
                   events=["alert_firing", "alert_resolved"])  # fmt: skip
    hook.set_secret(SECRET)
    hook.save()
    mail.outbox.clear()
    assert alerts.evaluate() == {"firing": 0, "fired": 0, "resolved": 0}
    assert metric(client, "opscenter_repository_healthy", "main") == 1.0
    # move time: the last backup is now 30 hours old
    Archive.objects.update(start=timezone.now() - timedelta(hours=30))
    assert alerts.evaluate()["fired"] == 1
    alert = Alert.objects.get(state="firing")
    assert alert.kind == "overdue" and "30 hours old" in alert.reason
    assert [m.subject for m in mail.outbox] == [
        "[opscenter] FIRING: Last successful backup too old on main"
    ]
    assert mail.outbox[0].to == ["ops@example.com"] and "30 hours old" in mail.outbox[0].body
    [event] = webhook_events(receiver)
    assert event["event"] == "alert_firing" and event["data"]["repository"] == "main"
    assert metric(client, "opscenter_repository_healthy", "main") == 0.0
    assert "opscenter_alerts_firing 1.0" in client.get("/metrics").content.decode()
    # evaluating again while it still fires notifies nobody
    assert alerts.evaluate()["fired"] == 0
    assert len(mail.outbox) == 1 and len(webhook_events(receiver)) == 1
    # a backup: the job's end re-evaluates, the alert resolves, and says so once
    assert cli("borg_backup", "main", "--source", src, "--prefix", "again").code == 0
    alert.refresh_from_db()
    assert alert.state == "resolved" and alert.resolved_at is not None
    assert mail.outbox[-1].subject == "[opscenter] resolved: Last successful backup too old on main"
    assert [e["event"] for e in webhook_events(receiver)] == ["alert_firing", "alert_resolved"]
    assert metric(client, "opscenter_repository_healthy", "main") == 1.0


def ready_repo(name="r", **fields):
    return Repository.objects.create(
        name=name, location=f"/nonexistent/{name}", state="ready", **fields
    )


def fired_kinds():
    alerts.evaluate()
    return {a.kind for a in Alert.objects.filter(state="firing")}


def fresh_archive(repo, hours=1, size=10, name=None):
    return Archive.objects.create(
        repository=repo, name=name or f"a-{Archive.objects.count()}",
        borg_id=str(Archive.objects.count()).ljust(64, "0"),
        start=timezone.now() - timedelta(hours=hours), deduplicated_size=size,
    )  # fmt: skip


def test_success_rate_threshold_is_exact():
    repo = ready_repo()
    fresh_archive(repo)
    now = timezone.now()
    for index in range(199):
        Job.objects.create(kind="backup", repository=repo, trigger="schedule", status="succeeded",
                           finished_at=now - timedelta(hours=index))  # fmt: skip
    Job.objects.create(kind="check", repository=repo, trigger="schedule", status="failed",
                       finished_at=now)  # fmt: skip
    assert "success_rate" not in fired_kinds()  # 199/200 = 99.5 %
    Job.objects.create(kind="check", repository=repo, trigger="schedule", status="failed",
                       finished_at=now)  # fmt: skip
    Job.objects.create(kind="check", repository=repo, trigger="schedule", status="failed",
                       finished_at=now)  # fmt: skip
    alert_kinds = fired_kinds()
    assert "success_rate" in alert_kinds  # 199/202 = 98.5 %
    reason = Alert.objects.get(kind="success_rate", state="firing").reason
    assert "199 of 202 jobs succeeded" in reason


def ended_jobs(repo, statuses):
    """Jobs that ended with these statuses, the first of them the newest."""
    now = timezone.now()
    for index, status in enumerate(statuses):
        Job.objects.create(kind="backup", repository=repo, trigger="schedule", status=status,
                           finished_at=now - timedelta(hours=index + 1))  # fmt: skip


def test_success_rate_needs_enough_jobs_and_clears_after_a_run_of_successes():
    repo = ready_repo()
    fresh_archive(repo)
    ended_jobs(repo, ["failed", "succeeded"])  # a new repository's first failure
    assert "success_rate" not in fired_kinds()  # 1 of 2 is no rate
    Job.objects.all().delete()
    ended_jobs(repo, ["succeeded", "failed", "succeeded", "failed"] + ["succeeded"] * 8)
    assert "success_rate" in fired_kinds()  # failing every other run: 10 of 12
    Job.objects.all().delete()
    ended_jobs(repo, ["succeeded"] * 3 + ["failed"] + ["succeeded"] * 8)
    assert "success_rate" not in fired_kinds()  # 11 of 12, but the newest three are good
    assert Alert.objects.get(kind="success_rate").state == "resolved"


def test_the_health_light_is_never_green_while_an_alert_fires(client):
    repo = ready_repo("main")
    fresh_archive(repo)
    Job.objects.create(kind="backup", repository=repo, trigger="schedule",
                       status="succeeded", finished_at=timezone.now())  # fmt: skip
    client.force_login(staff("viewer"))

    def lights():
        listed = client.get("/admin/borgapp/repository/").content.decode()
        board = client.get("/admin/").content.decode()
        return [re.findall(r'data-health="(\w+)"', page) for page in (listed, board)]

    assert lights() == [["green"], ["green"]]
    Alert.objects.create(kind="check_age", repository=repo, reason="The last successful "
                         "check of main never ran.")  # fmt: skip
    assert lights() == [["amber"], ["amber"]]
    assert (
        "alert: The last successful check of main never ran."
        in client.get("/admin/borgapp/repository/").content.decode()
    )


def test_deduplication_below_1_5_fires():
    repo = ready_repo(total_size=140, unique_compressed_size=100)  # ratio 1.4
    fresh_archive(repo)
    assert "deduplication" not in fired_kinds()  # one backup: nothing deduplicates yet
    fresh_archive(repo)
    fresh_archive(repo)
    assert "deduplication" in fired_kinds()
    Repository.objects.filter(pk=repo.pk).update(total_size=160)  # 1.6
    assert "deduplication" not in fired_kinds()
    assert Alert.objects.get(kind="deduplication").state == "resolved"


def test_growth_above_twice_the_usual_fires():
    repo = ready_repo()
    for day in range(7, 37):  # the 30 days before the last week: 1 MB a day
        fresh_archive(repo, hours=24 * day + 12, size=1_000_000)
    for day in range(7):  # the last week: 1.5 MB a day
        fresh_archive(repo, hours=24 * day + 1, size=1_500_000)
    assert "growth" not in fired_kinds()
    fresh_archive(repo, hours=2, size=7_000_000)  # now 2.5 MB a day
    assert "growth" in fired_kinds()
    assert "2.5×" in Alert.objects.get(kind="growth", state="firing").reason


def test_growth_above_an_absolute_limit_fires():
    repo = ready_repo(growth_limit_bytes=1_000_000)
    fresh_archive(repo, hours=1, size=14_000_000)  # 2 MB a day over the week
    assert "growth" in fired_kinds()


def test_check_age_and_worker_heartbeat_fire():
    repo = ready_repo()
    Repository.objects.filter(pk=repo.pk).update(created_at=timezone.now() - timedelta(days=9))
    fresh_archive(repo)
    WorkerHeartbeat.objects.create(pk=1, seen_at=timezone.now() - timedelta(minutes=4))
    kinds = fired_kinds()
    assert {"check_age", "worker"} <= kinds
    Job.objects.create(kind="check", repository=repo, trigger="schedule", status="succeeded",
                       finished_at=timezone.now())  # fmt: skip
    WorkerHeartbeat.objects.filter(pk=1).update(seen_at=timezone.now())
    assert not {"check_age", "worker"} & fired_kinds()


def test_a_dead_worker_is_announced_by_the_web_process(client, monkeypatch):
    """The worker evaluates alerts, so its own death must be noticed elsewhere: a probe of
    /healthz (or a scrape, or the dashboard) evaluates when the heartbeat is stale."""
    monkeypatch.setattr(alerts, "_watched_at", -1e9)
    Channel.objects.create(name="mail", kind="email", target="ops@example.com",
                           events=["alert_firing", "alert_resolved"])  # fmt: skip
    WorkerHeartbeat.objects.create(pk=1, seen_at=timezone.now() - timedelta(minutes=10))
    assert client.get("/healthz").status_code == 503
    alert = Alert.objects.get(state="firing")
    assert alert.kind == "worker" and "10 minutes ago" in alert.reason
    assert [m.subject for m in mail.outbox] == ["[opscenter] FIRING: Worker heartbeat stale"]
    # probes within the minute evaluate nothing more and notify nobody again
    client.get("/healthz")
    client.get("/metrics", REMOTE_ADDR="127.0.0.1")
    assert len(mail.outbox) == 1 and Alert.objects.count() == 1
    # the dashboard says it first thing
    from django.contrib.auth.models import User

    client.force_login(User.objects.create_superuser("root", password="x" * 20))
    page = client.get("/admin/").content.decode()
    assert 'data-silent="yes"' in page and "The worker is not running" in page
    assert alert.reason in page
    # the worker is back: its own tick resolves it
    from borgapp import tasks

    tasks.maintenance()
    assert Alert.objects.get().state == "resolved"
    assert mail.outbox[-1].subject == "[opscenter] resolved: Worker heartbeat stale"
    assert 'data-silent="no"' in client.get("/admin/").content.decode()


@pytest.mark.django_db(transaction=True)
def test_a_probe_answers_while_a_slow_channel_is_still_being_told(
    client, settings, monkeypatch, allow_loopback
):
    """The probe's evaluation runs in a thread of its own: a channel that hangs delays the
    notification, never the answer to /healthz."""
    settings.ALERT_WATCH_THREAD = True
    monkeypatch.setattr(alerts, "_watched_at", -1e9)
    release, received = threading.Event(), []

    class Hanging(BaseHTTPRequestHandler):
        def do_POST(self):
            received.append(self.rfile.read(int(self.headers["Content-Length"])))
            release.wait(30)
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Hanging)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        hook = Channel(name="slow", kind="webhook", events=["alert_firing"],
                       target=f"http://127.0.0.1:{server.server_port}/")  # fmt: skip
        hook.set_secret(SECRET)
        hook.save()
        WorkerHeartbeat.objects.create(pk=1, seen_at=timezone.now() - timedelta(minutes=10))
        assert client.get("/healthz").status_code == 503  # answered...
        [watch] = [t for t in threading.enumerate() if t.name == "alert-watch"]
        for _ in range(100):  # ... while the channel is still being told
            if received:
                break
            time.sleep(0.1)
        assert received and watch.is_alive()
        release.set()
        watch.join(30)
        assert json.loads(received[0])["event"] == "alert_firing"
        assert Alert.objects.get(state="firing").kind == "worker"
    finally:
        release.set()
        server.shutdown()


def test_two_evaluators_at_once_open_one_alert_and_notify_once(monkeypatch):
    """Web probes and workers may evaluate at the same moment (on PostgreSQL truly in
    parallel): the database keeps one firing alert per condition, and the evaluator that
    loses the race neither fails nor notifies."""
    from django.db import IntegrityError, transaction

    Channel.objects.create(name="mail", kind="email", target="ops@example.com",
                           events=["alert_firing"])  # fmt: skip
    WorkerHeartbeat.objects.create(pk=1, seen_at=timezone.now() - timedelta(minutes=10))
    assert alerts.evaluate()["fired"] == 1 and len(mail.outbox) == 1
    with pytest.raises(IntegrityError), transaction.atomic():
        Alert.objects.create(kind="worker", reason="a second one")
    # the other evaluator read the firing alerts just before the first one wrote its own
    monkeypatch.setattr(Alert.objects, "select_for_update", lambda: Alert.objects.none())
    assert alerts.evaluate()["fired"] == 0
    assert Alert.objects.filter(state="firing").count() == 1 and len(mail.outbox) == 1
    Alert.objects.filter(state="firing").update(state="resolved")
    Alert.objects.create(kind="worker", reason="firing again later is fine")


def test_a_worker_that_never_started_fires_once_schedules_wait_for_it():
    assert "worker" not in fired_kinds()  # a fresh install with nothing scheduled: quiet
    from borgapp.models import Schedule

    Schedule.objects.create(name="nightly", operation="check", cron="0 2 * * *")
    alerts.evaluate()
    assert "No worker has ever ticked" in Alert.objects.get(kind="worker", state="firing").reason


def test_a_failing_channel_never_breaks_a_job_and_keeps_its_error(repo, tmp_path, allow_loopback):
    Channel.objects.create(name="dead", kind="webhook", target="http://127.0.0.1:9/nothing",
                           events=["job_succeeded", "job_failed"])  # fmt: skip
    src = write_files(tmp_path / "src", {"a.txt": "alpha"})
    result = cli("borg_backup", "main", "--source", src)
    assert result.code == 0
    assert Job.objects.filter(kind="backup").get().status == "succeeded"
    channel = Channel.objects.get(name="dead")
    assert "Connection refused" in channel.last_error and channel.last_error_at
    failed = cli("test_notification", "dead")
    assert failed.code == 2 and "Sending failed" in failed.err


def test_schedule_pings_and_job_events(repo, tmp_path, receiver):
    src = write_files(tmp_path / "src", {"a.txt": "alpha"})
    cli("borg_schedule", "add", "nightly", "--repository", "main", "--operation", "backup",
        "--cron", "0 2 * * *", "--source", src)  # fmt: skip
    from borgapp.models import Schedule

    schedule = Schedule.objects.get(name="nightly")
    schedule.ping_start_url = f"{receiver.url}/start"  # stored encrypted
    schedule.ping_success_url = f"{receiver.url}/ok"
    schedule.ping_failure_url = f"{receiver.url}/fail"
    schedule.save()
    Channel.objects.create(name="mail", kind="email", target="a@example.com",
                           events=["job_succeeded", "job_failed"])  # fmt: skip
    mail.outbox.clear()
    assert cli("borg_schedule", "run", "nightly").code == 0
    assert [(m, p) for m, p, _, _ in receiver.requests] == [("GET", "/start"), ("GET", "/ok")]
    assert mail.outbox[-1].subject.startswith("[opscenter] Backup of main")
    assert "succeeded" in mail.outbox[-1].subject


def test_a_backup_that_warns_reaches_the_channels_that_asked_for_warnings(repo, tmp_path):
    for name, events in (("warnings", ["job_warning"]), ("successes", ["job_succeeded"]),
                         ("failures", ["job_failed"])):  # fmt: skip
        Channel.objects.create(name=name, kind="email", target=f"{name}@example.com",
                               events=events)  # fmt: skip
    src = write_files(tmp_path / "src", {"a.txt": "alpha"})
    mail.outbox.clear()
    assert cli("borg_backup", "main", "--source", src, "--source", tmp_path / "typo").code == 1
    told = {m.to[0].split("@")[0]: m for m in mail.outbox}
    assert set(told) == {"warnings", "successes"}  # a success with remarks, not a failure
    assert "warning" in told["warnings"].subject
    assert "ended with a warning" in told["warnings"].body and "typo" in told["warnings"].body


def test_daily_digest_and_test_message(repo, tmp_path):
    Channel.objects.create(name="mail", kind="email", target="a@example.com",
                           events=["daily_digest"])  # fmt: skip
    mail.outbox.clear()
    assert notifications.digest() == 1
    body = mail.outbox[0].body
    assert "Jobs of the last 24 hours: 1 succeeded" in body and "main: red" in body
    assert cli("test_notification", "mail").code == 0
    assert mail.outbox[-1].subject == "[opscenter] test message"


def test_healthz_and_metrics_access(client, settings):
    response = client.get("/healthz")
    assert response.status_code == 503
    assert "no heartbeat" in response.json()["problems"]["worker"]
    WorkerHeartbeat.objects.create(pk=1, seen_at=timezone.now())
    ok = client.get("/healthz")
    assert ok.status_code == 200 and ok.json()["status"] == "ok"
    WorkerHeartbeat.objects.filter(pk=1).update(seen_at=timezone.now() - timedelta(minutes=5))
    stale = client.get("/healthz").json()["problems"]["worker"]
    assert "the worker is not running" in stale
    assert client.get("/metrics", REMOTE_ADDR="10.1.2.3").status_code == 403
    settings.METRICS_TOKEN = "scrape-secret"
    assert client.get("/metrics", REMOTE_ADDR="10.1.2.3",
                      HTTP_AUTHORIZATION="Bearer scrape-secret").status_code == 200  # fmt: skip
    assert client.get("/metrics", REMOTE_ADDR="10.1.2.3",
                      HTTP_AUTHORIZATION="Bearer wrong").status_code == 403  # fmt: skip


def test_an_apprise_channel_delivers(receiver):
    """Apprise's json:// URL posts to an HTTP server: here the local receiver."""
    port = receiver.url.rsplit(":", 1)[1]
    channel = Channel.objects.create(
        name="apprise", kind="apprise", target=f"json://127.0.0.1:{port}/notify",
        events=["alert_firing"],
    )  # fmt: skip
    assert notifications.send("alert_firing", "subject line", "the body", {}) == 1
    [(method, path, _, body)] = receiver.requests
    assert (method, path) == ("POST", "/notify")
    sent = json.loads(body)
    assert sent["title"] == "subject line" and sent["message"] == "the body"
    channel.refresh_from_db()
    assert channel.last_error == "" and channel.last_sent_at is not None


def test_a_test_email_that_goes_nowhere_says_so(client, settings):
    """The default EMAIL_URL (consolemail://) prints mail: "sent" would be a lie."""
    settings.EMAIL_BACKEND = "django.core.mail.backends.console.EmailBackend"
    channel = Channel.objects.create(name="mail", kind="email", target="ops@example.com",
                                     events=[])  # fmt: skip
    result = cli("test_notification", "mail")
    assert result.code == 0 and "not sent anywhere" in result.err and "EMAIL_URL" in result.err
    client.force_login(User.objects.create_superuser("boss", password="boss-password-123"))
    answer = client.post("/admin/borgapp/channel/", {"action": "send_test",
                                                     "_selected_action": [channel.pk]},
                         follow=True)  # fmt: skip
    said = [str(m) for m in answer.context["messages"]]
    assert said and "not sent anywhere" in said[0] and ": sent." not in said[0]


def test_a_jobs_end_looks_at_its_own_repository_only():
    """A job's end re-evaluates the alerts its repository (and no repository) can have, not
    every repository's: the work does not grow with the fleet (it cost half a second of CPU
    per job at 100 repositories), and another repository's firing alert is left as it is,
    neither resolved nor duplicated."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from borgapp import jobs

    def queries_for_a_jobs_end(repo):
        job = Job.objects.create(kind="backup", repository=repo, trigger="api", status="running")
        with CaptureQueriesContext(connection) as seen:
            jobs.end(job, Job.Status.SUCCEEDED)
        return len(seen)

    first = ready_repo("first")
    fresh_archive(first)
    alone = queries_for_a_jobs_end(first)
    others = [ready_repo(f"other-{index}") for index in range(30)]
    for repo in others:
        fresh_archive(repo, hours=24 * 30)  # their last backup is a month old: overdue
    alerts.evaluate()  # the periodic pass sees them all
    firing = set(Alert.objects.filter(state="firing").values_list("kind", "repository_id"))
    assert {("overdue", repo.pk) for repo in others} <= firing
    assert queries_for_a_jobs_end(first) == alone
    assert set(Alert.objects.filter(state="firing").values_list("kind", "repository_id")) == firing
    # the repository of the job is looked at: its own new condition fires at its job's end
    late = others[0]
    Alert.objects.filter(repository=late).delete()
    queries_for_a_jobs_end(late)
    assert Alert.objects.filter(kind="overdue", repository=late, state="firing").count() == 1
