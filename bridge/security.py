"""Checks on what crosses the trust boundary: webhook URLs, and where they may connect.

Webhook targets are a server-side request forgery risk: a URL (configured, or passed per call
as a custom parameter) could point the bridge at this machine, the private network or a
cloud metadata service. ``check_webhook_url`` judges a URL's host exactly as the HTTP client
will connect to it: yarl (which aiohttp uses) normalises the host first (IDNA, fullwidth
digits, ideographic full stops, circled digits), so a loopback address written in fullwidth
digits is ``127.0.0.1`` to the client and must be to the guard. A host that normalises into
an IP address, does not normalise cleanly, or is an IPv4 address in a legacy numeric form
(``2130706433``, ``0177.0.0.1``, ``127.1``, ``0x7f.1``, which resolvers built on
``inet_aton`` accept) is refused outright. ``GuardedResolver`` refuses private space again at
connection time, after DNS, so a name that resolves (or rebinds) to a private address is
caught too. The private-space checks are off only when ``webhooks.allow_private_networks``
says so.
"""

from __future__ import annotations

import base64
import ipaddress
import re
import socket
from dataclasses import dataclass
from typing import Final
from urllib.parse import urlsplit

from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver
from yarl import URL

MAX_URL_LENGTH: Final = 2048
# Names of cloud metadata services that do not look like addresses.
METADATA_HOSTS: Final = frozenset({"metadata.google.internal", "metadata", "instance-data"})
# A host name as it goes to the resolver: letters, digits, hyphens (and underscores, which
# some DNS names carry) in dot-separated labels of at most 63 characters (RFC 1035 2.3.4).
HOST_NAME: Final = re.compile(r"(?!-)[a-z0-9_-]{1,63}(?<!-)(\.(?!-)[a-z0-9_-]{1,63}(?<!-))*\.?")
# A label that inet_aton reads as a number: decimal, octal (leading 0) or hexadecimal.
NUMERIC_LABEL: Final = re.compile(r"(0x[0-9a-f]*|[0-9]+)")


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where a URL leads, as the HTTP client sees it: normalised scheme, host, port, path."""

    scheme: str
    host: str  # IDNA-encoded, lower case, without a trailing dot; IPv6 without brackets
    port: int
    segments: tuple[str, ...]  # the path's segments, still percent-encoded

    def within(self, entry: Endpoint) -> bool:
        """True when this endpoint lies under ``entry``: the same scheme, host and port, and
        the entry's path segments as a prefix of this one's (``/a`` covers ``/a/b``, not
        ``/ab``)."""
        return ((self.scheme, self.host, self.port) == (entry.scheme, entry.host, entry.port)
                and self.segments[:len(entry.segments)] == entry.segments)


def endpoint_of(url: str) -> Endpoint | str:
    """The endpoint a URL leads to, or what keeps it from normalising cleanly."""
    try:
        parsed = URL(url)
        host, port = parsed.raw_host, parsed.port
    except (ValueError, UnicodeError) as exc:
        return f"host does not normalise cleanly ({type(exc).__name__})"
    if not host or port is None:
        return "has no host"
    host = host.lower()
    if _ip_literal(host) is None:
        if not HOST_NAME.fullmatch(host):
            return "host does not normalise to a plain host name"
        host = host.rstrip(".")
    segments = parsed.raw_path.split("/")
    if len(segments) > 1 and segments[-1] == "":
        segments.pop()  # "https://h/a/" names the same place as "https://h/a"
    return Endpoint(parsed.scheme.lower(), host, port, tuple(segments))


def is_loopback_host(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1)."""
    if host.lower().rstrip(".") == "localhost":
        return True
    ip = _ip_literal(host)
    return ip is not None and ip.is_loopback


def forbidden_address(address: str) -> str | None:
    """Why an IP address is no place for a webhook, or None when it is public."""
    ip = _ip_literal(address.split("%", 1)[0])
    if ip is None:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip.is_loopback:
        return "a loopback address"
    if ip.is_link_local:
        return "a link-local address (cloud metadata lives there)"
    if ip.is_private:
        return "a private address"
    if ip.is_multicast or ip.is_reserved or ip.is_unspecified:
        return "not a unicast public address"
    return None


