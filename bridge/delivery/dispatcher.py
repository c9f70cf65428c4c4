"""Durable delivery: events go to the outbox first, then to each target, in order per call.

``DurableDispatcher`` is the bridge's ``EventSink``:

* ``publish`` never blocks. Finals and call events are queued for the outbox writer, which
  stores them in batches on the outbox thread (never on the event loop); only stored events
  are sent. Partials skip the outbox: they are sent at once, and dropped (counted) when they
  are stale, when the target is backing off, or when the call still has events waiting for
  that target (a partial must not overtake the final before it).
* One worker per target takes the oldest pending delivery of each call (``max_in_flight``
  calls at a time): a retry holds back the rest of its call for that target; other calls
  and other targets flow. Retries follow ``retry_schedule_s`` with jitter, or the receiver's
  ``Retry-After`` (kept between the schedule's first step and ``MAX_RETRY_AFTER_S``), until
  ``ttl_s`` after the event was produced; 4xx other than 408, 425 and 429 dead-letter at
  once; ``410 Gone`` disables the target.
* A per-call URL becomes a target when it lies under an allow-list entry and passes the
  request-forgery guard; at most ``max_call_targets`` exist at once, and one is retired
  (tasks stopped, row deleted) once nothing is pending for it and no live call names it.
* ``hold`` keeps a leg's held finals (masked) in the outbox, undelivered; on start, those a
  killed run held become ordinary finals, then calls that a previous run left open are
  closed with ``call.ended`` (``reason: bridge_restart``) carrying the finals stored so far.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from fnmatch import fnmatch
from typing import Any, Final, TypeVar

import aiohttp
import structlog

from bridge.config import DEFAULT_TARGET, Settings, decode_webhook_secret
from bridge.delivery.outbox import DueDelivery, HeldFinals, Outbox, OutboxDiskFull, StoredEvent
from bridge.delivery.retry import Outcome, next_attempt_delay
from bridge.delivery.webhooks import encode_event, endpoint_for_logs, post_event
from bridge.errors import DeliveryError
from bridge.events import EventType, OutboundEvent
from bridge.security import Endpoint, check_webhook_url, endpoint_of

log = structlog.get_logger("bridge.delivery")

T = TypeVar("T")
WRITE_QUEUE: Final = 20_000  # events waiting for the outbox writer
WRITE_BATCH: Final = 256
POLL_S: Final = 1.0  # workers look again this often (operator replays land in the file)
PARTIAL_QUEUE: Final = 64  # per target
RETENTION_EVERY_S: Final = 3600.0
ALARM_EVERY: Final = 100  # log the outbox-full alarm on the 1st, 101st, ... refusal
CALL_TARGET_PREFIX: Final = "call-"
PER_CALL_LABEL: Final = "per_call"  # every per-call target, as one metrics series
REFUSAL_LOG_EVERY_S: Final = 60.0  # refused per-call URLs: one log line per minute at most


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
            raise RuntimeError("outbox not open")
        return await self._run(lambda: work(outbox))

    async def close(self) -> None:
        if self._outbox is not None:
            outbox, self._outbox = self._outbox, None
            await self._run(outbox.close)
        self._executor.shutdown(wait=True)

    async def _run(self, work: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, work)


@dataclass
class Target:
    """A webhook target as the dispatcher uses it."""

    name: str
    url: str
    key: bytes
    secret_env: str
    events: tuple[str, ...] = ("*",)
    disabled: str | None = None
    backing_off: bool = False
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    pending: dict[str, int] = field(default_factory=dict)  # call_id -> stored, not finished
    live: set[str] = field(default_factory=set)  # calls in progress that name this target
    partials: deque[tuple[float, OutboundEvent]] = field(
        default_factory=lambda: deque(maxlen=PARTIAL_QUEUE))
    partial_wake: asyncio.Event = field(default_factory=asyncio.Event)

    def wants(self, event_type: str) -> bool:
        return any(fnmatch(event_type, pattern) for pattern in self.events)

    @property
    def per_call(self) -> bool:
        return self.name.startswith(CALL_TARGET_PREFIX)

    @property
    def idle(self) -> bool:
        """Nothing to deliver and no live call to deliver for."""
        return not self.pending and not self.live


@dataclass(slots=True)
class DeliveryStats:
    """Counters for logs, the demo and the metrics endpoint."""

    delivered: int = 0
    retried: int = 0
    dead: int = 0
    partials_sent: int = 0
    partials_dropped: int = 0
    outbox_rejected: int = 0
    targets_disabled: int = 0


_Write = tuple[OutboundEvent, asyncio.Future[Outcome] | None] | HeldFinals


@dataclass(slots=True)
class _Waiting:
    """An event published by this process whose outcome a call is waiting for."""

    targets: set[str]
    worst: Outcome
    future: asyncio.Future[Outcome]


class DurableDispatcher:
    """The outbox-backed ``EventSink``. Use ``async with``."""

    def __init__(self, settings: Settings, session: aiohttp.ClientSession) -> None:
        self.settings = settings
        self.hooks = settings.webhooks
        self._session = session
        outbox = settings.outbox
        self.db = OutboxThread(lambda: Outbox(outbox.path, max_events=outbox.max_events,
                                              retention_days=outbox.retention_days))
        self.targets: dict[str, Target] = {}
        for configured in self.hooks.all_targets():
            key = decode_webhook_secret(configured.secret) or b""
            self.targets[configured.name] = Target(configured.name, configured.url, key,
                                                   configured.secret_env, configured.events)
        self.stats = DeliveryStats()
        self._writes: asyncio.Queue[_Write] = asyncio.Queue(WRITE_QUEUE)
        self._waiting: dict[str, _Waiting] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._workers: dict[str, tuple[asyncio.Task[None], asyncio.Task[None]]] = {}
        self._new_targets: list[tuple[str, str, str]] = []
        self._allowlist = [entry for entry in map(endpoint_of, self.hooks.call_url_allowlist)
                           if isinstance(entry, Endpoint)]
        self._refused_call_urls = 0
        self._forget_later: list[str] = []  # retired targets whose rows the writer deletes
        self._refusal_logged_at = -REFUSAL_LOG_EVERY_S

    # -- lifecycle ----------------------------------------------------------------------------

    async def __aenter__(self) -> DurableDispatcher:
        await self.db.open()
        recovered = await self.db.call(lambda ob: ob.release_held())
        if recovered:
            log.warning("finals held for redaction when the previous run stopped are "
                        "delivered with every number masked", finals=recovered)
        known = await self.db.call(lambda ob: ob.targets())
        pending = await self.db.call(lambda ob: ob.pending_by_target())
        left_open = await self.db.call(lambda ob: ob.live_calls())
        needed = set(pending).union(*(call.targets for call in left_open))
        for name, (url, _secret_env) in known.items():
            if name in self.targets or not name.startswith(CALL_TARGET_PREFIX):
                continue
            if name not in needed:
                continue  # nothing left to deliver: retired below
            # A per-call target from a previous run, judged again by today's rules.
            problem = self._call_url_problem(url)
            if problem is None:
                self._add_call_target(name, url)
            else:
                log.warning("per-call webhook target from a previous run refused; its events "
                            "stay in the outbox", target=name, reason=problem)
        stale = [name for name in known
                 if name.startswith(CALL_TARGET_PREFIX) and name not in self.targets]
        await self.db.call(lambda ob: ob.forget_targets(stale))
        await self.db.call(lambda ob: ob.register_targets(
            (t.name, t.url, t.secret_env) for t in self.targets.values()))
        disabled = await self.db.call(lambda ob: ob.disabled_targets())
        for name, reason in disabled.items():
            if name in self.targets:
                self.targets[name].disabled = reason
        await self.db.call(lambda ob: ob.retry_now())
        for name, calls in pending.items():
            if name in self.targets:
                self.targets[name].pending = calls
            else:
                log.warning("the outbox holds events for a target that is no longer "
                            "configured; they wait until it is configured again or purged",
                            target=name, events=sum(calls.values()))
        self._tasks.append(asyncio.create_task(self._write_loop(), name="outbox writer"))
        self._tasks.append(asyncio.create_task(self._retention_loop(), name="outbox retention"))
        for target in self.targets.values():
            self._start_target(target)
        await self._close_calls_left_open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close(self.hooks.drain_timeout_s)

    async def close(self, drain_timeout_s: float) -> None:
        """Store what is queued, deliver for up to ``drain_timeout_s``, then stop.

        Undelivered events stay in the outbox for the next start. Cancelling skips the drain.
        """
        try:
            await self._writes.join()
            async with asyncio.timeout(drain_timeout_s):
                while any(t.pending and not t.disabled for t in self.targets.values()):
                    waiter = asyncio.Event()
                    self._drain_waiter = waiter
                    await waiter.wait()
        except TimeoutError:
            left = sum(sum(t.pending.values()) for t in self.targets.values())
            log.warning("webhook delivery stopped with events still in the outbox; they are "
                        "delivered at the next start", events=left)
        finally:
            tasks = [*self._tasks, *(t for pair in self._workers.values() for t in pair)]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self.db.close()
            log.info("webhook delivery stopped", delivered=self.stats.delivered,
                     retried=self.stats.retried, dead=self.stats.dead,
                     partials_sent=self.stats.partials_sent,
                     partials_dropped=self.stats.partials_dropped,
                     outbox_rejected=self.stats.outbox_rejected)

    _drain_waiter: asyncio.Event | None = None

    def _progress(self) -> None:
        if self._drain_waiter is not None:
            self._drain_waiter.set()

    def _start_target(self, target: Target) -> None:
        self._workers[target.name] = (
            asyncio.create_task(self._work(target), name=f"webhook {target.name}"),
            asyncio.create_task(self._send_partials(target), name=f"partials {target.name}"))

    async def _retire_if_idle(self, names: Iterable[str]) -> None:
        """Retire per-call targets that have nothing left to deliver and no live call: their
        tasks stop and their row leaves the outbox, so distinct per-call URLs cannot pile up.

        Called on the event loop between awaits of the target's own work, so no delivery of
        the target is in flight. A URL that comes back later gets a fresh target."""
        retired, tasks = self._detach_idle(names)
        try:
            if retired:
                await self.db.call(lambda ob: ob.forget_targets(retired))
        finally:
            # Only now: the caller may be one of the target's own deliveries, and cancelling
            # its worker cancels it too, with the forgetting still queued.
            for task in tasks:
                task.cancel()

    def _detach_idle(self, names: Iterable[str]) -> tuple[list[str], list[asyncio.Task[None]]]:
        """Take idle per-call targets out of ``targets``: their names, and their tasks for
        the caller to cancel. Their workers fetch nothing more from here on."""
        retired: list[str] = []
        tasks: list[asyncio.Task[None]] = []
        for name in names:
            target = self.targets.get(name)
            if target is None or not target.per_call or not target.idle:
                continue
            del self.targets[name]
            target.disabled = "retired"
            tasks += self._workers.pop(name, ())
            retired.append(name)
        if retired:
            log.debug("per-call webhook targets retired", targets=len(retired))
            gone = set(retired)  # not recorded yet: then they never need to be
            self._new_targets = [new for new in self._new_targets if new[0] not in gone]
        return retired, tasks

    def pending_by_label(self) -> dict[str, int]:
        """Deliveries waiting, per target name for configured targets and under one
        ``per_call`` label for all per-call targets (their URLs are no metric labels)."""
        counts: dict[str, int] = {}
        for target in self.targets.values():
            label = PER_CALL_LABEL if target.per_call else target.name
            counts[label] = counts.get(label, 0) + sum(target.pending.values())
        return counts

    # -- routing ------------------------------------------------------------------------------

    def route(self, path: str, parameters: Mapping[str, str]) -> tuple[str, ...]:
        """The targets of a call: every matching route's, else ``default``; plus a per-call
        URL from the custom parameters when the allow-list and the forgery guard accept it."""
        names: list[str] = []
        for route in self.hooks.routes:
            if route.path and route.path != path:
                continue
            if all(parameters.get(k) == v for k, v in route.parameters):
                names += [n for n in route.targets if n not in names]
        if not names:
            names = [t.name for t in self.hooks.all_targets()
                     if t.name == DEFAULT_TARGET or t.name.startswith(f"{DEFAULT_TARGET}-")]
        url = parameters.get(self.hooks.call_url_parameter)
        if url:
            name = self._call_target(url)
            if name is not None and name not in names:
                names.append(name)
        return tuple(names)

    def _call_url_problem(self, url: str) -> str | None:
        """Why a per-call URL may not be used, or None: it must pass the request-forgery
        checks and lie under an allow-list entry (same scheme, host and port after
        normalisation; the entry's path segments as its prefix)."""
        problem = check_webhook_url(url, allow_insecure_http=self.hooks.allow_insecure_http,
                                    allow_private=self.hooks.allow_private_networks)
        if problem is not None:
            return problem
        endpoint = endpoint_of(url)
        if isinstance(endpoint, str) or not any(endpoint.within(entry)
                                                for entry in self._allowlist):
            return "not under an entry of webhooks.call_url_allowlist"
        return None

    def _call_target(self, url: str) -> str | None:
        name = CALL_TARGET_PREFIX + hashlib.sha256(url.encode()).hexdigest()[:16]
        if name in self.targets:
            return name
        problem = self._call_url_problem(url)
        if problem is None and self._call_targets_full():
            problem = "webhooks.max_call_targets per-call targets are in use"
        if problem is not None:
            self._refuse_call_url(url, problem)
            return None
        if name not in self.targets:
            target = self._add_call_target(name, url)
            self._start_target(target)
            # Recorded with the next batch of events, before any event that names it.
            self._new_targets.append((name, url, target.secret_env))
        return name

    def _call_targets_full(self) -> bool:
        """Whether the per-call targets are at their bound, after retiring idle ones that a
        call was routed to but never published for (its start failed after routing)."""
        per_call = [t.name for t in self.targets.values() if t.per_call]
        if len(per_call) < self.hooks.max_call_targets:
            return False
        retired, tasks = self._detach_idle(per_call)
        for task in tasks:
            task.cancel()
        self._forget_later += retired
        return sum(t.per_call for t in self.targets.values()) >= self.hooks.max_call_targets

    def _refuse_call_url(self, url: str, problem: str) -> None:
        """Log a refused per-call URL, at most once per ``REFUSAL_LOG_EVERY_S``: calls chosen
        by a peer must not be able to flood the log."""
        self._refused_call_urls += 1
        now = time.monotonic()
        if now - self._refusal_logged_at < REFUSAL_LOG_EVERY_S:
            return
        self._refusal_logged_at = now
        log.warning("per-call webhook URL refused; the call keeps its configured targets",
                    url=endpoint_for_logs(url)[:200], reason=problem,
                    refused_so_far=self._refused_call_urls)

    def _add_call_target(self, name: str, url: str) -> Target:
        key = decode_webhook_secret(self.hooks.secret) or b""
        target = Target(name, url, key, "CALLBRIDGE_WEBHOOK_SECRET")
        self.targets[name] = target
        return target

    # -- publishing ---------------------------------------------------------------------------

    def publish(self, event: OutboundEvent) -> asyncio.Future[Outcome]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Outcome] = loop.create_future()
        if event.type is EventType.TRANSCRIPT_PARTIAL:
            self._publish_partial(event)
            future.set_result(Outcome.DELIVERED)
            return future
        if event.type is not EventType.CALL_ENDED:
            for name in event.targets:  # its call.ended, once stored, lets the target retire
                target = self.targets.get(name)
                if target is not None and target.per_call:
                    target.live.add(event.call_id)
        try:
            self._writes.put_nowait((event, future))
        except asyncio.QueueFull:
            self._refuse(event, "the outbox writer is behind")
            future.set_result(Outcome.FAILED)
        return future

    def hold(self, call_id: str, leg: str, finals: Sequence[OutboundEvent]) -> None:
        """Keep ``finals`` (their numbers masked) as the leg's held finals, replacing the
        previous ones; they are delivered only if this process dies before it releases them.
        Stored in order with the events published before it; never blocks."""
        items = tuple(StoredEvent(event, encode_event(event), self._stored_targets(event))
                      for event in finals)
        try:
            self._writes.put_nowait(HeldFinals(call_id, leg, items))
        except asyncio.QueueFull:
            self.stats.outbox_rejected += 1  # the finals themselves still go out on release

    def _stored_targets(self, event: OutboundEvent) -> tuple[str, ...]:
        return tuple(name for name in event.targets
                     if name in self.targets and self.targets[name].wants(str(event.type))
                     and not self.targets[name].disabled)

    def _refuse(self, event: OutboundEvent, why: str) -> None:
        self.stats.outbox_rejected += 1
        if self.stats.outbox_rejected % ALARM_EVERY == 1:
            log.error("ALARM: event not stored: webhook receivers are down for too long or the "
                      "disk is full; transcription goes on but these events are lost", reason=why,
                      event_type=str(event.type), call_id=event.call_id,
                      refused_so_far=self.stats.outbox_rejected)

    async def _write_loop(self) -> None:
        while True:
            batch = [await self._writes.get()]
            while len(batch) < WRITE_BATCH and not self._writes.empty():
                batch.append(self._writes.get_nowait())
            try:
                await self._store(batch)
            finally:
                for _ in batch:
                    self._writes.task_done()

    async def _store(self, writes: list[_Write]) -> None:
        batch = [write for write in writes if not isinstance(write, HeldFinals)]
        held = [write for write in writes if isinstance(write, HeldFinals)]
        items = [StoredEvent(event, encode_event(event), self._stored_targets(event))
                 for event, _ in batch]
        new_targets, self._new_targets = self._new_targets, []
        forget, self._forget_later = self._forget_later, []

        def write(outbox: Outbox) -> list[bool]:
            outbox.forget_targets(forget)  # before a URL that came back is registered again
            if new_targets:
                outbox.register_targets(new_targets)
            return outbox.store(items, held=held)

        try:
            stored = await self.db.call(write)
        except OutboxDiskFull as exc:
            log.error("ALARM: the disk under the outbox is full; events are not being stored",
                      path=str(self.settings.outbox.path), error=str(exc))
            stored = [False] * len(items)
        for snapshot in held:
            log.debug("held finals stored", call_id=snapshot.call_id, leg=snapshot.leg,
                      finals=len(snapshot.finals))
        for item, (event, future), ok in zip(items, batch, stored, strict=True):
            if not ok:
                self._refuse(event, "the outbox is full (outbox.max_events)")
                if future is not None and not future.done():
                    future.set_result(Outcome.FAILED)
                continue
            log.debug("event stored", event_type=str(event.type), webhook_id=event.id,
                      call_id=event.call_id, targets=len(item.targets))
            if future is not None:
                if item.targets:
                    self._waiting[event.id] = _Waiting(set(item.targets), Outcome.DELIVERED,
                                                       future)
                elif not future.done():
                    future.set_result(Outcome.DELIVERED)
            for name in item.targets:
                target = self.targets[name]
                target.pending[event.call_id] = target.pending.get(event.call_id, 0) + 1
                target.wake.set()
        ended = [event for event, _ in batch if event.type is EventType.CALL_ENDED]
        for event in ended:
            for name in event.targets:
                if name in self.targets:
                    self.targets[name].live.discard(event.call_id)
        await self._retire_if_idle({name for event in ended for name in event.targets})

    def _settle(self, event_id: str, target: str, outcome: Outcome) -> None:
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

    # -- delivering ---------------------------------------------------------------------------

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
        limit = self.hooks.max_in_flight
        while True:
            target.wake.clear()
            if not target.disabled and len(in_flight) < limit:
                due, next_at = await self.db.call(lambda ob: ob.due_heads(
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
        try:
            status = await post_event(self._session, target.url, target.key, due.event_id,
                                      due.body, timeout_s=self.hooks.timeout_s)
        except DeliveryError as exc:
            await self._failed(target, due, exc)
        else:
            await self.db.call(lambda ob: ob.mark_delivered(due.event_seq, target.name, status))
            target.backing_off = False
            self.stats.delivered += 1
            self._finished(target, due, Outcome.DELIVERED)
        await self._retire_if_idle([target.name])

    async def _failed(self, target: Target, due: DueDelivery, error: DeliveryError) -> None:
        where = {"target": target.name, "endpoint": endpoint_for_logs(target.url),
                 "event_type": due.event_type, "webhook_id": due.event_id,
                 "call_id": due.call_id, "attempt": due.attempts + 1}
        if error.status == 410:
            target.disabled = "the receiver answered 410 Gone"
            count = await self.db.call(lambda ob: ob.disable_target(
                target.name, "the receiver answered 410 Gone"))
            self.stats.targets_disabled += 1
            log.error("webhook target disabled: the receiver answered 410 Gone; its pending "
                      "events are dead-lettered (callbridge outbox replay --dead re-enables it)",
                      dead_lettered=count, **where)
            target.pending.clear()
            self.stats.dead += count
            for event_id, waiting in list(self._waiting.items()):
                if target.name in waiting.targets:
                    self._settle(event_id, target.name, Outcome.FAILED)
            self._progress()
            return
        expired = time.time() - due.created_at >= self.hooks.ttl_s
        if not error.retryable or expired:
            reason = str(error) if not expired else f"retries exhausted after ttl: {error}"
            await self.db.call(lambda ob: ob.mark_dead(due.event_seq, target.name, reason,
                                                       error.status))
            self.stats.dead += 1
            log.error("webhook event dead-lettered", error=reason, status=error.status, **where)
            self._finished(target, due, Outcome.REJECTED if not error.retryable
                           else Outcome.FAILED)
            return
        delay = next_attempt_delay(due.attempts + 1, self.hooks.retry_schedule_s,
                                   error.retry_after_s)
        await self.db.call(lambda ob: ob.schedule_retry(
            due.event_seq, target.name, time.time() + delay, str(error), error.status))
        target.backing_off = True
        self.stats.retried += 1
        log.warning("webhook attempt failed; will retry", error=str(error), status=error.status,
                    retry_in_s=round(delay, 2), **where)

    def _finished(self, target: Target, due: DueDelivery, outcome: Outcome) -> None:
        left = target.pending.get(due.call_id, 0) - 1
        if left > 0:
            target.pending[due.call_id] = left
        else:
            target.pending.pop(due.call_id, None)
        self._settle(due.event_id, target.name, outcome)
        self._progress()

    # -- partials -----------------------------------------------------------------------------

    def _publish_partial(self, event: OutboundEvent) -> None:
        now = time.monotonic()
        body_targets = [self.targets[n] for n in event.targets
                        if n in self.targets and self.targets[n].wants(str(event.type))]
        for target in body_targets:
            if target.disabled or target.backing_off or event.call_id in target.pending:
                self.stats.partials_dropped += 1
                continue
            if len(target.partials) == target.partials.maxlen:
                self.stats.partials_dropped += 1  # the oldest falls out
            target.partials.append((now, event))
            target.partial_wake.set()

    async def _send_partials(self, target: Target) -> None:
        max_age = self.hooks.partial_max_age_s
        while True:
            target.partial_wake.clear()
            while target.partials:
                queued_at, event = target.partials.popleft()
                if time.monotonic() - queued_at > max_age or event.call_id in target.pending:
                    self.stats.partials_dropped += 1
                    continue
                try:
                    await post_event(self._session, target.url, target.key, event.id,
                                     encode_event(event), timeout_s=min(self.hooks.timeout_s,
                                                                        max_age))
                    self.stats.partials_sent += 1
                except DeliveryError:
                    self.stats.partials_dropped += 1
            await target.partial_wake.wait()

    # -- housekeeping -------------------------------------------------------------------------

    async def _retention_loop(self) -> None:
        while True:
            removed = await self.db.call(lambda ob: ob.purge_retained())
            if removed:
                log.info("outbox retention: delivered events deleted", events=removed)
            await asyncio.sleep(RETENTION_EVERY_S)

    async def _close_calls_left_open(self) -> None:
        live = await self.db.call(lambda ob: ob.live_calls())
        if not live:
            return
        log.warning("closing calls a previous run left open", calls=len(live))
        now = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        for call in live:
            started = call.started
            data: dict[str, Any] = {key: started.get(key) for key in (
                "call_id", "stream_id", "provider", "leg", "speaker", "custom_parameters")}
            data.update({"reason": "bridge_restart", "duration_ms": None,
                         "legs": [{"leg": leg["leg"], "speaker": leg["speaker"],
                                   "text": leg["text"], "transcripts": leg["transcripts"]}
                                  for leg in call.legs]})
            event = OutboundEvent(f"msg_{uuid.uuid4().hex}", EventType.CALL_ENDED, now, data,
                                  call.call_id, None, call.targets)
            await self._writes.put((event, None))
        await self._writes.join()


def _forget(in_flight: dict[str, asyncio.Task[None]], call_id: str,
            wake: asyncio.Event) -> Callable[[asyncio.Task[None]], None]:
    def done(_: asyncio.Task[None]) -> None:
        in_flight.pop(call_id, None)
        wake.set()
    return done
