"""Standard Webhooks signatures (HMAC-SHA256, ``v1,<base64>``), pure functions.

The signed content is ``"{webhook-id}.{webhook-timestamp}.{raw body}"``; the key is the
base64 part of a ``whsec_`` secret. ``webhook-signature`` may list several space-separated
signatures (key rotation); a receiver accepts the message when any ``v1`` entry matches.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Mapping
from typing import Final

from bridge.errors import InvalidNumber
from bridge.numbers import read_int

DEFAULT_TOLERANCE_S: Final = 300


def sign(key: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` value for one attempt."""
    content = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(key, content, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode("ascii")


def verify(key: bytes, headers: Mapping[str, str], body: bytes, *, now: int,
           tolerance_s: int = DEFAULT_TOLERANCE_S) -> bool:
    """Check a received webhook: a matching ``v1`` signature and a fresh timestamp."""
    msg_id = headers.get("webhook-id", "")
    raw_timestamp = headers.get("webhook-timestamp", "")
    signatures = headers.get("webhook-signature", "")
    try:
        timestamp = read_int(raw_timestamp, field="webhook-timestamp", low=0, high=2**40)
    except InvalidNumber:
        return False
    if not msg_id or abs(now - timestamp) > tolerance_s:
        return False
    expected = sign(key, msg_id, timestamp, body)
    return any(hmac.compare_digest(expected, candidate)
               for candidate in signatures.split(" ") if candidate.startswith("v1,"))
