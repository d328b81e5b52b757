"""Notifications: email, signed webhooks and Apprise URLs, and the per-schedule dead-man pings.
A failing channel never breaks what triggered it: its error is kept on the channel."""

import hashlib
import hmac
import json
import logging
import urllib.error
import urllib.request

from django.conf import settings
from django.core.mail import send_mail
from django.utils import timezone

from borgapp.models import Channel

log = logging.getLogger(__name__)
SIGNATURE_HEADER = "X-OpsCenter-Signature"


def sign(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def _post(url: str, body: bytes, headers: dict) -> None:
    if not url.startswith(("https://", "http://")):
        raise ValueError("a webhook URL must start with https:// or http://")
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    with urllib.request.urlopen(request, timeout=settings.NOTIFY_TIMEOUT) as response:
        if response.status >= 300:
            raise OSError(f"the webhook answered HTTP {response.status}")


def deliver(channel: Channel, event: str, subject: str, text: str, data: dict) -> None:
    """Send one message on one channel; raises on failure (see `send`)."""
    if channel.kind == Channel.Kind.EMAIL:
        addresses = [a.strip() for a in channel.target.split(",") if a.strip()]
        send_mail(subject, text, settings.DEFAULT_FROM_EMAIL, addresses, fail_silently=False)
    elif channel.kind == Channel.Kind.WEBHOOK:
        body = json.dumps(
            {"event": event, "subject": subject, "text": text, "data": data}, default=str
        ).encode()
        headers = {"Content-Type": "application/json", "User-Agent": "opscenter"}
        secret = channel.get_secret()
        if secret:
            headers[SIGNATURE_HEADER] = sign(secret, body)
        _post(channel.target.strip(), body, headers)
    else:
        import apprise

        sender = apprise.Apprise()
        if not sender.add(channel.target.strip()):
            raise ValueError("Apprise does not understand this URL")
        if not sender.notify(title=subject, body=text):
            raise OSError("Apprise could not deliver the message")


def send(event: str, subject: str, text: str, data: dict | None = None) -> int:
    """To every enabled channel that chose this event. Returns how many succeeded."""
    sent = 0
    for channel in Channel.objects.filter(enabled=True):
        if event not in (channel.events or []):
            continue
        if send_to(channel, event, subject, text, data or {}):
            sent += 1
    return sent


def send_to(channel: Channel, event: str, subject: str, text: str, data: dict) -> bool:
    try:
        deliver(channel, event, subject, text, data)
    except Exception as exc:  # any failure of any channel: recorded, never raised
        message = f"{type(exc).__name__}: {exc}"[:2000]
        Channel.objects.filter(pk=channel.pk).update(
            last_error=message, last_error_at=timezone.now()
        )
        log.warning("Notification channel %s failed: %s", channel.name, message)
        return False
    Channel.objects.filter(pk=channel.pk).update(last_sent_at=timezone.now(), last_error="")
    return True


def ping(url: str) -> None:
    """A dead-man ping (healthchecks.io, Uptime Kuma): GET, short timeout, never raises."""
    if not url:
        return
    try:
        with urllib.request.urlopen(url, timeout=settings.NOTIFY_TIMEOUT):
            pass
    except (OSError, ValueError, urllib.error.URLError) as exc:
        log.warning("Ping %s failed: %s", url, exc)


# --- what is sent ------------------------------------------------------------------------------

JOB_EVENT_KINDS = {
    "backup", "prune", "compact", "check", "verify_restore", "extract", "delete", "init",
    "import", "change_passphrase",
}  # fmt: skip


def job_finished(job) -> None:
    """job_failed / job_succeeded, and the schedule's success or failure ping."""
    failed = job.status in ("failed", "interrupted")
    succeeded = job.status in ("succeeded", "warning")
    if job.schedule_id and (failed or succeeded):
        schedule = job.schedule
        ping(schedule.ping_success_url if succeeded else schedule.ping_failure_url)
    if job.kind not in JOB_EVENT_KINDS or not (failed or succeeded):
        return
    where = job.repository_name + (f" ({job.archive_name})" if job.archive_name else "")
    if failed:
        subject = f"[opscenter] {job.get_kind_display()} of {where} {job.status}"
        text = f"Job {job.pk}: {job.error_message or job.status}"
    else:
        subject = f"[opscenter] {job.get_kind_display()} of {where} {job.status}"
        text = f"Job {job.pk} {job.status} in {job.duration or 0:.0f} s."
    data = {"job": job.pk, "kind": job.kind, "repository": job.repository_name,
            "status": job.status, "error_code": job.error_code, "result": job.result}  # fmt: skip
    send("job_failed" if failed else "job_succeeded", subject, text, data)


def alert_changed(alert, fired: bool) -> None:
    what = "FIRING" if fired else "resolved"
    where = f" on {alert.repository.name}" if alert.repository_id else ""
    subject = f"[opscenter] {what}: {alert.get_kind_display()}{where}"
    data = {"alert": alert.pk, "kind": alert.kind, "state": alert.state,
            "repository": alert.repository.name if alert.repository_id else None,
            "reason": alert.reason, "first_seen": alert.first_seen,
            "last_seen": alert.last_seen}  # fmt: skip
    send("alert_firing" if fired else "alert_resolved", subject, alert.reason, data)


def digest() -> int:
    """The daily digest: what ran, what failed, what is overdue, sizes and growth."""
    from datetime import timedelta

    from django.db.models import Count

    from borgapp import health
    from borgapp.models import Alert, Job
    from borgapp.templatetags.humanize_bytes import human_bytes

    since = timezone.now() - timedelta(days=1)
    ran = Job.objects.filter(finished_at__gte=since)
    counts = dict(ran.values_list("status").annotate(n=Count("pk")).order_by())
    lines = ["Jobs of the last 24 hours: " + (
        ", ".join(f"{n} {status}" for status, n in sorted(counts.items())) or "none")]  # fmt: skip
    for job in ran.filter(status__in=["failed", "interrupted"]).order_by("pk")[:50]:
        lines.append(f"  FAILED {job.get_kind_display()} of {job.repository_name} "
                     f"(job {job.pk}): {job.error_message}")  # fmt: skip
    lines.append("")
    lines.append("Repositories:")
    for row in health.repositories():
        repo = row.repository
        lines.append(
            f"  {repo.name}: {row.colour}; {'; '.join(row.reasons)}; "
            f"{row.archive_count} archives, {human_bytes(repo.unique_compressed_size)} stored"
        )
    firing = Alert.objects.filter(state=Alert.State.FIRING)
    lines.append("")
    lines.append(f"Alerts firing: {firing.count()}")
    for alert in firing:
        lines.append(f"  {alert}: {alert.reason}")
    return send("daily_digest", "[opscenter] daily digest", "\n".join(lines), {"counts": counts})
