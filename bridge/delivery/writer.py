"""The outbox writer: events published on the event loop, stored in batches on the outbox's
own thread.

``submit`` never blocks: an event waits in a bounded queue (``WRITE_QUEUE``) for the write
loop, which stores up to ``WRITE_BATCH`` at a time in one transaction, together with the
target rows routing added or retired and the legs' latest held finals. Only stored events
are delivered: each one stored counts as pending for its targets and wakes their workers. An
event that cannot be stored (the queue or the outbox is full, the disk is full) is refused
with an ``ALARM`` log line, on the first refusal and every ``ALARM_EVERY``-th after it.

The writer hands the outbox what it stores explicitly (``record``): ids, type, leg, body and
targets, the data a ``call.started`` opens its call with, and the speaker and text a final
adds to its leg with its transcript line.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Final, TypeVar

import structlog

from bridge.artifacts.completed import transcript_line
from bridge.delivery.outbox import HeldFinals, LegText, Outbox, StoredEvent
from bridge.delivery.retry import Outcome
from bridge.delivery.routing import Router
from bridge.delivery.targets import DeliveryStats
from bridge.errors import OutboxDiskFull
from bridge.events import EventType, OutboundEvent
from bridge.stages import Stages

log = structlog.get_logger("bridge.delivery")

T = TypeVar("T")
WRITE_QUEUE: Final = 20_000  # events waiting for the outbox writer
WRITE_BATCH: Final = 256
ALARM_EVERY: Final = 100  # log the outbox-full alarm on the 1st, 101st, ... refusal
RETENTION_EVERY_S: Final = 3600.0


class OutboxThread:
    """Runs ``Outbox`` methods on one dedicated thread, so SQLite never blocks the loop."""

    def __init__(self, factory: Callable[[], Outbox]) -> None:
        self._factory = factory
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="outbox")
        self._outbox: Outbox | None = None

    async def open(self) -> None:
        self._outbox = await self._run(self._factory)

    async def call(self, work: Callable[[Outbox], T]) -> T:
        outbox = self._outbox
        if outbox is None:
            raise RuntimeError("outbox not open")  # our bug: used before open or after close
        return await self._run(lambda: work(outbox))

    async def close(self) -> None:
        if self._outbox is not None:
            outbox, self._outbox = self._outbox, None
            await self._run(outbox.close)
        self._executor.shutdown(wait=True)

    async def _run(self, work: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, work)


def record(event: OutboundEvent, targets: tuple[str, ...]) -> StoredEvent:
    """What the outbox keeps of ``event`` for ``targets``: its body as made, and for
    tracking the call the data of a ``call.started`` or the speaker, text and transcript line
    of a final."""
    data = event.data
    adds = None
    if event.type is EventType.TRANSCRIPT_FINAL:
        speaker, text = data.get("speaker"), data.get("text")
        adds = LegText(speaker if isinstance(speaker, str) else None,
                       text if isinstance(text, str) else "", transcript_line(data))
    return StoredEvent(event.id, event.type, event.call_id, event.leg, event.body, targets,
                       opens_call=data if event.type is EventType.CALL_STARTED else None,
                       adds=adds)


@dataclass(slots=True)
class _Waiting:
    """An event published by this process whose outcome a call is waiting for."""

    targets: set[str]
    worst: Outcome
    future: asyncio.Future[Outcome]


class Outcomes:
    """The futures ``publish`` returned, settled once every target of the event is done."""

    def __init__(self) -> None:
        self._waiting: dict[str, _Waiting] = {}

    def expect(self, event_id: str, targets: Sequence[str],
               future: asyncio.Future[Outcome]) -> None:
        if targets:
            self._waiting[event_id] = _Waiting(set(targets), Outcome.DELIVERED, future)
        elif not future.done():
            future.set_result(Outcome.DELIVERED)

    def settle(self, event_id: str, target: str, outcome: Outcome) -> None:
        waiting = self._waiting.get(event_id)
        if waiting is None:
            return
        waiting.targets.discard(target)
        if outcome is not Outcome.DELIVERED:
            waiting.worst = outcome
        if not waiting.targets:
            del self._waiting[event_id]
            if not waiting.future.done():
                waiting.future.set_result(waiting.worst)

    def settle_target(self, target: str, outcome: Outcome) -> None:
        """Settle every event still waiting for ``target`` (it was disabled)."""
        for event_id, waiting in list(self._waiting.items()):
            if target in waiting.targets:
                self.settle(event_id, target, outcome)


_Write = tuple[OutboundEvent, asyncio.Future[Outcome] | None] | HeldFinals


class OutboxWriter:
    """The queue in front of the outbox and the loop that stores it in batches."""

    def __init__(self, db: OutboxThread, router: Router, stats: DeliveryStats,
                 outcomes: Outcomes, *, outbox_path: str,
                 on_calls_ended: Callable[[set[str]], Awaitable[None]],
                 on_stored: Callable[[], None] = lambda: None,
                 stages: Stages | None = None) -> None:
        """``on_calls_ended`` gets the targets of the ``call.ended`` events just stored
        (some may now be idle); ``on_stored`` is called after each batch is written;
        ``stages`` hears when a final it tracks is stored, or will never be delivered."""
        self._db = db
        self._router = router
        self._stats = stats
        self._outcomes = outcomes
        self._outbox_path = outbox_path
        self._on_calls_ended = on_calls_ended
        self._on_stored = on_stored
        self._stages = stages or Stages()
        self._queue: asyncio.Queue[_Write] = asyncio.Queue(WRITE_QUEUE)

    def submit(self, event: OutboundEvent, future: asyncio.Future[Outcome]) -> None:
        """Queue ``event`` for storing; ``future`` is settled with FAILED at once if it is
        refused, else once its targets are done. Never blocks."""
        try:
            self._queue.put_nowait((event, future))
        except asyncio.QueueFull:
            self._refuse(event, "the outbox writer is behind")
            future.set_result(Outcome.FAILED)
            self._stages.forget(event.id)

    async def submit_waiting(self, event: OutboundEvent) -> None:
        """Queue ``event``, waiting for room: for the start, before any call is taken."""
        await self._queue.put((event, None))

    def hold(self, call_id: str, leg: str, finals: Sequence[OutboundEvent]) -> None:
        """Queue a leg's held finals, replacing its previous ones. Never blocks."""
        items = tuple(record(event, self._router.stored_targets(event)) for event in finals)
        try:
            self._queue.put_nowait(HeldFinals(call_id, leg, items))
        except asyncio.QueueFull:
            self._stats.outbox_rejected += 1  # the finals themselves still go out on release

    async def join(self) -> None:
        """Wait until everything queued so far is stored (or refused)."""
        await self._queue.join()

    async def run(self) -> None:
        """Store batches until cancelled; cancelling loses what was still queued."""
        while True:
            batch = [await self._queue.get()]
            while len(batch) < WRITE_BATCH and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            try:
                await self._store(batch)
            finally:
                for _ in batch:
                    self._queue.task_done()

    async def keep_retention(self) -> None:
        """Apply ``outbox.retention_days`` now and every ``RETENTION_EVERY_S``, until
        cancelled."""
        while True:
            removed = await self._db.call(lambda ob: ob.purge_retained())
            if removed:
                log.info("outbox retention: delivered events deleted", events=removed)
            await asyncio.sleep(RETENTION_EVERY_S)

    def _refuse(self, event: OutboundEvent, why: str) -> None:
        self._stats.outbox_rejected += 1
        if self._stats.outbox_rejected % ALARM_EVERY == 1:
            log.error("ALARM: event not stored: webhook receivers are down for too long or the "
                      "disk is full; transcription goes on but these events are lost", reason=why,
                      event_type=str(event.type), call_id=event.call_id,
                      refused_so_far=self._stats.outbox_rejected)

    async def _store(self, writes: list[_Write]) -> None:
        batch = [write for write in writes if not isinstance(write, HeldFinals)]
        held = [write for write in writes if isinstance(write, HeldFinals)]
        items = [record(event, self._router.stored_targets(event)) for event, _ in batch]
        new_targets, forget = self._router.take_target_changes()

        def write(outbox: Outbox) -> list[bool]:
            outbox.forget_targets(forget)  # before a URL that came back is registered again
            if new_targets:
                outbox.register_targets(new_targets)
            return outbox.store(items, held=held)

        try:
            stored = await self._db.call(write)
        except OutboxDiskFull as exc:
            log.error("ALARM: the disk under the outbox is full; events are not being stored",
                      path=self._outbox_path, error=str(exc))
            stored = [False] * len(items)
        stored_at = time.monotonic()
        self._on_stored()
        for snapshot in held:
            log.debug("held finals stored", call_id=snapshot.call_id, leg=snapshot.leg,
                      finals=len(snapshot.finals))
        targets = self._router.targets
        for item, (event, future), ok in zip(items, batch, stored, strict=True):
            if not ok or not item.targets:
                self._stages.forget(event.id)
            if not ok:
                self._refuse(event, "the outbox is full (outbox.max_events)")
                if future is not None and not future.done():
                    future.set_result(Outcome.FAILED)
                continue
            log.debug("event stored", event_type=str(event.type), webhook_id=event.id,
                      call_id=event.call_id, targets=len(item.targets))
            self._stages.stored(event.id, stored_at)
            if future is not None:
                self._outcomes.expect(event.id, item.targets, future)
            for name in item.targets:
                target = targets[name]
                target.pending[event.call_id] = target.pending.get(event.call_id, 0) + 1
                target.wake.set()
        ended = [event for event, _ in batch if event.type is EventType.CALL_ENDED]
        for event in ended:
            self._router.call_ended(event)
        await self._on_calls_ended({name for event in ended for name in event.targets})
