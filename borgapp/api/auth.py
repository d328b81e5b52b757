"""Token and session authentication, with failed attempts throttled per client address."""

from rest_framework.authentication import TokenAuthentication
from rest_framework.exceptions import AuthenticationFailed, Throttled

from borgapp import throttle


class ThrottledTokenAuthentication(TokenAuthentication):
    """`Authorization: Token <key>`. After too many failures from one address, answer 429
    for a while instead of checking more keys."""

    def authenticate(self, request):
        address = request.META.get("REMOTE_ADDR")
        if throttle.blocked(address):
            raise Throttled(wait=throttle.WINDOW_SECONDS, detail=throttle.MESSAGE)
        try:
            return super().authenticate(request)
        except AuthenticationFailed as exc:
            throttle.note_failure(address)
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
