"""Signed webhook requests: the event body, one POST attempt, and the sink interface.

``EventSink`` is what calls publish to; ``bridge.delivery.dispatcher.DurableDispatcher``
implements it over the outbox. ``post_event`` makes one signed attempt and says how it went.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Final, Protocol

import aiohttp

from bridge import __version__
from bridge.delivery.retry import Outcome, classify_status, parse_retry_after
from bridge.delivery.signing import sign
from bridge.errors import DeliveryError
from bridge.events import OutboundEvent
from bridge.security import AddressBlocked

USER_AGENT: Final = f"callbridge/{__version__}"


class EventSink(Protocol):
    """Where calls hand their events. Implementations must not block and must not raise."""

    def publish(self, event: OutboundEvent) -> asyncio.Future[Outcome]:
        """Take an event; the future settles once every target has it or has given up."""

    def hold(self, call_id: str, leg: str, finals: Sequence[OutboundEvent]) -> None:
        """Keep a leg's held finals, every number already masked, in place of its previous
        ones: delivered only if the process dies before the leg releases them."""


async def post_event(session: aiohttp.ClientSession, url: str, key: bytes, event_id: str,
                     body: bytes, *, timeout_s: float) -> int:
    """POST one signed attempt; returns the 2xx status, or raises ``DeliveryError``.

    Redirects are not followed. The error says whether a retry can help and carries the
    receiver's ``Retry-After`` when it sent one. Cancelling abandons the attempt.
    """
    timestamp = int(time.time())
    headers = {
        "content-type": "application/json",
        "user-agent": USER_AGENT,
        "webhook-id": event_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(key, event_id, timestamp, body),
    }
    try:
        async with session.post(url, data=body, headers=headers, allow_redirects=False,
                                timeout=aiohttp.ClientTimeout(total=timeout_s)) as response:
            await response.read()
            outcome = classify_status(response.status)
            if outcome is Outcome.DELIVERED:
                return response.status
            raise DeliveryError(
                "receiver answered with an error", status=response.status,
                retryable=outcome is Outcome.RETRY,
                retry_after_s=parse_retry_after(response.headers.get("retry-after"),
                                                now=time.time()))
    except TimeoutError:
        raise DeliveryError(f"no answer within {timeout_s:g}s") from None
    except aiohttp.ClientConnectorError as exc:
        if isinstance(exc.os_error, AddressBlocked):
            raise DeliveryError(str(exc.os_error), retryable=False) from None
        raise DeliveryError(f"connection failed: {type(exc).__name__}") from None
    except aiohttp.ClientError as exc:
        raise DeliveryError(f"connection failed: {type(exc).__name__}") from None


def endpoint_for_logs(url: str) -> str:
    """An endpoint as logged: scheme, host and path, never the query string."""
    return url.split("?", 1)[0]
