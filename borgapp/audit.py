"""The audit trail (SEC-09): who did what, from where, and how it ended.

A request's actor, source and client address are kept in a context variable by
`AuditMiddleware`; outside a request (management commands) the source is `cli` and the actor
the operating-system user. Jobs carry their own actor and source, and are audited when they
end. Parameters are stored with anything secret-looking removed."""

import contextvars
import getpass
from datetime import timedelta

from django.core.cache import cache
from django.db.models import F, QuerySet
from django.utils import timezone

from borgapp import throttle
from borgapp.models import AuditEvent, Job

_request = contextvars.ContextVar("opscenter_audit_request", default=None)
SECRET_WORDS = ("passphrase", "password", "secret", "token", "key")
SECRET_KEEP = {"keep", "keep_within"}  # "keep_*" rules are not secrets


def clean(params: dict | None) -> dict:
    """Parameters fit for the trail: secret-looking keys dropped, recursively."""
    result = {}
    for key, value in (params or {}).items():
        lowered = str(key).lower()
        if lowered not in SECRET_KEEP and not lowered.startswith("keep_"):
            if any(word in lowered for word in SECRET_WORDS):
                continue
        result[key] = clean(value) if isinstance(value, dict) else value
    return result


def _source_of(request) -> str:
    return "api" if request.path.startswith("/api/") else "admin"


def _actor_of(user, auth=None) -> str:
    if user is None or not getattr(user, "is_authenticated", False):
        return "anonymous"
    name = user.get_username()
    return f"{name} (token)" if auth is not None and auth.__class__.__name__ == "Token" else name


def context() -> dict:
    """actor, user id, source and client address of whatever is acting now."""
    request = _request.get()
    if request is None:
        try:
            who = getpass.getuser()
        except (KeyError, OSError):
            who = "unknown"
        return {"actor": who, "user_id_ref": None, "source": "cli", "client_address": None}
    user = getattr(request, "user", None)
    authenticated = user is not None and getattr(user, "is_authenticated", False)
    return {
        "actor": _actor_of(user, getattr(request, "auth", None)),
        "user_id_ref": user.pk if authenticated else None,
        "source": _source_of(request),
        "client_address": request.META.get("REMOTE_ADDR") or None,
    }


def record(action: str, target: str = "", *, outcome: str, params=None, message="", job=None,
           **override) -> AuditEvent:  # fmt: skip
    values = {**context(), **override}
    return AuditEvent.objects.create(
        action=action,
        target=str(target)[:255],
        params=clean(params),
        outcome=outcome,
        message=str(message)[:2000],
        job_id_ref=job.pk if job is not None else None,
        **values,
    )


def browsed(archive, *, other=None, **where) -> AuditEvent:
    """Who read an archive's file listing (its contents, or its diff with `other`), and where
    in it (`where`: the folder or filters asked for): one row per page read, from the admin,
    the API and the CLI alike."""
    if other is not None:
        where = {"diff_with": other.name, **where}
    return record(
        "browse", f"{archive.repository.name}::{archive.name}", outcome="success", params=where
    )


# Failed and refused sign-ins are counted, not each written: the first of its kind from an
# address in a window writes a row, the same again within the window adds one to that row's
# count. One client writes at most ATTEMPT_ROWS rows per window and outcome (further user
# names or messages share one more row, "(several)"), however many attempts it makes.
ATTEMPT_WINDOW = 300  # seconds from a row's `at`
ATTEMPT_ROWS = 5


def _attempt_key(parts: tuple) -> str:
    return "opscenter:audit-attempt:" + throttle.digest("\x00".join(parts))


def _count_again(key: str) -> bool:
    pk = cache.get(key)
    if pk is None:
        return False
    since = timezone.now() - timedelta(seconds=ATTEMPT_WINDOW)
    rows = AuditEvent.objects.filter(pk=pk, at__gte=since)
    # The one change the trail allows: one more of the same attempt, on its row, in one
    # UPDATE ... SET count = count + 1 (the queryset's own update() refuses everything).
    return QuerySet.update(rows, count=F("count") + 1) == 1


