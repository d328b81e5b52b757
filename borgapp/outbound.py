"""Where notifications may go (issue 10). Webhooks, pings and Apprise URLs that point at this
machine or an internal network (loopback, link-local such as cloud metadata at
169.254.169.254, private, multicast, reserved or unspecified addresses) are refused, unless
OPSCENTER_NOTIFY_ALLOW_HOSTS names the host or its network. Apprise is allowed for a short
list of network services only: never a scheme that runs or reads something on this machine
(file://, windows://, dbus://, syslog://, ...), never a parameter that names a file.

A target is checked when it is saved (a clear error in the form) and again when a message is
sent, since DNS can change in between: webhooks and pings then connect to the very address
that was checked, and every connection Apprise opens (redirects included) is checked too.
Refusals name the host and the problem, never the secret part of a URL."""

import contextlib
import http.client
import ipaddress
import re
import socket
import ssl
import threading
from urllib.parse import urlsplit

from django.conf import settings

# Apprise services whose URL names the server that is connected to: that host is checked.
APPRISE_HOSTED = {
    "json", "jsons", "xml", "xmls", "form", "forms", "gotify", "gotifys", "ntfy", "ntfys",
    "mmost", "mmosts", "rocket", "rockets", "apprise", "apprises", "signal", "signals",
}  # fmt: skip
# Apprise services at fixed public addresses: their URL's "host" is a token, not a host.
APPRISE_SERVICES = {"discord", "slack", "tgram", "pover", "pbul", "pagerduty", "opsgenie"}
APPRISE_SCHEMES = APPRISE_HOSTED | APPRISE_SERVICES
# parameters that make Apprise read a file or fetch a URL on the sender's behalf
APPRISE_REFUSED_PARAMETERS = {"attach", "attachment", "template"}
ALLOW_SETTING = "OPSCENTER_NOTIFY_ALLOW_HOSTS"


class Refused(ValueError):
    """A notification target this app does not send to."""


def _ip(text: str):
    try:
        return ipaddress.ip_address(text.strip("[]").split("%", 1)[0])
    except ValueError:
        return None


def _allowed() -> tuple[set, list]:
    """The host names and networks of OPSCENTER_NOTIFY_ALLOW_HOSTS."""
    names, networks = set(), []
    for entry in settings.NOTIFY_ALLOW_HOSTS:
        entry = entry.strip().lower().rstrip(".")
        if not entry:
            continue
        try:
            networks.append(ipaddress.ip_network(entry.strip("[]"), strict=False))
        except ValueError:
            names.add(entry)
    return names, networks


def _internal(address) -> str:
    """What kind of internal address this is, or "" for a public one."""
    if address.version == 6 and address.ipv4_mapped:
        address = address.ipv4_mapped
    for attribute, what in (
        ("is_loopback", "loopback"),
        ("is_link_local", "link-local"),
        ("is_multicast", "multicast"),
        ("is_unspecified", "unspecified"),
        ("is_reserved", "reserved"),
        ("is_private", "private"),
        ("is_site_local", "site-local"),
    ):
        if getattr(address, attribute, False):
            return what
    return "" if address.is_global else "non-public"


def _check_address(address, host: str, networks: list) -> None:
    mapped = address.ipv4_mapped if address.version == 6 else None
    if any(address in net or (mapped is not None and mapped in net) for net in networks):
        return
    what = _internal(address)
    if what:
        where = f"{host} is" if _ip(host) == address else f"{host} resolves to {address},"
        article = "an" if what[0] in "aeiou" else "a"
        raise Refused(
            f"{where} {article} {what} address: notifications do not go to internal targets "
            f"unless {ALLOW_SETTING} names them."
        )


