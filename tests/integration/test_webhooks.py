"""The webhook dispatcher against a real receiver: signatures, order, retries, rejections."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import aiohttp
import pytest

from bridge.config import Secret, WebhookSettings
from bridge.delivery.retry import Outcome
from bridge.delivery.webhooks import WebhookDispatcher
from bridge.events import EventType, OutboundEvent
from tests.conftest import free_port
from tests.support.receiver import SECRET, WebhookReceiver


def event(n: int, event_type: EventType = EventType.TRANSCRIPT_FINAL) -> OutboundEvent:
    return OutboundEvent(id=f"msg_{uuid.uuid4().hex}", type=event_type,
                         timestamp="2026-11-21T10:00:00.000Z",
                         data={"call_id": "CA1", "sequence": n, "text": f"t{n}"},
                         call_id="CA1", leg="inbound")


def settings(urls: tuple[str, ...], **changes: object) -> WebhookSettings:
    values: dict[str, object] = {"urls": urls, "secret": Secret(SECRET),
                                 "backoff_initial_s": 0.01, "backoff_max_s": 0.05,
                                 "timeout_s": 2.0, "drain_timeout_s": 2.0}
    return WebhookSettings(**(values | changes))  # type: ignore[arg-type]


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def test_events_arrive_signed_and_in_order(receiver: WebhookReceiver,
                                                 http: aiohttp.ClientSession) -> None:
    async with WebhookDispatcher(settings((receiver.url,)), http) as dispatcher:
        outcomes = [dispatcher.publish(event(n)) for n in range(1, 21)]
        assert await asyncio.gather(*outcomes) == [Outcome.DELIVERED] * 20
    assert [e.data["sequence"] for e in receiver.events] == list(range(1, 21))
    assert receiver.bad_signatures == 0
    assert receiver.events[0].type == "transcript.final"


async def test_server_errors_are_retried_with_the_same_webhook_id(
        receiver: WebhookReceiver, http: aiohttp.ClientSession) -> None:
    receiver.fail_statuses = [503, 500]
    first = event(1)
    async with WebhookDispatcher(settings((receiver.url,)), http) as dispatcher:
        assert await dispatcher.publish(first) is Outcome.DELIVERED
        assert await dispatcher.publish(event(2)) is Outcome.DELIVERED
        assert dispatcher.stats[receiver.url].retried == 2
    assert receiver.attempts == 4
    assert receiver.events[0].webhook_id == first.id
    assert [e.data["sequence"] for e in receiver.events] == [1, 2]


async def test_retry_after_is_honoured(receiver: WebhookReceiver,
                                       http: aiohttp.ClientSession) -> None:
    receiver.fail_statuses = [429]
    receiver.retry_after = "1"
    loop = asyncio.get_running_loop()
    async with WebhookDispatcher(settings((receiver.url,)), http) as dispatcher:
        started = loop.time()
        assert await dispatcher.publish(event(1)) is Outcome.DELIVERED
        waited = loop.time() - started
    assert waited >= 1.0  # the configured backoff alone would be 0.01 s


async def test_client_errors_reject_the_event_without_retrying(
        receiver: WebhookReceiver, http: aiohttp.ClientSession) -> None:
    receiver.fail_statuses = [400]
    async with WebhookDispatcher(settings((receiver.url,)), http) as dispatcher:
        assert await dispatcher.publish(event(1)) is Outcome.REJECTED
        assert await dispatcher.publish(event(2)) is Outcome.DELIVERED
    assert receiver.attempts == 2
    assert [e.data["sequence"] for e in receiver.events] == [2]


async def test_a_dead_receiver_fails_after_max_attempts_and_others_still_get_everything(
        receiver: WebhookReceiver, http: aiohttp.ClientSession) -> None:
    dead = f"http://127.0.0.1:{free_port()}/hook"
    async with WebhookDispatcher(settings((dead, receiver.url), max_attempts=3),
                                 http) as dispatcher:
        outcome = await dispatcher.publish(event(1))
        assert outcome is Outcome.FAILED
        assert dispatcher.stats[dead].failed == 1
        assert dispatcher.stats[receiver.url].delivered == 1
    assert [e.data["sequence"] for e in receiver.events] == [1]


async def test_a_full_queue_drops_new_events_and_says_so(
        receiver: WebhookReceiver, http: aiohttp.ClientSession) -> None:
    receiver.fail_statuses = [503] * 1000
    async with WebhookDispatcher(settings((receiver.url,), queue_size=100, max_attempts=2,
                                          drain_timeout_s=0.2), http) as dispatcher:
        outcomes = [dispatcher.publish(event(n)) for n in range(150)]
        dropped = [o for o in outcomes if o.done() and o.result() is Outcome.FAILED]
        assert len(dropped) >= 49  # at most 100 queued plus one being delivered
    assert dispatcher.stats[receiver.url].dropped >= 49
