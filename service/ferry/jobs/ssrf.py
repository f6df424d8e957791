"""Guard for client-supplied callback URLs (server-side request forgery).

A callback URL makes ferry send a POST wherever a client points it, from inside the cluster. The guard
resolves the host once, refuses the URL if any address is not a public unicast address (loopback,
RFC 1918, link-local with the cloud metadata endpoint, ULA, CGNAT, multicast, reserved, ...), and
returns the checked address so the sender connects to exactly that address: a second resolution
could answer differently (DNS rebinding). ``allow_hosts`` exempts targets from the address check only
(scheme and userinfo rules always apply): ``host:port``, ``host`` (the scheme's default port), or a URL
prefix. Never a whole host: with ``127.0.0.1`` allowed for one receiver, a client must not reach every
other port of it (a port scanner, and a way into sidecars and admin ports).
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

from ferry.errors import CallbackUrlForbidden

MAX_URL_LENGTH = 2048
DEFAULT_PORTS = {"http": 80, "https": 443}

Resolver = Callable[[str, int], Awaitable[list[str]]]
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# Whitespace, control characters and backslashes are where URL parsers disagree (urlsplit silently
# drops tabs and newlines, browsers treat '\' as '/'); a callback URL never needs them.
_UNSAFE_CHARS = re.compile(r"[\x00-\x20\x7f\\]")
_HOSTNAME = re.compile(r"^[a-z0-9_.-]+$")

# Explicit blocks, first match wins: ipaddress' is_global/is_private were wrong for several ranges
# before Python 3.11.10 / 3.12.4 (e.g. 224.0.0.0/4 counted as global), so the named ranges are listed
# here and `not is_global` is only the last net.
_BLOCKS: list[tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, str]] = [
    (ipaddress.ip_network(net), kind)
    for net, kind in [
        ("0.0.0.0/8", "unspecified"),
        ("10.0.0.0/8", "private"),
        ("100.64.0.0/10", "shared (CGNAT)"),
        ("127.0.0.0/8", "loopback"),
        ("169.254.0.0/16", "link-local"),
        ("172.16.0.0/12", "private"),
        ("192.0.0.0/24", "reserved"),
        ("192.0.2.0/24", "documentation"),
        ("192.88.99.0/24", "reserved"),
        ("192.168.0.0/16", "private"),
        ("198.18.0.0/15", "benchmarking"),
        ("198.51.100.0/24", "documentation"),
        ("203.0.113.0/24", "documentation"),
        ("224.0.0.0/4", "multicast"),
        ("240.0.0.0/4", "reserved"),
        ("::/128", "unspecified"),
        ("::1/128", "loopback"),
        ("::ffff:0:0/96", "IPv4-mapped IPv6"),
        ("::/96", "IPv4-compatible IPv6"),
        ("64:ff9b:1::/48", "local NAT64"),
        ("100::/64", "discard-only"),
        ("2001::/32", "Teredo"),
        ("2001:db8::/32", "documentation"),
        ("fc00::/7", "unique-local"),
        ("fe80::/10", "link-local"),
        ("fec0::/10", "site-local"),
        ("ff00::/8", "multicast"),
    ]
]
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


@dataclass(frozen=True)
class CallbackTarget:
    """A checked callback URL and the address to connect to (never resolve the host again)."""

    url: str
    scheme: str
    host: str  # as written (lowercased, IDNA-encoded, no brackets): the Host header and TLS name
    port: int
    address: str  # the checked IP

    @property
    def host_header(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == DEFAULT_PORTS[self.scheme] else f"{host}:{self.port}"


def _parse_ip(text: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def address_kind(ip: IPAddress) -> str | None:
    """Why ``ip`` may not receive callbacks (e.g. ``"loopback"``), or None for a public unicast address."""
    for net, kind in _BLOCKS:
        if ip.version == net.version and ip in net:
            return kind
    if isinstance(ip, ipaddress.IPv6Address):
        # Translation prefixes carry an IPv4 address: judge that one (DNS64 clusters reach every
        # IPv4 receiver through 64:ff9b::/96, so refusing the prefix outright would break them).
        embedded = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF) if ip in _NAT64 else ip.sixtofour
        if embedded is not None:
            inner = address_kind(embedded)
            return f"{'NAT64' if ip in _NAT64 else '6to4'} address of a {inner}" if inner else None
    for flag, kind in [
        (ip.is_unspecified, "unspecified"),
        (ip.is_loopback, "loopback"),
        (ip.is_link_local, "link-local"),
        (ip.is_multicast, "multicast"),
        (ip.is_private, "private"),
        (ip.is_reserved, "reserved"),
        (not ip.is_global, "non-global"),
    ]:
        if flag:
            return kind
    return None


async def system_resolver(host: str, port: int) -> list[str]:
    """IP addresses of ``host`` from the system resolver, deduplicated, in the resolver's order."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def _split(url: str, allow_http: bool) -> tuple[str, str, str, int]:
    """(scheme, host as written, host to resolve, port) of a syntactically acceptable URL."""
    if len(url) > MAX_URL_LENGTH:
        raise CallbackUrlForbidden(f"callback_url is longer than {MAX_URL_LENGTH} characters")
    if _UNSAFE_CHARS.search(url):
        raise CallbackUrlForbidden("callback_url contains whitespace, control characters or backslashes")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise CallbackUrlForbidden(f"callback_url is not a valid URL ({exc})") from None
    scheme = parts.scheme.lower()
    allowed = ("https", "http") if allow_http else ("https",)
    if scheme not in allowed:
        raise CallbackUrlForbidden(f"callback_url scheme must be {' or '.join(allowed)}, not {scheme or 'missing'!r}")
    if "@" in parts.netloc:
        raise CallbackUrlForbidden("callback_url must not contain credentials (user:password@)")
    written = (parts.hostname or "").lower()
    if not written:
        raise CallbackUrlForbidden("callback_url has no host")
    if port == 0:
        raise CallbackUrlForbidden("callback_url port must be 1-65535")
    if parts.netloc.startswith("["):
        if not isinstance(_parse_ip(written), ipaddress.IPv6Address):
            raise CallbackUrlForbidden("callback_url has an invalid IPv6 literal")
        lookup = written
    else:
        try:
            lookup = written.encode("idna").decode("ascii") if not written.isascii() else written
        except UnicodeError:
            raise CallbackUrlForbidden("callback_url host is not a valid domain name") from None
        if not _HOSTNAME.match(lookup):
            raise CallbackUrlForbidden("callback_url host is not a valid domain name")
    return scheme, written, lookup, port or DEFAULT_PORTS[scheme]


