"""Token authentication, with failed attempts throttled per client address (see
borgapp.throttle): while an address is blocked, a known valid token still passes and any
other key is answered 429 without a database lookup."""

from rest_framework.authentication import TokenAuthentication
from rest_framework.exceptions import AuthenticationFailed, Throttled

from borgapp import throttle


class ThrottledTokenAuthentication(TokenAuthentication):
    """`Authorization: Token <key>`. DRF makes one instance per request."""

    address: str | None = None

    def authenticate(self, request):
        self.address = request.META.get("REMOTE_ADDR")
        try:
            return super().authenticate(request)
        except AuthenticationFailed as exc:
            if throttle.blocked(throttle.address_key(self.address)):
                self._refuse()  # a malformed header, or a known token revoked meanwhile
            throttle.note_failure(throttle.address_key(self.address))
            self._audit("failure", exc.detail)
            raise

    def authenticate_credentials(self, key):
        if throttle.blocked(throttle.address_key(self.address)) and not throttle.token_known(key):
            self._refuse()
        user, token = super().authenticate_credentials(key)
        throttle.remember_token(key)
        return user, token

    def _refuse(self):
        self._audit("refused", throttle.MESSAGE)
        raise Throttled(wait=throttle.WINDOW_SECONDS, detail=throttle.MESSAGE)

    def _audit(self, outcome: str, message) -> None:
        from borgapp import audit  # models: not while DRF's settings are first read

        audit.record_attempt(
            "sign_in",
            "api token",
            outcome=outcome,
            message=message,
            actor="anonymous",
            client_address=self.address,
        )
