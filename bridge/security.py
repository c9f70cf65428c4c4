"""Checks on what crosses the trust boundary: webhook URLs before they are used."""

from __future__ import annotations

import ipaddress
from typing import Final
from urllib.parse import urlsplit

MAX_URL_LENGTH: Final = 2048


def is_loopback_host(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_webhook_url(url: str, *, allow_insecure_http: bool = False) -> str | None:
    """Say what is wrong with a webhook URL, or None when it may be used.

    Transcripts are sensitive, so plain ``http`` is refused except to this machine's
    loopback address (a local receiver or sidecar) unless explicitly allowed. Credentials
    in the URL are refused: they would end up in logs and error messages; put the receiver's
    trust in the signature instead.
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
    return None