def _entry_host_port(entry: str) -> tuple[str, int | None]:
    """``host:port``, ``[v6]:port``, ``host`` or a bare IPv6 address -> (host, port or None)."""
    if entry.startswith("["):
        host, _, rest = entry[1:].partition("]")
        return host, int(rest[1:]) if rest.startswith(":") and rest[1:].isdigit() else None
    if entry.count(":") == 1:
        host, _, port = entry.partition(":")
        return host, int(port) if port.isdigit() else -1  # -1: a malformed port matches nothing
    return entry, None


def _allows(entry: str, url: str, scheme: str, host: str, port: int) -> bool:
    """Whether one ``allow_hosts`` entry covers the URL (host already lowercased, port resolved)."""
    entry = entry.strip().lower()
    if "://" in entry:  # a URL prefix: same scheme, host and port, and the path within the prefix's
        try:
            prefix = urlsplit(entry)
            prefix_port = prefix.port or DEFAULT_PORTS.get(prefix.scheme)
        except ValueError:
            return False
        if (prefix.scheme, prefix.hostname, prefix_port) != (scheme, host, port):
            return False
        base = prefix.path or "/"
        path = urlsplit(url).path or "/"
        return path == base or path.startswith(base if base.endswith("/") else base + "/")
    entry_host, entry_port = _entry_host_port(entry)
    return entry_host == host and (entry_port or DEFAULT_PORTS[scheme]) == port


async def check_callback_url(
    url: str,
    *,
    allow_http: bool,
    allow_hosts: Sequence[str],
    resolver: Resolver | None = None,
) -> CallbackTarget:
    """Check ``url`` and resolve it once; raise ``CallbackUrlForbidden`` saying why it is refused.

    Messages name the offending address only when the client wrote it; the address a *name* resolves
    to is not echoed, so the API does not become an oracle for internal DNS.
    """
    scheme, written, lookup, port = _split(url, allow_http)
    literal = _parse_ip(lookup)
    if literal is not None:
        addresses = [lookup]  # nothing to resolve, and nothing a resolver could change
    else:
        try:
            addresses = await (resolver or system_resolver)(lookup, port)
        except (OSError, UnicodeError):  # socket.gaierror is an OSError
            addresses = []
        if not addresses:
            raise CallbackUrlForbidden("callback_url host does not resolve")

    allowlisted = any(_allows(entry, url, scheme, written, port) for entry in allow_hosts)
    checked: list[str] = []
    for text in addresses:
        ip = _parse_ip(text)
        if ip is None:
            raise CallbackUrlForbidden("callback_url host resolves to something that is not an IP address")
        if not allowlisted:
            kind = address_kind(ip)
            if kind is not None:
                if literal is not None:
                    raise CallbackUrlForbidden(f"callback_url points to a non-public address ({text}: {kind})")
                raise CallbackUrlForbidden(f"callback_url resolves to a non-public address ({kind})")
        checked.append(text)
    return CallbackTarget(url=url, scheme=scheme, host=lookup, port=port, address=checked[0])
