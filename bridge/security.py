"""Checks on what crosses the trust boundary: webhook URLs, and where they may connect.

Webhook targets are a server-side request forgery risk: a URL (configured, or passed per call
as a custom parameter) could point the bridge at this machine, the private network or a
cloud metadata service. ``check_webhook_url`` refuses such URLs by their literal host, and
``GuardedResolver`` refuses them again at connection time, after DNS, so a name that resolves
(or rebinds) to a private address is caught too. Both are off only when
``webhooks.allow_private_networks`` says so.
"""

from __future__ import annotations

import ipaddress
import socket
from typing import Final
from urllib.parse import urlsplit

from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver

MAX_URL_LENGTH: Final = 2048
# Names of cloud metadata services that do not look like addresses.
METADATA_HOSTS: Final = frozenset({"metadata.google.internal", "metadata", "instance-data"})


def is_loopback_host(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def forbidden_address(address: str) -> str | None:
    """Why an IP address is no place for a webhook, or None when it is public."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
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


def check_webhook_url(url: str, *, allow_insecure_http: bool = False,
                      allow_private: bool = False) -> str | None:
    """Say what is wrong with a webhook URL, or None when it may be used.

    Transcripts are sensitive, so plain ``http`` is refused except to loopback unless
    explicitly allowed. Credentials in the URL are refused: they would end up in logs; trust
    the signature instead. Loopback, private, link-local and metadata hosts are refused
    unless ``allow_private``.
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
    host = parts.hostname
    if not host:
        return "has no host"
    if parts.username is not None or parts.password is not None:
        return "must not carry credentials"
    if parts.fragment:
        return "must not have a #fragment"
    if port == 0:
        return "port 0 is not a valid port"
    if parts.scheme == "http" and not allow_insecure_http and not is_loopback_host(host):
        return "plain http is only allowed to loopback; use https or set allow_insecure_http"
    if not allow_private:
        if host.lower() in METADATA_HOSTS:
            return "is a cloud metadata service"
        why = "a loopback address" if is_loopback_host(host) else forbidden_address(host)
        if why is not None:
            return (f"host is {why}; refused to prevent request forgery "
                    "(set webhooks.allow_private_networks to allow it)")
    return None


class AddressBlocked(OSError):
    """A webhook host resolved to an address the request-forgery guard refuses."""


class GuardedResolver(AbstractResolver):
    """aiohttp's resolver, refusing hosts that resolve to loopback/private/link-local space."""

    def __init__(self, *, allow_private: bool = False) -> None:
        self._inner = DefaultResolver()
        self._allow_private = allow_private

    async def resolve(self, host: str, port: int = 0,
                      family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
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


