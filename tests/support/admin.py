"""Talking to a running bridge's admin API and starting calls on it, for end-to-end tests."""

from __future__ import annotations

import asyncio
import json
from typing import TYPE_CHECKING, Any

from bridge.events import AudioEncoding, Track
from bridge.simulate import CallSpec, StreamResult, build_call, stream_call

if TYPE_CHECKING:
    from tests.conftest import BridgeProcess

TOKEN = "admin-token-for-tests-0123456789"


async def admin(bridge: BridgeProcess, action: str, call_id: str, token: str = TOKEN,
                **query: str) -> tuple[int, Any]:
    """``POST /calls/{call_id}/{action}``: the status and the JSON answer (or its text)."""
    status, body = await bridge.http("POST", f"/calls/{call_id}/{action}", token, **query)
    try:
        return status, json.loads(body)
    except ValueError:
        return status, body


async def token_for(bridge: BridgeProcess, call_id: str, **query: str) -> dict[str, Any]:
    """A live-feed token for one call, as ``POST /calls/{call_id}/token`` issues it."""
    status, body = await bridge.http("POST", f"/calls/{call_id}/token", TOKEN, **query)
    assert status == 200, body
    answer: dict[str, Any] = json.loads(body)
    return answer


def start_call(bridge: BridgeProcess, call_id: str, tracks: dict[Track, bytes],
               speed: float = 1) -> asyncio.Task[StreamResult]:
    """Stream a Twilio call with these tracks in the background."""
    spec = CallSpec("twilio", AudioEncoding.PCMU, tracks, call_id=call_id)
    return asyncio.create_task(stream_call(bridge.url("/streams/twilio"), build_call(spec),
                                           speed=speed))
