"""Where teachers may be called: the outbound address policy. Django-free.

A teacher's base URL is typed by a user, and the worker that calls it sits inside the network, so an
unchecked URL would let anyone make the workers fetch internal services (SSRF). The operator lists the
hosts teachers may use (NEXUS_TEACHER_ALLOWED_HOSTS); on top of that, a host whose name resolves to a
private, loopback or link-local address is refused unless that address is listed too (a listed name
alone could be re-pointed inside the network by whoever controls its DNS).

DNS rebinding: the SDK resolves the host again when it calls, so a name can answer differently then
than here. We accept that window and narrow it: the address is checked again at every job start and
every test connection, not only when the teacher is saved; the allow-list keeps the names to ones the
operator trusts.
"""
from __future__ import annotations

import ipaddress
import socket
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

SETTING = "NEXUS_TEACHER_ALLOWED_HOSTS"
FIELD = "teacher_config.base_url"
DEFAULT_HOSTS = {"openai": "api.openai.com", "anthropic": "api.anthropic.com"}
# The providers' public API hosts: one of them answering with a private address is poisoned DNS or a
# rebinding attack, never operator intent, so only listing the address itself lets that through.
PUBLIC_PROVIDER_HOSTS = frozenset(DEFAULT_HOSTS.values())
_DEFAULT_PORTS = {"http": 80, "https": 443}

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[..., list[tuple[Any, ...]]]


class HostRefused(Exception):
    """A base URL the policy refuses; `message` says which rule and why, for the user."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass(frozen=True)
class _Entry:
    host: str  # lowercased IDNA name, or an IP address in its compressed form
    port: int | None  # None: any port

    def matches(self, host: str, port: int) -> bool:
        return self.host == host and (self.port is None or self.port == port)


def parse_allowed_hosts(text: str) -> list[str]:
    """The setting's comma-separated list: trimmed, lowercased, empty entries dropped."""
    return [part.strip().lower() for part in text.split(",") if part.strip()]


def default_host(provider: str) -> str | None:
    """The host of the provider's own API, used when a teacher has no base URL; None for "deployed"."""
    return DEFAULT_HOSTS.get(provider)


def check_teacher_address(provider: str, base_url: str, allowed_hosts: list[str], *,
                          resolve: Resolver = socket.getaddrinfo) -> None:
    """check_base_url, where an empty base URL means the provider's own API, whose host must be allowed too."""
    if base_url:
        check_base_url(base_url, allowed_hosts, resolve=resolve)
        return
    host = default_host(provider)
    if host is None:
        raise HostRefused(f"{FIELD}: a {provider} teacher needs a base URL")
    check_base_url(f"https://{host}", allowed_hosts, resolve=resolve)


def check_base_url(url: str, allowed_hosts: list[str], *, resolve: Resolver = socket.getaddrinfo) -> None:
    """Raises HostRefused unless `url` is "" (the provider's default) or an http(s) URL without user info
    whose host is on `allowed_hosts` and resolves only to addresses the policy accepts."""
    if not url:
        return
    if any(ch.isspace() or ord(ch) < 32 for ch in url):
        raise HostRefused(f"{FIELD}: the address contains spaces or control characters")
    try:
        parts = urllib.parse.urlsplit(url)
        port_given = parts.port
    except ValueError as exc:
        raise HostRefused(f"{FIELD}: '{url}' is not a valid URL ({exc})") from None
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS:
        raise HostRefused(f"{FIELD}: only http and https addresses are allowed, not '{scheme or url}'")
    # user:pass@ hides the real host from a quick read ("https://api.openai.com@evil.example") and
    # would put a secret in a field that is stored and shown in clear
    if "@" in parts.netloc:
        raise HostRefused(f"{FIELD}: an address with a user name or password (user:pass@host) is not allowed; "
                          "put the key in the API key field")
    if not parts.hostname:
        raise HostRefused(f"{FIELD}: '{url}' has no host")
    host = _normalize_host(parts.hostname)
    if not host:
        raise HostRefused(f"{FIELD}: '{parts.hostname}' is not a valid host name")
    port = port_given if port_given is not None else _DEFAULT_PORTS[scheme]
    entries = [_parse_entry(item) for item in allowed_hosts]
    entries = [entry for entry in entries if entry is not None]
    if not any(entry.matches(host, port) for entry in entries):
        shown = ", ".join(allowed_hosts) or "none"
        where = f"host '{host}'" if not any(e.host == host for e in entries) else f"host '{host}' port {port}"
        raise HostRefused(f"{FIELD}: {where} is not on {SETTING} (allowed: {shown})")
    for address in _addresses(host, port, resolve):
        if not _internal(address):
            continue
        if any(entry.matches(str(same), port) for entry in entries for same in _spellings(address)):
            continue  # the operator listed this very address
        # A listed name is not enough: whoever controls its DNS could point it at the metadata service
        # or the database next door (rebinding). Internal servers are allowed by listing their address.
        why = ", which a public provider's host never does" if host in PUBLIC_PROVIDER_HOSTS else ""
        raise HostRefused(f"{FIELD}: host '{host}' resolves to {_show(address)}, {_kind(address)} address{why}; "
                          f"list that address in {SETTING} to allow it")