def resolve(host: str, port: int) -> list[str]:
    """The addresses a host name resolves to (a function of its own for the tests)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(info[4][0] for info in infos))


def check_host(host: str, port: int, *, sending: bool) -> list[str]:
    """Refuse an internal host; return the addresses to connect to (a host allowed by name
    is returned as is, for the system to resolve). When saving, a name that does not resolve
    (yet) passes: it is checked again when sending."""
    host = host.lower().rstrip(".")
    names, networks = _allowed()
    literal = _ip(host)
    if literal is not None:
        _check_address(literal, host, networks)
        return [str(literal)]
    if host in names:
        return [host]
    try:
        addresses = resolve(host, port)
    except (OSError, UnicodeError) as exc:
        if not sending:
            return []
        raise Refused(
            f"{host} does not resolve ({getattr(exc, 'strerror', None) or exc})."
        ) from None
    if not addresses and sending:
        raise Refused(f"{host} does not resolve.")
    for address in addresses:
        _check_address(_ip(address), host, networks)
    return addresses


def check_http_url(url: str, *, what: str = "webhook URL", sending: bool = False):
    """An http(s) URL to a permitted host: (its parts, the addresses to connect to)."""
    url = (url or "").strip()
    if not url:
        raise Refused(f"No {what} is stored.")
    try:
        parts = urlsplit(url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise Refused(f"The {what} is not a valid URL.") from None
    if parts.scheme not in ("https", "http"):
        raise Refused(f"A {what} must start with https:// or http://.")
    if not parts.hostname:
        raise Refused(f"The {what} names no host.")
    return parts, check_host(parts.hostname, port, sending=sending)


def check_apprise_url(url: str, *, sending: bool = False):
    """One Apprise URL of an allowed service to a permitted host: its Apprise plugin."""
    import apprise
    from apprise.utils.parse import parse_url, parse_urls

    url = (url or "").strip()
    if not url:
        raise Refused("No Apprise URL is stored.")
    if len(parse_urls(url)) != 1:
        raise Refused("Give exactly one Apprise URL per channel.")
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if scheme not in APPRISE_SCHEMES:
        raise Refused(
            f"The Apprise scheme {scheme or '(none)'}:// is not allowed; allowed are "
            f"{', '.join(sorted(APPRISE_SCHEMES))} (email goes through an email channel, "
            "an https URL through a webhook)."
        )
    parsed = parse_url(url, verify_host=False)  # as Apprise reads it (also after a #)
    for name in (parsed or {}).get("qsd", {}):
        if name.lstrip("+-:") in APPRISE_REFUSED_PARAMETERS:
            raise Refused(f"The Apprise parameter {name}= (a file or URL to read) is not allowed.")
    plugin = apprise.Apprise.instantiate(url) if parsed else None
    if plugin is None:
        raise Refused("Apprise does not understand this URL.")
    cloud = scheme in ("ntfy", "ntfys") and getattr(plugin, "mode", "") == "cloud"
    if scheme in APPRISE_HOSTED and not cloud:
        if not plugin.host:
            raise Refused("The Apprise URL names no host.")
        port = plugin.port or (443 if getattr(plugin, "secure", False) else 80)
        check_host(plugin.host, port, sending=sending)
    return plugin


# --- sending -----------------------------------------------------------------------------------


def _connector(addresses: list[str]):
    def connect(address, timeout=socket._GLOBAL_DEFAULT_TIMEOUT, source_address=None):
        error = OSError("no address to connect to")
        for host in addresses:
            try:
                return socket.create_connection((host, address[1]), timeout, source_address)
            except OSError as exc:
                error = exc
        raise error

    return connect


def request(method: str, url: str, *, body=None, headers=None, what="webhook URL") -> int:
    """One HTTP request to a checked URL, to the checked address (the certificate is still
    verified for the host name); redirects are not followed. Returns the status."""
    parts, addresses = check_http_url(url, what=what, sending=True)
    secure = parts.scheme == "https"
    port = parts.port or (443 if secure else 80)
    timeout = settings.NOTIFY_TIMEOUT
    if secure:
        connection = http.client.HTTPSConnection(
            parts.hostname, port, timeout=timeout, context=ssl.create_default_context()
        )
    else:
        connection = http.client.HTTPConnection(parts.hostname, port, timeout=timeout)
    connection._create_connection = _connector(addresses)
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        response.read(1 << 16)
        return response.status
    finally:
        connection.close()


_guard = threading.local()
_install_lock = threading.Lock()


@contextlib.contextmanager
def guarded():
    """Within it, every connection urllib3 (so Apprise, through requests) opens in this
    thread is checked first and goes to the address checked; a refusal is kept on the
    yielded object (the library itself only sees a failed connection)."""
    _install_guard()
    state = type("Guard", (), {"refused": None})()
    _guard.state = state
    try:
        yield state
    finally:
        _guard.state = None


def _install_guard() -> None:
    from urllib3.util import connection

    with _install_lock:
        if getattr(connection.create_connection, "opscenter_guard", False):
            return
        original = connection.create_connection

        def create_connection(address, *args, **kwargs):
            state = getattr(_guard, "state", None)
            if state is None:
                return original(address, *args, **kwargs)
            host, port = address
            try:
                addresses = check_host(host, port, sending=True)
            except Refused as exc:
                state.refused = exc
                raise OSError(f"refused: {exc}") from None
            error = OSError("no address to connect to")
            for target in addresses:
                try:
                    return original((target, port), *args, **kwargs)
                except OSError as exc:
                    error = exc
            raise error

        create_connection.opscenter_guard = True
        connection.create_connection = create_connection


# --- what anyone may see -------------------------------------------------------------------

_LABEL = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)")


def _shown_host(host: str) -> bool:
    """A real host name or address (shown), not a token in the host's place (hidden)."""
    if host == "localhost" or _ip(host) is not None:
        return True
    labels = host.split(".")
    top = labels[-1]
    return (
        len(labels) >= 2
        and all(_LABEL.fullmatch(label) for label in labels)
        and (top.isalpha() or top.startswith("xn--"))
    )


def mask(url: str) -> str:
    """A URL as anyone may see it: its scheme and host only, e.g. ntfys://…@ntfy.example/…
    or https://hc-ping.com/… (a token in the host's place, as with discord://, is hidden)."""
    url = (url or "").strip()
    found = re.match(r"([A-Za-z][A-Za-z0-9+.-]*)://", url)
    if not found:
        return "…" if url else ""
    scheme = found.group(1).lower()
    try:
        parts = urlsplit(url)
        host, port = (parts.hostname or "").lower(), parts.port
    except ValueError:
        return f"{scheme}://…"
    if not host or not _shown_host(host):
        return f"{scheme}://…"
    shown = f"[{host}]" if ":" in host else host
    if port:
        shown += f":{port}"
    user = "…@" if "@" in parts.netloc else ""
    rest = "/…" if parts.path.strip("/") or parts.query or parts.fragment else ""
    return f"{scheme}://{user}{shown}{rest}"
