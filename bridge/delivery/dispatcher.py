"""Durable delivery: events go to the outbox first, then to each target, in order per call.

``DurableDispatcher`` is the bridge's ``EventSink``, a facade over three parts:

* ``routing.Router``: which targets a call gets, and the per-call targets' bound and
  retirement;
* ``writer.OutboxWriter``: the bounded queue and the loop that stores events in batches on
  the outbox thread (never on the event loop), held finals, and the ``ALARM`` when an event
  cannot be stored;
* ``workers.DeliveryWorkers``: per target, the oldest due event of each call POSTed and
  retried, and partials sent at once.

``publish`` never blocks: finals and call events are queued for the writer and only stored
events are sent; partials skip the outbox. ``hold`` keeps a leg's held finals (masked) in
the outbox, undelivered. On start, finals a killed run held become ordinary finals, then
calls that a previous run left open are closed with ``call.ended`` (``reason:
bridge_restart``) carrying the finals stored so far, then (with ``artifacts.completed``)
``call.completed`` with the transcript rebuilt from the lines the outbox kept of them.

A ``Replica`` (cluster mode's mirror to Redis) may be given: it reconciles the opened file
before that recovery, copies the outbox while the bridge runs (woken by ``changed``), and
gets a last pass after the drain. ``adopt`` takes in another instance's undelivered events
and calls in progress, which a cluster's survivor delivers and closes.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Final, Protocol

import aiohttp
import structlog

from bridge.artifacts.completed import completed_data
from bridge.config import Settings
from bridge.delivery.outbox import LiveCall, Outbox, StoredEvent
from bridge.delivery.retry import Outcome
from bridge.delivery.routing import Router
from bridge.delivery.targets import CALL_TARGET_PREFIX, DeliveryStats, Target
from bridge.delivery.workers import DeliveryWorkers
from bridge.delivery.writer import OutboxThread, OutboxWriter, Outcomes
from bridge.events import EventType, OutboundEvent, make_event
from bridge.stages import Stages

log = structlog.get_logger("bridge.delivery")

# What a call.ended written at a restart repeats of its call.started (as every event does).
CALL_FIELDS = ("call_id", "stream_id", "provider", "leg", "speaker", "custom_parameters")
REPLICA_FLUSH_S: Final = 3.0  # the replica's last pass after the drain


class Replica(Protocol):
    """A copy of the outbox kept elsewhere (cluster mode: ``bridge.cluster.outbox``)."""

    async def reconcile(self, db: OutboxThread) -> None:
        """Bring the opened file and the copy into agreement, before recovery reads it."""

    async def run(self, db: OutboxThread, changed: asyncio.Event) -> None:
        """Keep the copy up to date until cancelled; ``changed`` is set on every change."""

    async def flush(self, db: OutboxThread) -> None:
        """Copy what is left now (after the drain, before the file closes)."""


class DurableDispatcher:
    """The outbox-backed ``EventSink``. Use ``async with``."""

    def __init__(self, settings: Settings, session: aiohttp.ClientSession, *,
                 replica: Replica | None = None,
                 made: Callable[[OutboundEvent], None] | None = None,
                 stages: Stages | None = None) -> None:
        self.settings = settings
        # Finals' times on their way to a webhook, for the stage latencies and traces.
        self._stages = stages = stages or Stages()
        self.replica = replica
        # Told of each event the dispatcher makes itself (the call.ended of a call a previous
        # run, or a lost instance, left open), as calls' sinks are told of theirs.
        self._made = made
        self.changed = asyncio.Event()  # set whenever the outbox's content changed
        self.hooks = settings.webhooks
        outbox = settings.outbox
        self.db = OutboxThread(lambda: Outbox(outbox.path, max_events=outbox.max_events,
                                              retention_days=outbox.retention_days))
        self.stats = DeliveryStats()
        outcomes = Outcomes()
        self._router = Router(self.hooks, on_added=self._start_target,
                              on_dropped=self._stop_targets)
        self._writer = OutboxWriter(self.db, self._router, self.stats, outcomes,
                                    outbox_path=str(outbox.path),
                                    on_calls_ended=self._retire_if_idle,
                                    on_stored=self.changed.set, stages=stages)
        self._workers = DeliveryWorkers(self.hooks, session, self.db, self.stats, outcomes,
                                        on_done=self._retire_one_if_idle,
                                        on_progress=self._progress, stages=stages)
        self._tasks: list[asyncio.Task[None]] = []
        self._drain_waiter: asyncio.Event | None = None

    @property
    def targets(self) -> dict[str, Target]:
        """The targets by name: configured ones, and per-call ones while they exist."""
        return self._router.targets

    def route(self, path: str, parameters: Mapping[str, str]) -> tuple[str, ...]:
        """The targets of a call on ``path`` with these custom parameters (``Router.route``)."""
        return self._router.route(path, parameters)

    def pending_by_label(self) -> dict[str, int]:
        return self._router.pending_by_label()

    # -- the EventSink ------------------------------------------------------------------------

    def publish(self, event: OutboundEvent) -> asyncio.Future[Outcome]:
        future: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        if event.type is EventType.TRANSCRIPT_PARTIAL:
            self._workers.publish_partial(event, self._router.wanting(event))
            future.set_result(Outcome.DELIVERED)
            return future
        if event.timing is not None:
            self._stages.track(event.id, event.timing)
        self._router.call_published(event)  # its call.ended, once stored, lets it retire
        self._writer.submit(event, future)
        return future

    def hold(self, call_id: str, leg: str, finals: Sequence[OutboundEvent]) -> None:
        """Keep ``finals`` (their numbers masked) as the leg's held finals, replacing the
        previous ones; they are delivered only if this process dies before it releases them.
        Stored in order with the events published before it; never blocks."""
        self._writer.hold(call_id, leg, finals)

    # -- lifecycle ----------------------------------------------------------------------------

    async def __aenter__(self) -> DurableDispatcher:
        await self.db.open()
        if self.replica is not None:
            await self.replica.reconcile(self.db)
        recovered = await self.db.call(lambda ob: ob.release_held())
        if recovered:
            log.warning("finals held for redaction when the previous run stopped are "
                        "delivered with every number masked", finals=recovered)
        known = await self.db.call(lambda ob: ob.targets())
        pending = await self.db.call(lambda ob: ob.pending_by_target())
        left_open = await self.db.call(lambda ob: ob.live_calls())
        targets = self._router.targets
        needed = set(pending).union(*(call.targets for call in left_open))
        for name, (url, _secret_env) in known.items():
            if name in targets or not name.startswith(CALL_TARGET_PREFIX):
                continue
            if name not in needed:
                continue  # nothing left to deliver: retired below
            # A per-call target from a previous run, judged again by today's rules.
            problem = self._router.call_url_problem(url)
            if problem is None:
                self._router.add_call_target(name, url)
            else:
                log.warning("per-call webhook target from a previous run refused; its events "
                            "stay in the outbox", target=name, reason=problem)
        stale = [name for name in known
                 if name.startswith(CALL_TARGET_PREFIX) and name not in targets]
        await self.db.call(lambda ob: ob.forget_targets(stale))
        await self.db.call(lambda ob: ob.register_targets(
            (t.name, t.url, t.secret_env) for t in targets.values()))
        disabled = await self.db.call(lambda ob: ob.disabled_targets())
        for name, reason in disabled.items():
            if name in targets:
                targets[name].disabled = reason
        await self.db.call(lambda ob: ob.retry_now())
        for name, calls in pending.items():
            if name in targets:
                targets[name].pending = calls
            else:
                log.warning("the outbox holds events for a target that is no longer "
                            "configured; they wait until it is configured again or purged",
                            target=name, events=sum(calls.values()))
        self._tasks.append(asyncio.create_task(self._writer.run(), name="outbox writer"))
        self._tasks.append(asyncio.create_task(self._writer.keep_retention(),
                                               name="outbox retention"))
        for target in targets.values():
            self._start_target(target)
        if self.replica is not None:
            self._tasks.append(asyncio.create_task(self.replica.run(self.db, self.changed),
                                                   name="outbox replica"))
        await self._close_calls_left_open(left_open)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close(self.hooks.drain_timeout_s)

    async def close(self, drain_timeout_s: float) -> None:
        """Store what is queued, deliver for up to ``drain_timeout_s``, then stop.

        Undelivered events stay in the outbox for the next start. Cancelling skips the drain.
        """
        targets = self._router.targets
        try:
            await self._writer.join()
            async with asyncio.timeout(drain_timeout_s):
                while any(t.pending and not t.disabled for t in targets.values()):
                    waiter = asyncio.Event()
                    self._drain_waiter = waiter
                    await waiter.wait()
        except TimeoutError:
            left = sum(sum(t.pending.values()) for t in targets.values())
            log.warning("webhook delivery stopped with events still in the outbox; they are "
                        "delivered at the next start", events=left)
        finally:
            if self.replica is not None:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(REPLICA_FLUSH_S):
                        await self.replica.flush(self.db)
            for task in self._tasks:
                task.cancel()
            await asyncio.gather(*self._tasks, self._workers.stop_all(),
                                 return_exceptions=True)
            await self.db.close()
            log.info("webhook delivery stopped", delivered=self.stats.delivered,
                     retried=self.stats.retried, dead=self.stats.dead,
                     partials_sent=self.stats.partials_sent,
                     partials_dropped=self.stats.partials_dropped,
                     outbox_rejected=self.stats.outbox_rejected)

    def _progress(self) -> None:
        self.changed.set()
        if self._drain_waiter is not None:
            self._drain_waiter.set()

    def _start_target(self, target: Target) -> None:
        self._workers.start(target)

    def _stop_targets(self, names: list[str]) -> None:
        for task in self._workers.detach(names):
            task.cancel()

    async def _retire_one_if_idle(self, name: str) -> None:
        await self._retire_if_idle([name])

    async def _retire_if_idle(self, names: Iterable[str]) -> None:
        """Retire per-call targets that have nothing left to deliver and no live call: their
        tasks stop and their row leaves the outbox, so distinct per-call URLs cannot pile up.

        Called on the event loop between awaits of the target's own work, so no delivery of
        the target is in flight. A URL that comes back later gets a fresh target."""
        retired = self._router.detach_idle(names)
        tasks = self._workers.detach(retired)
        try:
            if retired:
                await self.db.call(lambda ob: ob.forget_targets(retired))
        finally:
            # Only now: the caller may be one of the target's own deliveries, and cancelling
            # its worker cancels it too, with the forgetting still queued.
            for task in tasks:
                task.cancel()

    # -- another instance's outbox -------------------------------------------------------------

    async def adopt(self, events: Sequence[StoredEvent], calls: Sequence[LiveCall] = (),
                    targets: Mapping[str, tuple[str, str]] | None = None, *,
                    reason: str = "instance_lost") -> tuple[int, int]:
        """Deliver another outbox's events after ours, each keeping its ``webhook-id``, and
        close its ``calls`` with ``call.ended`` (``reason``) after releasing their held
        finals (masked). ``targets`` (name -> url, secret's variable) lets per-call targets
        be judged as at a restart; configured ones sign with this instance's secret.
        Returns (events added, events already here)."""
        known = dict(targets or {})
        self._adopt_targets(known, events, calls)
        rows = [(name, url, secret_env) for name, (url, secret_env) in known.items()]
        ids = [call.call_id for call in calls]
        adopted = await self.db.call(lambda ob: ob.adopt(events, calls, rows,
                                                         release_held=True))
        self._count_pending(adopted.events)
        if ids:
            left_open = await self.db.call(lambda ob: ob.live_calls(ids))
            await self._close_calls(left_open, reason)
        self.changed.set()
        return len(adopted.events), adopted.skipped

    def _adopt_targets(self, known: Mapping[str, tuple[str, str]],
                       events: Sequence[StoredEvent], calls: Sequence[LiveCall]) -> None:
        names = {name for event in events for name in event.targets}
        names |= {name for call in calls for name in call.targets}
        targets = self._router.targets
        for name in sorted(names):
            if name in targets:
                continue
            url = known.get(name, ("", ""))[0]
            problem = (self._router.call_url_problem(url) if name.startswith(CALL_TARGET_PREFIX)
                       and url else "not configured here")
            if problem is None:
                self._start_target(self._router.add_call_target(name, url))
            else:
                log.warning("events taken over for a target this instance cannot use; they "
                            "stay in the outbox", target=name, reason=problem)

    def _count_pending(self, added: Iterable[tuple[str, tuple[str, ...]]]) -> None:
        targets = self._router.targets
        for call_id, names in added:
            for name in names:
                target = targets.get(name)
                if target is not None:
                    target.pending[call_id] = target.pending.get(call_id, 0) + 1
                    target.wake.set()

    async def _close_calls_left_open(self, left_open: list[LiveCall]) -> None:
        if not left_open:
            return
        log.warning("closing calls a previous run left open", calls=len(left_open))
        await self._close_calls(left_open, "bridge_restart")

    async def _close_calls(self, left_open: list[LiveCall], reason: str) -> None:
        """``call.ended`` for each call, with its legs' text as stored so far, then its
        ``call.completed`` with the transcript rebuilt from its stored lines."""
        artifacts = self.settings.artifacts
        for call in left_open:
            identity = {key: call.started.get(key) for key in CALL_FIELDS}
            ended: dict[str, Any] = {
                "reason": reason, "duration_ms": None,
                "legs": [{"leg": leg["leg"], "speaker": leg["speaker"], "text": leg["text"],
                          "transcripts": leg["transcripts"]} for leg in call.legs]}
            events = [make_event(EventType.CALL_ENDED, identity | ended, call_id=call.call_id,
                                 targets=call.targets)]
            if artifacts.completed:
                # Nothing was stored for a call a dead process left: no file to name.
                completed = completed_data(call.lines, call_id=call.call_id, ended=ended,
                                           max_bytes=artifacts.completed_max_bytes,
                                           rebuilt=True)
                events.append(make_event(EventType.CALL_COMPLETED, identity | completed,
                                         call_id=call.call_id, targets=call.targets))
            for event in events:
                if self._made is not None:
                    self._made(event)
                await self._writer.submit_waiting(event)
        await self._writer.join()