def _addresses(host: str, port: int, resolve: Resolver) -> list[IPAddress]:
    """Every address the host resolves to (an IP literal is its own); one bad address refuses the host,
    since the SDK may connect to any of them."""
    literal = _ip(host)
    if literal is not None:
        return [literal]
    try:
        infos = resolve(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:  # socket.gaierror is an OSError
        raise HostRefused(f"{FIELD}: host '{host}' does not resolve ({exc})") from None
    addresses: list[IPAddress] = []
    for info in infos:
        parsed = _ip(str(info[4][0]))
        if parsed is not None and parsed not in addresses:
            addresses.append(parsed)
    if not addresses:
        raise HostRefused(f"{FIELD}: host '{host}' does not resolve (no addresses)")
    return addresses


def _internal(address: IPAddress) -> bool:
    """Not a public internet address. IPv4-mapped IPv6 (::ffff:127.0.0.1) is judged by its IPv4 address,
    as the kernel would connect to it."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return (address.is_private or address.is_loopback or address.is_link_local or address.is_multicast
            or address.is_reserved or address.is_unspecified or not address.is_global)


def _spellings(address: IPAddress) -> list[IPAddress]:
    """An IPv4-mapped IPv6 address is the same destination as its IPv4 address, listed either way."""
    mapped = address.ipv4_mapped if isinstance(address, ipaddress.IPv6Address) else None
    return [address] if mapped is None else [address, mapped]


def _show(address: IPAddress) -> str:
    """As people write it: ::ffff:127.0.0.1, not ::ffff:7f00:1 (older Pythons' spelling)."""
    mapped = address.ipv4_mapped if isinstance(address, ipaddress.IPv6Address) else None
    return str(address) if mapped is None else f"::ffff:{mapped}"


def _kind(address: IPAddress) -> str:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    for attribute, words in (("is_loopback", "a loopback"), ("is_link_local", "a link-local"),
                             ("is_multicast", "a multicast"), ("is_unspecified", "an unspecified"),
                             ("is_private", "a private"), ("is_reserved", "a reserved")):
        if getattr(address, attribute):
            return words
    return "a non-public"


def _parse_entry(item: str) -> _Entry | None:
    """One allow-list entry: "host", "host:port", an IP address, "[v6]" or "[v6]:port"."""
    item = item.strip().lower()
    port: int | None = None
    if item.startswith("["):
        host, _, rest = item[1:].partition("]")
        if rest.startswith(":") and rest[1:].isdecimal():
            port = int(rest[1:])
    elif item.count(":") == 1:
        host, _, rest = item.partition(":")
        if not rest.isdecimal():
            return None
        port = int(rest)
    else:
        host = item  # a name, or a bare IPv6 address (several colons, so no port)
    host = _normalize_host(host)
    return _Entry(host, port) if host else None


def _normalize_host(host: str) -> str:
    """Lowercased; IP addresses in one spelling; names in IDNA (ASCII) form without a trailing dot."""
    host = host.strip().lower().rstrip(".")
    literal = _ip(host)
    if literal is not None:
        return str(literal)
    try:
        return host.encode("idna").decode("ascii")
    except UnicodeError:
        return ""


def _ip(text: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(text.split("%", 1)[0].strip("[]"))
    except ValueError:
        return None
