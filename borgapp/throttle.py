"""Failed sign-ins counted per client address, for the API's token check and the admin's
login form alike. The counter lives in Django's cache, which is shared by every web process
(a file cache in the data directory by default; CACHE_URL for Redis or memcached)."""

from django.core.cache import cache

FAILURES_ALLOWED = 10  # per address and window
WINDOW_SECONDS = 60
MESSAGE = "Too many failed sign-in attempts from this address; try again in a minute."


def _key(address: str | None) -> str:
    return f"opscenter:authfail:{address or '?'}"


def blocked(address: str | None) -> bool:
    return cache.get(_key(address), 0) >= FAILURES_ALLOWED


def note_failure(address: str | None) -> None:
    key = _key(address)
    if not cache.add(key, 1, WINDOW_SECONDS):
        try:
            cache.incr(key)
        except ValueError:  # expired between the two calls
            cache.add(key, 1, WINDOW_SECONDS)
