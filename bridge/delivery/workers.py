"""Per-target delivery: one worker for stored events and one sender for partials, per target.

The worker takes the oldest pending delivery of each call that is due (``max_in_flight``
calls at a time) and POSTs it: a retry holds back the rest of its call for that target;
other calls and other targets flow. Retries follow ``retry_schedule_s`` with jitter, or the
receiver's ``Retry-After`` (kept between the schedule's first step and
``MAX_RETRY_AFTER_S``), until ``ttl_s`` after the event was produced; 4xx other than 408,
425 and 429 dead-letter at once; ``410 Gone`` disables the target and dead-letters what it
had pending.

Partials skip the outbox: they are sent at once, and dropped (counted) when they are stale,
when the target is backing off, or when the call still has events waiting for that target
(a partial must not overtake the final before it).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Final

import aiohttp
import structlog

from bridge.config import WebhookSettings
from bridge.delivery.outbox import DueDelivery
from bridge.delivery.retry import Outcome, next_attempt_delay
from bridge.delivery.targets import DeliveryStats, Target
from bridge.delivery.webhooks import endpoint_for_logs, post_event
from bridge.delivery.writer import OutboxThread, Outcomes
from bridge.errors import DeliveryError
from bridge.events import OutboundEvent
from bridge.stages import Stages

log = structlog.get_logger("bridge.delivery")

POLL_S: Final = 1.0  # workers look again this often (operator replays land in the file)
GONE_REASON: Final = "the receiver answered 410 Gone"


class DeliveryWorkers:
    """The delivery tasks of every target: started per target, stopped per target or all."""

    def __init__(self, hooks: WebhookSettings, session: aiohttp.ClientSession,
                 db: OutboxThread, stats: DeliveryStats, outcomes: Outcomes, *,
                 on_done: Callable[[str], Awaitable[None]],
                 on_progress: Callable[[], None], stages: Stages | None = None) -> None:
        """``on_done`` is awaited with a target's name after each of its deliveries (it may
        have become idle); ``on_progress`` is called whenever a pending delivery finished;
        ``stages`` hears of the attempts and outcomes of finals it tracks."""
        self._hooks = hooks
        self._session = session
        self._db = db
        self._stats = stats
        self._outcomes = outcomes
        self._on_done = on_done
        self._on_progress = on_progress
        self._stages = stages or Stages()
        self._tasks: dict[str, tuple[asyncio.Task[None], asyncio.Task[None]]] = {}

    def start(self, target: Target) -> None:
        self._tasks[target.name] = (
            asyncio.create_task(self._work(target), name=f"webhook {target.name}"),
            asyncio.create_task(self._send_partials(target), name=f"partials {target.name}"))

    def detach(self, names: Iterable[str]) -> list[asyncio.Task[None]]:
        """The tasks of ``names``, no longer kept here: the caller cancels them."""
        return [task for name in names for task in self._tasks.pop(name, ())]

    async def stop_all(self) -> None:
        """Cancel every target's tasks and wait for them: attempts in flight are abandoned
        and stay pending in the outbox."""
        tasks = self.detach(list(self._tasks))
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def publish_partial(self, event: OutboundEvent, targets: Iterable[Target]) -> None:
        """Queue a partial for each of ``targets`` that can take it now; never blocks."""
        now = time.monotonic()
        for target in targets:
            if target.disabled or target.backing_off or event.call_id in target.pending:
                self._stats.partials_dropped += 1
                continue
            if len(target.partials) == target.partials.maxlen:
                self._stats.partials_dropped += 1  # the oldest falls out
            target.partials.append((now, event))
            target.partial_wake.set()

    # -- stored events ------------------------------------------------------------------------

    async def _work(self, target: Target) -> None:
        """Deliver ``target``'s due events until cancelled; cancelling abandons the attempts
        in flight (they stay pending in the outbox) and waits for them to stop."""
        in_flight: dict[str, asyncio.Task[None]] = {}
        try:
            await self._work_loop(target, in_flight)
        finally:
            for task in in_flight.values():
                task.cancel()
            await asyncio.gather(*in_flight.values(), return_exceptions=True)

    async def _work_loop(self, target: Target, in_flight: dict[str, asyncio.Task[None]]) -> None:
        limit = self._hooks.max_in_flight
        while True:
            target.wake.clear()
            if not target.disabled and len(in_flight) < limit:
                due, next_at = await self._db.call(lambda ob: ob.due_heads(
                    target.name, time.time(), limit - len(in_flight), tuple(in_flight)))
                for delivery in due:
                    task = asyncio.create_task(self._deliver(target, delivery))
                    in_flight[delivery.call_id] = task
                    task.add_done_callback(_forget(in_flight, delivery.call_id, target.wake))
            else:
                next_at = None
            wait = POLL_S if next_at is None else min(max(next_at - time.time(), 0.0), POLL_S)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await target.wake.wait()

    async def _deliver(self, target: Target, due: DueDelivery) -> None:
        stages = self._stages
        stages.posting(due.event_id, time.monotonic())
        try:
            status = await post_event(self._session, target.url, target.key, due.event_id,
                                      due.body, timeout_s=self._hooks.timeout_s)
        except DeliveryError as exc:
            await self._failed(target, due, exc)
        else:
            stages.settled(due.event_id, time.monotonic(), status)
            await self._db.call(lambda ob: ob.mark_delivered(due.event_seq, target.name, status))
            target.backing_off = False
            self._stats.delivered += 1
            self._finished(target, due, Outcome.DELIVERED)
        await self._on_done(target.name)

    async def _failed(self, target: Target, due: DueDelivery, error: DeliveryError) -> None:
        where = {"target": target.name, "endpoint": endpoint_for_logs(target.url),
                 "event_type": due.event_type, "webhook_id": due.event_id,
                 "call_id": due.call_id, "attempt": due.attempts + 1}
        if error.status == 410:
            target.disabled = GONE_REASON
            count = await self._db.call(lambda ob: ob.disable_target(target.name, GONE_REASON))
            self._stats.targets_disabled += 1
            log.error("webhook target disabled: the receiver answered 410 Gone; its pending "
                      "events are dead-lettered (callbridge outbox replay --dead re-enables it)",
                      dead_lettered=count, **where)
            target.pending.clear()
            self._stats.dead += count
            self._outcomes.settle_target(target.name, Outcome.FAILED)
            self._on_progress()
            return
        expired = time.time() - due.created_at >= self._hooks.ttl_s
        if not error.retryable or expired:
            reason = str(error) if not expired else f"retries exhausted after ttl: {error}"
            self._stages.settled(due.event_id, time.monotonic(), error.status)
            await self._db.call(lambda ob: ob.mark_dead(due.event_seq, target.name, reason,
                                                        error.status))
            self._stats.dead += 1
            log.error("webhook event dead-lettered", error=reason, status=error.status, **where)
            self._finished(target, due, Outcome.REJECTED if not error.retryable
                           else Outcome.FAILED)
            return
        delay = next_attempt_delay(due.attempts + 1, self._hooks.retry_schedule_s,
                                   error.retry_after_s)
        await self._db.call(lambda ob: ob.schedule_retry(
            due.event_seq, target.name, time.time() + delay, str(error), error.status))
        target.backing_off = True
        self._stats.retried += 1
        log.warning("webhook attempt failed; will retry", error=str(error), status=error.status,
                    retry_in_s=round(delay, 2), **where)

    def _finished(self, target: Target, due: DueDelivery, outcome: Outcome) -> None:
        left = target.pending.get(due.call_id, 0) - 1
        if left > 0:
            target.pending[due.call_id] = left
        else:
            target.pending.pop(due.call_id, None)
        self._outcomes.settle(due.event_id, target.name, outcome)
        self._on_progress()

    # -- partials -----------------------------------------------------------------------------

    async def _send_partials(self, target: Target) -> None:
        max_age = self._hooks.partial_max_age_s
        while True:
            target.partial_wake.clear()
            while target.partials:
                queued_at, event = target.partials.popleft()
                if time.monotonic() - queued_at > max_age or event.call_id in target.pending:
                    self._stats.partials_dropped += 1
                    continue
                try:
                    await post_event(self._session, target.url, target.key, event.id,
                                     event.body, timeout_s=min(self._hooks.timeout_s, max_age))
                    self._stats.partials_sent += 1
                except DeliveryError:
                    self._stats.partials_dropped += 1
            await target.partial_wake.wait()


def _forget(in_flight: dict[str, asyncio.Task[None]], call_id: str,
            wake: asyncio.Event) -> Callable[[asyncio.Task[None]], None]:
    def done(_: asyncio.Task[None]) -> None:
        in_flight.pop(call_id, None)
        wake.set()
    return done
