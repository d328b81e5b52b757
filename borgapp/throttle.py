"""Failed sign-ins counted per client address, for the API's token check and the admin's
login form alike. The counter lives in Django's cache, which is shared by every web process
(a file cache in the data directory by default; CACHE_URL for Redis or memcached)."""

import time

from django.core.cache import cache

FAILURES_ALLOWED = 10  # per address and window
WINDOW_SECONDS = 60
MESSAGE = "Too many failed sign-in attempts from this address; try again in a minute."
clock = time.time  # replaced by tests that move time


def _key(address: str | None) -> str:
    return f"opscenter:authfail:{address or '?'}"


def blocked(address: str | None) -> bool:
    count, since = cache.get(_key(address), (0, 0.0))
    return count >= FAILURES_ALLOWED and clock() - since < WINDOW_SECONDS


def note_failure(address: str | None) -> None:
    """Count a failure in the address's current window (a minute from its first failure);
    the tenth starts a fresh minute of refusal. Two processes counting at the same instant
    may count once: a bound of ten, give or take, not an exact one."""
    key, now = _key(address), clock()
    count, since = cache.get(key, (0, now))
    if now - since >= WINDOW_SECONDS:
        count, since = 0, now
    count += 1
    if count == FAILURES_ALLOWED:
        since = now
    cache.set(key, (count, since), timeout=max(1, int(since + WINDOW_SECONDS - now) + 1))