def record_attempt(action: str, target: str = "", *, outcome: str, message="", **override):
    """A failed or refused sign-in, aggregated per (address, action, source, outcome) and
    window as described above."""
    values = {**context(), **override}
    group = (action, values["source"], outcome, values.get("client_address") or "")
    key = _attempt_key((*group, str(target)[:255], str(values["actor"]), str(message)[:2000]))
    if _count_again(key):
        return
    rows_key = _attempt_key(group)
    cache.add(rows_key, 0, ATTEMPT_WINDOW)
    try:
        rows = cache.incr(rows_key)
    except ValueError:  # expired in between
        rows = 1
    if rows > ATTEMPT_ROWS:
        key = _attempt_key((*group, "(several)"))
        if _count_again(key):
            return
        target, values["actor"] = "(several)", "(several)"
        message = "Further attempts from this address, with other user names or messages."
    event = record(action, target, outcome=outcome, message=message, **values)
    cache.set(key, event.pk, ATTEMPT_WINDOW)


def job_finished(job: Job) -> None:
    """One row per job, when it ends (whatever started it)."""
    if not job.is_finished:
        return
    user = job.requested_by
    if job.status in Job.OK:
        outcome = AuditEvent.Outcome.SUCCESS
    elif job.status == Job.Status.SKIPPED:
        outcome = AuditEvent.Outcome.REFUSED
    else:
        outcome = AuditEvent.Outcome.FAILURE
    target = job.repository_name + (f"::{job.archive_name}" if job.archive_name else "")
    AuditEvent.objects.create(
        action=job.kind,
        target=target[:255],
        params=clean(job.params),
        outcome=outcome,
        message=(job.error_message or job.status)[:2000],
        job_id_ref=job.pk,
        actor=user.get_username() if user else ("schedule" if job.schedule_id else job.trigger),
        user_id_ref=user.pk if user else None,
        source=job.trigger,
        client_address=job.client_address,
    )


class AuditMiddleware:
    """Makes the request available to `context()` for the length of the request."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        token = _request.set(request)
        try:
            return self.get_response(request)
        finally:
            _request.reset(token)


# --- signals: sign-in, tokens ------------------------------------------------------------------


def _signed_in(sender, request, user, **kwargs):
    record(
        "sign_in",
        user.get_username(),
        outcome="success",
        user_id_ref=user.pk,
        actor=user.get_username(),
    )


def _sign_in_failed(sender, credentials, request=None, **kwargs):
    name = str((credentials or {}).get("username", ""))[:150]
    address = request.META.get("REMOTE_ADDR") if request is not None else None
    record_attempt(
        "sign_in",
        name,
        outcome="failure",
        message="wrong user name or password",
        actor=name or "anonymous",
        client_address=address,
    )


def _token_saved(sender, instance, created, **kwargs):
    if created:
        record("token.created", instance.user.get_username(), outcome="success")


def _token_deleted(sender, instance, **kwargs):
    record("token.revoked", instance.user.get_username(), outcome="success")


def connect() -> None:
    from django.contrib.auth.signals import user_logged_in, user_login_failed
    from django.db.models.signals import post_delete, post_save
    from rest_framework.authtoken.models import Token

    user_logged_in.connect(_signed_in, dispatch_uid="audit-sign-in")
    user_login_failed.connect(_sign_in_failed, dispatch_uid="audit-sign-in-failed")
    post_save.connect(_token_saved, sender=Token, dispatch_uid="audit-token-created")
    post_delete.connect(_token_deleted, sender=Token, dispatch_uid="audit-token-revoked")
    # not the trail's, but connected with it: a new token passes a blocked address too
    post_save.connect(throttle.token_saved, sender=Token, dispatch_uid="throttle-token-saved")
    post_delete.connect(throttle.token_deleted, sender=Token, dispatch_uid="throttle-token-gone")
