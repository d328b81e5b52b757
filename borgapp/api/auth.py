"""Token and session authentication, with failed attempts throttled per client address."""

from django.core.cache import cache
from rest_framework.authentication import TokenAuthentication
from rest_framework.exceptions import AuthenticationFailed, Throttled

FAILURES_ALLOWED = 10  # per address and window
WINDOW_SECONDS = 60


def _key(request) -> str:
    return f"opscenter:authfail:{request.META.get('REMOTE_ADDR', '?')}"


class ThrottledTokenAuthentication(TokenAuthentication):
    """`Authorization: Token <key>`. After too many failures from one address, answer 429
    for a while instead of checking more keys."""

    def authenticate(self, request):
        key = _key(request)
        if cache.get(key, 0) >= FAILURES_ALLOWED:
            raise Throttled(wait=WINDOW_SECONDS, detail="Too many failed sign-in attempts.")
        try:
            return super().authenticate(request)
        except AuthenticationFailed as exc:
            if not cache.add(key, 1, WINDOW_SECONDS):
                cache.incr(key)
            from borgapp import audit

            audit.record(
                "sign_in",
                "api token",
                outcome="failure",
                message=exc.detail,
                actor="anonymous",
                client_address=request.META.get("REMOTE_ADDR"),
            )
            raise
