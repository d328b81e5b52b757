"""Notifications: email, signed webhooks and Apprise URLs, and the per-schedule dead-man pings.
A failing channel never breaks what triggered it: its error is kept on the channel. URLs are
stored encrypted and decrypted here only; outbound refuses internal and local targets."""

import hashlib
import hmac
import http.client
import json
import logging
import smtplib
from datetime import timedelta

from django.conf import settings
from django.core.mail import send_mail
from django.db.models import Count
from django.utils import timezone

from borgapp import health, outbound
from borgapp.models import Alert, Channel, Job
from borgapp.units import human_bytes

log = logging.getLogger(__name__)
SIGNATURE_HEADER = "X-OpsCenter-Signature"


def sign(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def deliver(channel: Channel, event: str, subject: str, text: str, data: dict) -> None:
    """Send one message on one channel; raises on failure (see `send`). A webhook or Apprise
    URL is decrypted here only, and checked again before anything connects (outbound)."""
    if channel.kind == Channel.Kind.EMAIL:
        addresses = [a.strip() for a in channel.get_target().split(",") if a.strip()]
        send_mail(subject, text, settings.DEFAULT_FROM_EMAIL, addresses, fail_silently=False)
    elif channel.kind == Channel.Kind.WEBHOOK:
        body = json.dumps(
            {"event": event, "subject": subject, "text": text, "data": data}, default=str
        ).encode()
        headers = {"Content-Type": "application/json", "User-Agent": "opscenter"}
        secret = channel.get_secret()
        if secret:
            headers[SIGNATURE_HEADER] = sign(secret, body)
        status = outbound.request("POST", channel.get_target(), body=body, headers=headers)
        if status >= 300:
            raise OSError(f"the webhook answered HTTP {status}")
    else:
        plugin = outbound.check_apprise_url(channel.get_target(), sending=True)
        with outbound.guarded() as guard:
            delivered = plugin.notify(title=subject, body=text)
        if guard.refused is not None:
            raise guard.refused
        if not delivered:
            raise OSError("Apprise could not deliver the message")


def send(event: str, subject: str, text: str, data: dict | None = None, *, also=()) -> int:
    """To every enabled channel that chose this event (or one of `also`). Returns how many
    succeeded."""
    sent = 0
    wanted = {event, *also}
    for channel in Channel.objects.filter(enabled=True):
        if not wanted & set(channel.events or []):
            continue
        if send_to(channel, event, subject, text, data or {}):
            sent += 1
    return sent


def send_to(channel: Channel, event: str, subject: str, text: str, data: dict) -> bool:
    try:
        deliver(channel, event, subject, text, data)
    except Exception as exc:  # any failure of any channel: recorded, never raised
        message = failure_text(exc)[:2000]
        Channel.objects.filter(pk=channel.pk).update(
            last_error=message, last_error_at=timezone.now()
        )
        log.warning("Notification channel %s failed: %s", channel.name, message)
        return False
    Channel.objects.filter(pk=channel.pk).update(last_sent_at=timezone.now(), last_error="")
    return True


def failure_text(exc: Exception) -> str:
    """Why a message was not sent, in words for a person (never a Python class name)."""
    if isinstance(exc, outbound.Refused):
        return f"Not sent: {exc}"
    if isinstance(exc, TimeoutError):
        return "Not sent: the receiver did not answer in time."
    if isinstance(exc, smtplib.SMTPException):
        return f"Not sent: the mail server refused it ({exc})."
    if isinstance(exc, OSError) and exc.strerror:
        return f"Not sent: {exc.strerror}."
    return f"Not sent: {exc}" if str(exc) else "Not sent."


def mail_stays_here() -> bool:
    """Whether email "sent" goes nowhere: the console, memory or dummy backend (EMAIL_URL
    consolemail:// is the default until an SMTP server is configured)."""
    return settings.EMAIL_BACKEND.rsplit(".", 2)[-2] in ("console", "locmem", "dummy", "filebased")


def ping(url: str) -> None:
    """A dead-man ping (healthchecks.io, Uptime Kuma): GET, short timeout, never raises."""
    if not url:
        return
    try:
        status = outbound.request("GET", url, headers={"User-Agent": "opscenter"}, what="ping URL")
        if status >= 300:
            raise OSError(f"HTTP {status}")
    except (OSError, ValueError, http.client.HTTPException) as exc:
        log.warning("Ping %s failed: %s", outbound.mask(url), exc)  # the URL is a secret


# --- what is sent ------------------------------------------------------------------------------

JOB_EVENT_KINDS = {
    "backup", "prune", "compact", "check", "verify_restore", "extract", "delete", "init",
    "import", "change_passphrase",
}  # fmt: skip


def job_finished(job) -> None:
    """job_failed, job_warning or job_succeeded, and the schedule's success or failure ping.

    A warning (borg exit 1: a file vanished or could not be read, some sources missing) goes
    to the channels that chose job_warning, and to those that chose job_succeeded as before,
    since it is a success with remarks."""
    failed = job.status in ("failed", "interrupted")
    succeeded = job.status in Job.OK
    if job.schedule_id and (failed or succeeded):
        schedule = job.schedule
        ping(schedule.ping_success_url if succeeded else schedule.ping_failure_url)
    if job.kind not in JOB_EVENT_KINDS or not (failed or succeeded):
        return
    where = job.repository_name + (f" ({job.archive_name})" if job.archive_name else "")
    subject = f"[opscenter] {job.get_kind_display()} of {where} {job.status}"
    warned = job.status == Job.Status.WARNING
    if failed:
        text = f"Job {job.pk}: {job.error_message or job.status}"
    elif warned:
        text = f"Job {job.pk} ended with a warning: {job.error_message or 'see the job page'}"
    else:
        text = f"Job {job.pk} {job.status} in {job.duration or 0:.0f} s."
    data = {"job": job.pk, "kind": job.kind, "repository": job.repository_name,
            "status": job.status, "error_code": job.error_code, "result": job.result}  # fmt: skip
    if failed:
        send("job_failed", subject, text, data)
    elif warned:
        send("job_warning", subject, text, data, also=("job_succeeded",))
    else:
        send("job_succeeded", subject, text, data)


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
