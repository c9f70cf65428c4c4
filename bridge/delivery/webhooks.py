"""Signed webhook delivery: every event POSTed to every configured URL, in order, with retries.

``EventSink`` is the interface the calls publish to; ``WebhookDispatcher`` is its
implementation over HTTP. Each endpoint has one bounded queue and one worker, so a receiver
gets events in the order they were produced. Failed attempts (connection errors, timeouts,
408/425/429, 5xx) are retried with exponential backoff and jitter, honouring
``Retry-After``; other statuses reject the event at once. ``publish`` never blocks: audio must
keep flowing whatever the receivers do.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final, Protocol

import aiohttp
import structlog

from bridge import __version__
from bridge.config import WebhookSettings, decode_webhook_secret
from bridge.delivery.retry import Outcome, backoff_delays, classify_status, parse_retry_after
from bridge.delivery.signing import sign
from bridge.errors import DeliveryError
from bridge.events import EventType, OutboundEvent

log = structlog.get_logger("bridge.delivery")

USER_AGENT: Final = f"callbridge/{__version__}"


class EventSink(Protocol):
    """Where calls hand their events. Implementations must not block and must not raise."""

    def publish(self, event: OutboundEvent) -> asyncio.Future[Outcome]:
        """Queue an event; the future settles once every endpoint has delivered or given up."""


def encode_event(event: OutboundEvent) -> bytes:
    """The exact JSON body of an event (this is what is signed)."""
    body = {"type": str(event.type), "timestamp": event.timestamp, "data": event.data}
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()


@dataclass(slots=True)
class EndpointStats:
    delivered: int = 0
    retried: int = 0
    rejected: int = 0
    failed: int = 0  # gave up after max_attempts
    dropped: int = 0  # queue full, or left over when shutdown's drain time ran out


@dataclass(slots=True)
class _Job:
    event: OutboundEvent
    body: bytes
    outcome: asyncio.Future[Outcome]


@dataclass(slots=True)
class _Endpoint:
    url: str
    queue: asyncio.Queue[_Job]
    stats: EndpointStats = field(default_factory=EndpointStats)


class WebhookDispatcher:
    """Delivers events to the configured webhook URLs. Use ``async with``."""

    def __init__(self, settings: WebhookSettings, session: aiohttp.ClientSession,
                 *, clock: Callable[[], float] = time.time) -> None:
        self._settings = settings
        self._session = session
        self._clock = clock
        key = decode_webhook_secret(settings.secret) if settings.secret else None
        self._key = key or b""
        self._endpoints = [_Endpoint(url, asyncio.Queue(settings.queue_size))
                           for url in settings.urls]
        self._workers: list[asyncio.Task[None]] = []
        self._closing = False
        self._deadline: float | None = None

    @property
    def stats(self) -> dict[str, EndpointStats]:
        return {e.url: e.stats for e in self._endpoints}

    async def __aenter__(self) -> WebhookDispatcher:
        self._workers = [asyncio.create_task(self._work(e), name=f"webhook {i}")
                         for i, e in enumerate(self._endpoints)]
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close(self._settings.drain_timeout_s)

    def publish(self, event: OutboundEvent) -> asyncio.Future[Outcome]:
        """Queue ``event`` for every endpoint; the returned future gives the worst outcome."""
        loop = asyncio.get_running_loop()
        if not self._endpoints:
            done: asyncio.Future[Outcome] = loop.create_future()
            done.set_result(Outcome.DELIVERED)
            return done
        body = encode_event(event)
        futures: list[asyncio.Future[Outcome]] = []
        for endpoint in self._endpoints:
            job = _Job(event, body, loop.create_future())
            futures.append(job.outcome)
            if self._closing:
                self._drop(endpoint, job, "the bridge is shutting down")
                continue
            try:
                endpoint.queue.put_nowait(job)
            except asyncio.QueueFull:
                self._drop(endpoint, job, "the endpoint's queue is full")
        return _worst_of(futures)

    async def close(self, drain_timeout_s: float) -> None:
        """Stop taking events, deliver what is queued for up to ``drain_timeout_s``, then stop.

        Retries still run during the drain, with their waits cut short at the deadline.
        Events still queued afterwards are counted as dropped, each with a log line.
        Cancelling ``close`` cancels the workers at once.
        """
        self._closing = True
        self._deadline = time.monotonic() + drain_timeout_s
        try:
            waits = [asyncio.create_task(e.queue.join()) for e in self._endpoints]
            if waits:
                await asyncio.wait(waits, timeout=drain_timeout_s)
            for wait in waits:
                wait.cancel()
        finally:
            for worker in self._workers:
                worker.cancel()
            await asyncio.gather(*self._workers, return_exceptions=True)
            for endpoint in self._endpoints:
                while not endpoint.queue.empty():
                    self._drop(endpoint, endpoint.queue.get_nowait(),
                               "undelivered when the drain time ran out")

    def _drop(self, endpoint: _Endpoint, job: _Job, why: str) -> None:
        endpoint.stats.dropped += 1
        if not job.outcome.done():
            job.outcome.set_result(Outcome.FAILED)
        logger = log.debug if job.event.type is EventType.TRANSCRIPT_PARTIAL else log.error
        logger("webhook event dropped", reason=why, event_type=str(job.event.type),
               webhook_id=job.event.id, call_id=job.event.call_id, endpoint=_host(endpoint.url))

    async def _work(self, endpoint: _Endpoint) -> None:
        while True:
            job = await endpoint.queue.get()
            try:
                outcome = await self._deliver(endpoint, job)
                if not job.outcome.done():
                    job.outcome.set_result(outcome)
            finally:
                endpoint.queue.task_done()

    async def _deliver(self, endpoint: _Endpoint, job: _Job) -> Outcome:
        delays = backoff_delays(self._settings.backoff_initial_s, self._settings.backoff_max_s)
        for attempt in range(1, self._settings.max_attempts + 1):
            try:
                await self._attempt(endpoint.url, job)
            except DeliveryError as exc:
                if not exc.retryable:
                    endpoint.stats.rejected += 1
                    log.error("webhook rejected the event; not retried", error=str(exc),
                              event_type=str(job.event.type), webhook_id=job.event.id,
                              call_id=job.event.call_id, endpoint=_host(endpoint.url))
                    return Outcome.REJECTED
                if attempt == self._settings.max_attempts:
                    endpoint.stats.failed += 1
                    log.error("webhook delivery failed; giving up", error=str(exc),
                              attempts=attempt, event_type=str(job.event.type),
                              webhook_id=job.event.id, call_id=job.event.call_id,
                              endpoint=_host(endpoint.url))
                    return Outcome.FAILED
                endpoint.stats.retried += 1
                delay = exc.retry_after_s if exc.retry_after_s is not None else next(delays)
                if self._deadline is not None:
                    delay = min(delay, max(self._deadline - time.monotonic(), 0.0))
                log.warning("webhook attempt failed; retrying", error=str(exc),
                            attempt=attempt, retry_in_s=round(delay, 2),
                            webhook_id=job.event.id, call_id=job.event.call_id,
                            endpoint=_host(endpoint.url))
                await asyncio.sleep(delay)
            else:
                endpoint.stats.delivered += 1
                return Outcome.DELIVERED
        raise AssertionError("unreachable: max_attempts is at least 1")

    async def _attempt(self, url: str, job: _Job) -> None:
        timestamp = int(self._clock())
        headers = {
            "content-type": "application/json",
            "user-agent": USER_AGENT,
            "webhook-id": job.event.id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": sign(self._key, job.event.id, timestamp, job.body),
        }
        timeout = aiohttp.ClientTimeout(total=self._settings.timeout_s)
        try:
            async with self._session.post(url, data=job.body, headers=headers, timeout=timeout,
                                          allow_redirects=False) as response:
                await response.read()
                outcome = classify_status(response.status)
                if outcome is Outcome.DELIVERED:
                    return
                retry_after = parse_retry_after(response.headers.get("retry-after"),
                                                now=self._clock())
                raise DeliveryError("receiver answered with an error", status=response.status,
                                    retryable=outcome is Outcome.RETRY,
                                    retry_after_s=retry_after)
        except TimeoutError:
            raise DeliveryError(f"no answer within {self._settings.timeout_s}s") from None
        except aiohttp.ClientError as exc:
            raise DeliveryError(f"connection failed: {type(exc).__name__}") from None


def _host(url: str) -> str:
    """An endpoint as logged: scheme, host and path, never the query string."""
    return url.split("?", 1)[0]


def _worst_of(futures: list[asyncio.Future[Outcome]]) -> asyncio.Future[Outcome]:
    if len(futures) == 1:
        return futures[0]
    loop = asyncio.get_running_loop()
    combined: asyncio.Future[Outcome] = loop.create_future()
    remaining = len(futures)
    worst = Outcome.DELIVERED

    def settle(future: asyncio.Future[Outcome]) -> None:
        nonlocal remaining, worst
        remaining -= 1
        if not future.cancelled() and future.result() is not Outcome.DELIVERED:
            worst = future.result()
        if remaining == 0 and not combined.done():
            combined.set_result(worst)

    for future in futures:
        future.add_done_callback(settle)
    return combined
