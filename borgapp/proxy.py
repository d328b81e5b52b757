"""The client's address behind a reverse proxy. Only a request whose peer is a configured
trusted proxy (OPSCENTER_TRUSTED_PROXIES: addresses or networks) has its X-Forwarded-For
read; the client is the nearest address in it that is not itself a trusted proxy. Every
user of REMOTE_ADDR (the sign-in throttle, the audit trail, the metrics allow list) then
sees the client, not the proxy. With no trusted proxy configured nothing changes, and a
forged header from anyone else is ignored."""

import ipaddress
from functools import lru_cache

from django.conf import settings


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


class TrustedProxyMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        if settings.TRUSTED_PROXIES:
            peer = request.META.get("REMOTE_ADDR")
            client = client_address(peer, request.META.get("HTTP_X_FORWARDED_FOR"))
            if client != peer:
                request.META["OPSCENTER_PROXY_ADDR"] = peer
                request.META["REMOTE_ADDR"] = client
        return self.get_response(request)
