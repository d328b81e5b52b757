"""Failed sign-ins, counted in Django's cache, which is shared by every web process (a file
cache in the data directory by default; CACHE_URL for Redis or memcached).

`blocked(key)` and `note_failure(key)` count failures under any opaque key: ten in a window
of a minute block the key for a minute from the tenth. The helpers below say which keys a
sign-in uses; user names and tokens appear in a key only as a keyed hash, never in clear.

- API tokens are counted per client address. A token is 160 random bits: it cannot be
  guessed, so the counter only spares the database and the audit trail a flood. While an
  address is blocked, a token known to be valid (issued, or seen to authenticate, in the
  last month) is still checked and passes; any other key gets 429 without a lookup.
- The admin's password is counted per (address, user name) at ten, per user name across
  addresses at fifty (guessing from many addresses), per address across user names at a
  hundred (one client trying many names). Guessing one user's password from an address
  stops after ten, which leaves that address far below its own bound: other users signing
  in from it (everyone, behind a proxy) are not stopped."""

import time

from django.core.cache import cache
from django.utils.crypto import salted_hmac

FAILURES_ALLOWED = 10  # per key and window, unless a helper below says otherwise
USER_FAILURES_ALLOWED = 50  # one user name, from all addresses together
ADDRESS_LOGIN_FAILURES_ALLOWED = 100  # one address, all user names together
WINDOW_SECONDS = 60
KNOWN_TOKEN_SECONDS = 30 * 24 * 3600
MESSAGE = "Too many failed sign-in attempts; try again in a minute."
clock = time.time  # replaced by tests that move time


def _key(key: str) -> str:
    return f"opscenter:authfail:{key}"


def blocked(key: str, limit: int = FAILURES_ALLOWED) -> bool:
    count, since = cache.get(_key(key), (0, 0.0))
    return count >= limit and clock() - since < WINDOW_SECONDS


def note_failure(key: str, limit: int = FAILURES_ALLOWED) -> None:
    """Count a failure in the key's current window (a minute from its first failure); the
    `limit`-th starts a fresh minute of refusal. Two processes counting at the same instant
    may count once: a bound of ten, give or take, not an exact one."""
    key, now = _key(key), clock()
    count, since = cache.get(key, (0, now))
    if now - since >= WINDOW_SECONDS:
        count, since = 0, now
    count += 1
    if count == limit:
        since = now
    cache.set(key, (count, since), timeout=max(1, int(since + WINDOW_SECONDS - now) + 1))


def digest(value: str) -> str:
    """A keyed hash (the installation's secret key): a cache entry names no user or token."""
    return salted_hmac("opscenter.throttle", value, algorithm="sha256").hexdigest()[:32]


def address_key(address: str | None) -> str:
    return f"address:{address or '?'}"


# --- API tokens -------------------------------------------------------------------------------


def _known_key(token: str) -> str:
    return f"opscenter:token-known:{digest(token)}"


def token_known(token: str) -> bool:
    return cache.get(_known_key(token)) is not None


def remember_token(token: str) -> None:
    """Note a valid token (read once per request, written about once a fortnight)."""
    key, now = _known_key(token), clock()
    until = cache.get(key)
    if until is None or until - now < KNOWN_TOKEN_SECONDS / 2:
        cache.set(key, now + KNOWN_TOKEN_SECONDS, timeout=KNOWN_TOKEN_SECONDS)


def forget_token(token: str) -> None:
    cache.delete(_known_key(token))


def token_saved(sender, instance, created, **kwargs):
    """Signal receiver: a token just issued passes from a blocked address too."""
    remember_token(instance.key)


def token_deleted(sender, instance, **kwargs):
    forget_token(instance.key)


# --- the admin's password ---------------------------------------------------------------------


def _login_keys(address: str | None, username: str) -> list[tuple[str, int]]:
    user = digest(username or "")
    return [
        (f"login:{address or '?'}:{user}", FAILURES_ALLOWED),
        (f"login-user:{user}", USER_FAILURES_ALLOWED),
        (f"login-address:{address or '?'}", ADDRESS_LOGIN_FAILURES_ALLOWED),
    ]


def login_blocked(address: str | None, username: str) -> bool:
    return any(blocked(key, limit) for key, limit in _login_keys(address, username))


def note_login_failure(address: str | None, username: str) -> None:
    for key, limit in _login_keys(address, username):
        note_failure(key, limit)