def legacy_numeric_host(host: str) -> bool:
    """True for a host that is no IP address in standard form but that resolvers built on
    ``inet_aton`` read as one (``2130706433``, ``0177.0.0.1``, ``127.1``, ``0x7f.1``), and for
    any name whose last label is a number: no top-level domain is."""
    if _ip_literal(host) is not None:
        return False
    labels = host.lower().rstrip(".").split(".")
    if NUMERIC_LABEL.fullmatch(labels[-1]):
        return True
    try:
        socket.inet_aton(host)
    except OSError:
        return False
    return True


def check_webhook_url(url: str, *, allow_insecure_http: bool = False,
                      allow_private: bool = False) -> str | None:
    """Say what is wrong with a webhook URL, or None when it may be used.

    Transcripts are sensitive, so plain ``http`` is refused except to loopback unless
    explicitly allowed. Credentials in the URL are refused: they would end up in logs; trust
    the signature instead. The host is judged after the HTTP client's normalisation; one that
    changes into an IP address on the way, or is an address in a legacy numeric form, is
    refused whatever ``allow_private`` says. Loopback, private, link-local and metadata hosts
    are refused unless ``allow_private``.
    """
    if len(url) > MAX_URL_LENGTH:
        return f"longer than {MAX_URL_LENGTH} characters"
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        return f"not a valid URL ({exc})"
    if parts.scheme not in ("http", "https"):
        return "scheme must be https (or http)"
    literal = parts.hostname
    if not literal:
        return "has no host"
    if parts.username is not None or parts.password is not None:
        return "must not carry credentials"
    if parts.fragment:
        return "must not have a #fragment"
    if port == 0:
        return "port 0 is not a valid port"
    endpoint = endpoint_of(url)
    if isinstance(endpoint, str):
        return endpoint
    host = endpoint.host
    if _ip_literal(host) is not None and _ip_literal(literal) is None:
        return "host turns into an IP address when normalised; write the address itself"
    if legacy_numeric_host(host):
        return "host is an IPv4 address in a legacy numeric form; write it as a.b.c.d"
    if parts.scheme == "http" and not allow_insecure_http and not is_loopback_host(host):
        return "plain http is only allowed to loopback; use https or set allow_insecure_http"
    if not allow_private:
        if host in METADATA_HOSTS:
            return "is a cloud metadata service"
        why = "a loopback address" if is_loopback_host(host) else forbidden_address(host)
        if why is not None:
            return (f"host is {why}; refused to prevent request forgery "
                    "(set webhooks.allow_private_networks to allow it)")
    return None


def _ip_literal(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


class AddressBlocked(OSError):
    """A webhook host resolved to an address the request-forgery guard refuses."""


class GuardedResolver(AbstractResolver):
    """aiohttp's resolver, refusing hosts that resolve to loopback/private/link-local space,
    and hosts in a legacy numeric form before they reach the system resolver."""

    def __init__(self, *, allow_private: bool = False) -> None:
        self._inner = DefaultResolver()
        self._allow_private = allow_private

    async def resolve(self, host: str, port: int = 0,
                      family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        if legacy_numeric_host(host):
            raise AddressBlocked(f"{host} is an IPv4 address in a legacy numeric form; refused "
                                 "to prevent request forgery")
        results = await self._inner.resolve(host, port, family)
        if not self._allow_private:
            for result in results:
                why = forbidden_address(str(result["host"]))
                if why is not None:
                    raise AddressBlocked(f"{host} resolves to {why}; refused to prevent "
                                         "request forgery")
        return results

    async def close(self) -> None:
        await self._inner.close()


def parse_audiohook_keys(value: str) -> dict[str, bytes]:
    """``api_key:base64_secret,api_key2:`` as a mapping (an empty secret: unsigned)."""
    keys: dict[str, bytes] = {}
    for item in value.split(","):
        if not item.strip():
            continue
        key, sep, secret = item.strip().partition(":")
        if not sep or not key:
            raise ValueError("each entry is api_key:base64_client_secret")
        keys[key] = base64.b64decode(secret, validate=True) if secret else b""
    return keys
