"""Ingress authentication, pure: who may stream audio to the bridge.

* Twilio: ``X-Twilio-Signature`` = base64(HMAC-SHA1(auth token, URL)), the URL written with
  the ``wss://`` scheme exactly as Twilio dialled it (no parameters: the upgrade is a GET).
* Genesys AudioHook: ``X-API-KEY`` names a known key; when its client secret is set, the
  request carries an HTTP Message Signature (RFC 9421 style) over ``@request-target``,
  ``@authority`` and the ``audiohook-*`` and ``x-api-key`` headers, HMAC-SHA256 keyed with the
  base64-decoded secret, at most ``max_age_s`` old, with ``keyid`` equal to the API key.
* Bearer tokens (SignalWire, or any endpoint configured for it) and Basic credentials
  (Exotel) on the handshake.
* For platforms that sign nothing: a shared token in a custom parameter of the stream.

Every check returns None when it passes, else a short reason (logged; never the secret).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from bridge.errors import InvalidNumber
from bridge.numbers import read_int

# The parser lives in bridge.security so that configuration needs no ingress module;
# re-exported here for the media endpoint.

AUDIOHOOK_COMPONENTS: Final = ("@request-target", "@authority", "audiohook-organization-id",
                               "audiohook-session-id", "audiohook-correlation-id", "x-api-key")
_INPUT: Final = re.compile(r'^\s*([A-Za-z0-9_-]+)=(\((?:"[^"]*"\s*)*\)(?:;[^,]*)?)\s*$')
_PARAM: Final = re.compile(r';\s*([a-z]+)=("([^"]*)"|(\d+))')


CLOCK_SKEW_S: Final = 5


def raw_bytes(value: str) -> bytes:
    """A header or parameter as bytes for comparing; bytes that were not UTF-8 (kept by the
    HTTP parser as surrogates) compare as the bytes they were, never raise."""
    return value.encode("utf-8", "surrogateescape")


def twilio_signature(auth_token: str, url: str) -> str:
    """The ``X-Twilio-Signature`` Twilio sends for a GET to ``url``."""
    digest = hmac.new(auth_token.encode(), raw_bytes(url), hashlib.sha1).digest()
    return base64.b64encode(digest).decode()


def check_twilio(auth_token: str, url: str, header: str | None) -> str | None:
    if not header:
        return "missing X-Twilio-Signature"
    if not hmac.compare_digest(twilio_signature(auth_token, url).encode(), raw_bytes(header)):
        return "X-Twilio-Signature does not match (is twilio_public_url what Twilio dials?)"
    return None


def check_bearer(token: str, authorization: str | None) -> str | None:
    if not authorization:
        return "missing Authorization"
    if not hmac.compare_digest(raw_bytes(authorization), f"Bearer {token}".encode()):
        return "bearer token does not match"
    return None


def check_basic(credentials: str, authorization: str | None) -> str | None:
    if not authorization:
        return "missing Authorization"
    expected = "Basic " + base64.b64encode(credentials.encode()).decode()
    if not hmac.compare_digest(raw_bytes(authorization), expected.encode()):
        return "basic credentials do not match"
    return None


def check_parameter_token(token: str, value: str | None) -> str | None:
    if not value:
        return "the stream carries no token parameter"
    if not hmac.compare_digest(raw_bytes(value), token.encode()):
        return "the stream's token parameter does not match"
    return None


@dataclass(frozen=True, slots=True)
class SignatureInput:
    label: str
    components: tuple[str, ...]
    params: dict[str, str]
    raw: str  # the value after "label=", exactly as sent: it is signed too


def parse_signature_input(header: str) -> SignatureInput | None:
    match = _INPUT.match(header)
    if match is None:
        return None
    label, raw = match.groups()
    inner = raw[:raw.index(")") + 1]
    components = tuple(re.findall(r'"([^"]*)"', inner))
    params = {m.group(1): m.group(3) if m.group(3) is not None else m.group(4)
              for m in _PARAM.finditer(raw[len(inner):])}
    return SignatureInput(label, components, params, raw)


def signature_base(sig: SignatureInput, *, target: str, authority: str,
                   headers: Mapping[str, str]) -> str | None:
    lines = []
    for component in sig.components:
        if component == "@request-target":
            value = target
        elif component == "@authority":
            value = authority.lower()
        else:
            found = headers.get(component)
            if found is None:
                return None
            value = found.strip()
        lines.append(f'"{component}": {value}')
    lines.append(f'"@signature-params": {sig.raw}')
    return "\n".join(lines)


def check_audiohook(keys: Mapping[str, bytes], *, target: str, authority: str,
                    headers: Mapping[str, str], now: int, max_age_s: int = 10,
                    nonces: NonceCache | None = None) -> str | None:
    """Check an AudioHook handshake: API key, and the signature when the key has a secret.

    ``headers`` must be looked up case-insensitively (aiohttp's are). With ``nonces``, a
    signature whose nonce was seen within its validity is refused as a replay.
    """
    api_key = headers.get("x-api-key")
    if not api_key:
        return "missing X-API-KEY"
    if api_key not in keys:
        return "unknown X-API-KEY"
    secret = keys[api_key]
    if not secret:
        return None  # a key without a secret: unsigned requests are accepted for it
    sig_input, signature = headers.get("signature-input"), headers.get("signature")
    if not sig_input or not signature:
        return "missing Signature or Signature-Input"
    sig = parse_signature_input(sig_input)
    if sig is None:
        return "malformed Signature-Input"
    if set(AUDIOHOOK_COMPONENTS) - set(sig.components):
        return "the signature does not cover the required components"
    if sig.params.get("alg", "hmac-sha256") != "hmac-sha256" or sig.params.get("keyid") != api_key:
        return "signature alg or keyid is wrong"
    nonce = sig.params.get("nonce", "")
    if not 22 <= len(nonce) <= 256:
        return "signature nonce too short or too long"
    try:
        created = read_int(sig.params.get("created"), field="created", low=1, high=2**40)
        expires = sig.params.get("expires")
        expires_at = None if expires is None else read_int(expires, field="expires", low=1,
                                                           high=2**40)
    except InvalidNumber:
        return "signature created or expires is not a time"
    if now < created - CLOCK_SKEW_S or now - created > max_age_s or (
            expires_at is not None and now > expires_at):
        return "signature too old, or not yet valid"
    match = re.match(rf"^\s*{re.escape(sig.label)}=:([A-Za-z0-9+/=]+):\s*$", signature)
    if match is None:
        return "malformed Signature"
    base = signature_base(sig, target=target, authority=authority, headers=headers)
    if base is None:
        return "a signed header is missing"
    expected = hmac.new(secret, raw_bytes(base), hashlib.sha256).digest()
    try:
        given = base64.b64decode(match.group(1), validate=True)
    except (binascii.Error, ValueError):
        return "malformed Signature"
    if not hmac.compare_digest(expected, given):
        return "signature does not match"
    # Only a signature that verified may take a nonce: a forger cannot fill the cache.
    if nonces is not None and not nonces.first_use(f"{api_key}\n{nonce}",
                                                   until=created + max_age_s + CLOCK_SKEW_S,
                                                   now=now):
        return "signature replayed: its nonce was used already"
    return None


class NonceCache:
    """Nonces of verified signatures, each kept until its signature could no longer be
    accepted; a nonce seen again within that time is a replay. Pure: the caller says the time.

    Bounded: past ``limit`` entries the oldest-expiring are forgotten first (expired ones
    always go). Accepted signatures are at most ``max_age_s`` old, so at a few hundred calls a
    second the cache holds a few thousand nonces.
    """

    def __init__(self, limit: int = 100_000) -> None:
        self._limit = limit
        self._until: dict[str, int] = {}

    def first_use(self, nonce: str, *, until: int, now: int) -> bool:
        """Remember ``nonce`` until ``until``; False when it is remembered already."""
        if nonce in self._until and self._until[nonce] >= now:
            return False
        if len(self._until) >= self._limit:
            self._until = {n: t for n, t in self._until.items() if t >= now}
            while len(self._until) >= self._limit:
                del self._until[min(self._until, key=self._until.__getitem__)]
        self._until[nonce] = until
        return True

    def __len__(self) -> int:
        return len(self._until)
