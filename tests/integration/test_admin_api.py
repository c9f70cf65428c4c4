"""The admin API and the live feed in process, through pytest-aiohttp's test client.

The whole application runs on the test's event loop (media endpoint, dispatcher, outbox),
with the Telnyx STT emulator and the webhook receiver as its peers: no subprocess, so a
failure shows the handler's own traceback.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from bridge.config import load_settings
from bridge.events import AudioEncoding, Track
from bridge.simulate import CallSpec, StreamResult, build_call, stream_call
from bridge.web.app import create_app
from tests.conftest import API_KEY
from tests.support.admin import TOKEN
from tests.support.audio import ulaw
from tests.support.receiver import SECRET, WebhookReceiver
from tests.support.speech import CALLER_LIVE
from tests.support.sse import read_events
from tests.support.telnyx_stt import TelnyxSttEmulator

Client = TestClient[web.Request, web.Application]
AiohttpClient = Callable[[TestServer], Awaitable[Client]]
BEARER = {"Authorization": f"Bearer {TOKEN}"}


class ServedAsInProduction(TestServer):
    """aiohttp's test server, but not cancelling a handler when its client goes away.

    The test server cancels by default; ``serve`` does not, and the media handler relies on
    it: after the provider hangs up, it still finishes the call (last finals, ``call.ended``).
    """

    async def _make_runner(self, **kwargs: Any) -> web.AppRunner:
        return web.AppRunner(self.app, **(kwargs | {"handler_cancellation": False}))


@pytest.fixture
async def client(stt: TelnyxSttEmulator, receiver: WebhookReceiver, tmp_path: Path,
                 aiohttp_client: AiohttpClient) -> Client:
    # aiohttp_client last: torn down first, the bridge stops while its peers still answer.
    settings = load_settings(environ={
        "CALLBRIDGE_TELNYX_URL": stt.url, "TELNYX_API_KEY": API_KEY,
        "CALLBRIDGE_WEBHOOKS_URLS": receiver.url, "CALLBRIDGE_WEBHOOKS_SECRET": SECRET,
        "CALLBRIDGE_WEBHOOKS_ALLOW_PRIVATE_NETWORKS": "true",
        "CALLBRIDGE_SERVER_ADMIN_TOKEN": TOKEN,
        "CALLBRIDGE_OUTBOX_PATH": str(tmp_path / "outbox.db")})
    return await aiohttp_client(ServedAsInProduction(create_app(settings)))


def start_call(client: Client, call_id: str) -> asyncio.Task[StreamResult]:
    spec = CallSpec("twilio", AudioEncoding.PCMU, {Track.INBOUND: ulaw(CALLER_LIVE)},
                    call_id=call_id)
    url = str(client.make_url("/streams/twilio")).replace("http://", "ws://", 1)
    return asyncio.create_task(stream_call(url, build_call(spec), speed=1,
                                           session=client.session))


async def first_final(receiver: WebhookReceiver, call_id: str) -> None:
    await receiver.wait_for(lambda events: any(
        e.type == "transcript.final" and e.data["call_id"] == call_id for e in events))


async def test_only_the_admin_token_opens_the_api(client: Client) -> None:
    assert (await client.get("/calls")).status == 401
    wrong = {"Authorization": "Bearer wrong-token-0123456789"}
    assert (await client.get("/calls", headers=wrong)).status == 401
    answer = await client.get("/calls", headers=BEARER)
    assert answer.status == 200 and await answer.json() == {"calls": []}
    assert (await client.get("/calls/CA-none", headers=BEARER)).status == 404
    assert (await client.post("/calls/CA-none/end", headers=BEARER)).status == 404
    assert (await client.post("/calls/CA-none/token", headers=BEARER)).status == 404


async def test_a_live_call_is_shown_without_its_text_and_ended_by_the_admin(
        client: Client, receiver: WebhookReceiver) -> None:
    call = start_call(client, "CA-admin-inproc")
    await first_final(receiver, "CA-admin-inproc")
    listing = await (await client.get("/calls", headers=BEARER)).json()
    [shown] = listing["calls"]
    assert shown["call_id"] == "CA-admin-inproc" and shown["provider"] == "twilio"
    assert shown["legs"]["inbound"]["transcripts"] >= 1
    detail = await client.get("/calls/CA-admin-inproc", headers=BEARER)
    assert detail.status == 200
    assert "hertz" not in await detail.text()  # counters only, never what was said

    ending = await client.post("/calls/CA-admin-inproc/end", headers=BEARER)
    assert ending.status == 202
    await call
    await receiver.wait_for(receiver.ended("CA-admin-inproc"))
    assert receiver.of_call("CA-admin-inproc")[-1].data["reason"] == "ended_by_admin"


async def test_a_call_token_opens_that_calls_feed_to_its_end(
        client: Client, receiver: WebhookReceiver) -> None:
    call = start_call(client, "CA-feed-inproc")
    await first_final(receiver, "CA-feed-inproc")
    issued = await (await client.post("/calls/CA-feed-inproc/token", headers=BEARER)).json()
    assert (await client.get("/calls/CA-feed-inproc/events")).status == 401
    async with client.get(issued["events_url"]) as feed:
        assert feed.status == 200
        kinds = []
        async with asyncio.timeout(30):
            async for event in read_events(feed):
                kinds.append(event.event)
                if event.event == "call.ended":
                    break
    assert (await call).close_code == 1000
    # Joining late, the viewer got the conversation so far, then the rest, then the end.
    assert kinds[0] == "token" and "call.started" in kinds and kinds[-1] == "call.ended"
    assert kinds.count("transcript.final") == 2
    await receiver.wait_for(receiver.ended("CA-feed-inproc"))
