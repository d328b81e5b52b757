"""The client's address behind a reverse proxy. Only a request whose peer is a configured
trusted proxy (OPSCENTER_TRUSTED_PROXIES: addresses or networks) has its X-Forwarded-For
read; the client is the nearest address in it that is not itself a trusted proxy. Every
user of REMOTE_ADDR (the sign-in throttle, the audit trail, the metrics allow list) then
sees the client, not the proxy. With no trusted proxy configured nothing changes, and a
forged header from anyone else is ignored.

A request carrying X-Forwarded-For from a peer that is not a trusted proxy came through
something that forwards for others: its META gets FORWARDED_UNTRUSTED (the metrics allow
list then does not vouch for it: the real client is unknown). When that peer is a loopback
address, a reverse proxy on this host is not listed, and every client shares its address
(one sign-in throttle, one address in the audit trail): this is logged once per process and
remembered in the cache, for the start-up check W041 to report."""

import ipaddress
import logging
import time
from functools import lru_cache

from django.conf import settings
from django.core.cache import cache

log = logging.getLogger(__name__)
FORWARDED_UNTRUSTED = "OPSCENTER_FORWARDED_UNTRUSTED"
SEEN_KEY = "opscenter:unlisted-proxy"
SEEN_SECONDS = 30 * 24 * 3600  # the check reports a sighting this long
_noted_at = 0.0  # this process's last note in the cache


@lru_cache(maxsize=8)
def _networks(entries: tuple[str, ...]) -> tuple:
    """The trusted networks; an entry that is not one is left out (check E040 names it)."""
    networks = []
    for entry in entries:
        try:
            networks.append(ipaddress.ip_network(entry.strip(), strict=False))
        except ValueError:
            continue
    return tuple(networks)


def _trusted(address: str, networks) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in network for network in networks)


def client_address(peer: str | None, forwarded_for: str | None) -> str | None:
    networks = _networks(tuple(settings.TRUSTED_PROXIES))
    if not peer or not forwarded_for or not _trusted(peer, networks):
        return peer
    hops = [hop.strip() for hop in forwarded_for.split(",")]
    for hop in reversed(hops):
        try:
            ipaddress.ip_address(hop)
        except ValueError:
            return peer  # a malformed chain tells nothing reliable
        if not _trusted(hop, networks):
            return hop
    return hops[0]


def _loopback(address: str) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return (getattr(ip, "ipv4_mapped", None) or ip).is_loopback


def note_unlisted_proxy(peer: str) -> None:
    """Remember a loopback peer forwarding for others (refreshed hourly per process)."""
    global _noted_at
    now = time.time()
    if now - _noted_at < 3600:
        return
    if not _noted_at:
        log.warning(
            "Requests from %s carry X-Forwarded-For but %s is not in "
            "OPSCENTER_TRUSTED_PROXIES: every client behind that proxy shares one address "
            "(sign-in throttle, audit trail) and /metrics refuses them without a token.",
            peer,
            peer,
        )
    _noted_at = now
    cache.set(SEEN_KEY, {"peer": peer, "at": now}, timeout=SEEN_SECONDS)


def unlisted_proxy_seen() -> dict | None:
    """The last sighting of a loopback peer forwarding for others, if it is still not a
    trusted proxy: {"peer": address, "at": epoch seconds}."""
    seen = cache.get(SEEN_KEY)
    if not seen or _trusted(seen["peer"], _networks(tuple(settings.TRUSTED_PROXIES))):
        return None
    return seen


class TrustedProxyMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        peer = request.META.get("REMOTE_ADDR")
        forwarded = request.META.get("HTTP_X_FORWARDED_FOR")
        if peer and forwarded:
            if _trusted(peer, _networks(tuple(settings.TRUSTED_PROXIES))):
                client = client_address(peer, forwarded)
                if client != peer:
                    request.META["OPSCENTER_PROXY_ADDR"] = peer
                    request.META["REMOTE_ADDR"] = client
            else:
                request.META[FORWARDED_UNTRUSTED] = peer
                if _loopback(peer):
                    note_unlisted_proxy(peer)
        return self.get_response(request)
