"""Delivery that survives losing an instance: the outbox mirrored to Redis, and takeover.

The local SQLite outbox stays each instance's working store (ordering, retries, delivery:
``bridge.delivery``). ``OutboxMirror`` copies what it holds undelivered into this instance's
namespace in Redis, oldest first: each event with the targets still pending
(``Keys.outbox``, field = its sequence number), the targets' URL and secret's variable name
(``Keys.outbox_targets``), and each call in progress with its legs' text, its finals'
transcript lines and its held finals, masked (``Keys.outbox_calls``): a survivor that ends
the call sends its ``call.completed`` with the transcript the lost instance had stored.
Deliveries that finish and rows that leave the file leave the copy too; the file remembers
what the copy lacks (``Outbox.to_mirror``), so a crash or a Redis outage only delays the
copy, which then catches up in order. With ``cluster.wait_replicas``, each batch waits for
that many replicas (``WAIT``).

An event is copied once it has been stored for ``LINGER_S`` (within twice that, plus a
round trip): long enough for a receiver that answers at once to have taken it, so that it
never needs copying and Redis mostly holds what waits for a slow or absent receiver.

``Takeovers`` watches the members: for each one whose heartbeat expired, one survivor
(holding ``Keys.takeover`` as a lease) adopts its events into its own outbox, keeping
every ``webhook-id``, ends its calls with ``call.ended`` (``instance_lost``), waits until
its own mirror has the adopted rows, then deletes the lost instance's namespace and leaves
a ``Keys.taken_over`` mark. At least once: a survivor that dies midway leaves the namespace
for the next one, and a receiver sees the same ``webhook-id`` again.

An instance restarted with the same id (``OutboxMirror.reconcile``, before its outbox's own
recovery): if it was taken over meanwhile, it drops the rows it had copied (a survivor
delivers them) and keeps the rest; if its file is new and Redis holds its rows, it imports
them; otherwise its file is the truth: copied again, and rows Redis has beyond it dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterable, Mapping
from typing import Any, Final

import orjson
import structlog

from bridge.cluster.connection import REDIS_ERRORS, stop, text
from bridge.cluster.member import ClusterMember
from bridge.delivery.dispatcher import DurableDispatcher
from bridge.delivery.outbox import HeldFinal, LiveCall, StoredEvent, ToMirror
from bridge.delivery.writer import OutboxThread
from bridge.events import EventType

log = structlog.get_logger("bridge.cluster")

MIRROR_BATCH: Final = 500  # rows of each kind per round trip to Redis
READ_BATCH: Final = 500  # a lost instance's events read (and adopted) this many at a time
POLL_S: Final = 1.0  # the mirror looks again this often (an operator's command changed the file)
LINGER_S: Final = 0.05  # an event waits this long before it is copied; so do passes
LEASE_FACTOR: Final = 6  # a takeover's lease lasts this many takeover_s
TAKEN_OVER_KEPT_S: Final = 7 * 86400  # the mark a restarted instance looks for


# -- the records in Redis (pure) ----------------------------------------------------------------

def encode_event(event: StoredEvent) -> bytes:
    return orjson.dumps({"id": event.id, "type": str(event.type), "call_id": event.call_id,
                         "leg": event.leg, "targets": list(event.targets),
                         "body": event.body.decode()})


def decode_event(raw: bytes) -> StoredEvent:
    """Raises ``ValueError`` (or ``KeyError``/``TypeError``) for a record not ours."""
    record = orjson.loads(raw)
    return StoredEvent(_str(record["id"]), EventType(record["type"]), _str(record["call_id"]),
                       None if record["leg"] is None else _str(record["leg"]),
                       _str(record["body"]).encode(), _names(record["targets"]))


def encode_call(call: LiveCall) -> bytes:
    return orjson.dumps({"call_id": call.call_id, "started": call.started,
                         "targets": list(call.targets), "legs": call.legs,
                         "lines": list(call.lines),
                         "held": [{"leg": h.leg, "id": h.id, "body": h.body.decode(),
                                   "targets": list(h.targets), "speaker": h.speaker,
                                   "text": h.text, "line": h.line} for h in call.held]})


def decode_call(raw: bytes) -> LiveCall:
    record = orjson.loads(raw)
    if not isinstance(record["started"], dict) or not isinstance(record["legs"], list):
        raise ValueError("not a call record")
    held = tuple(HeldFinal(_str(h["leg"]), _str(h["id"]), _str(h["body"]).encode(),
                           _names(h["targets"]), h["speaker"] if isinstance(h["speaker"], str)
                           else None, _str(h["text"]), _dict_or_none(h.get("line")))
                 for h in record["held"])
    legs = [leg for leg in record["legs"] if isinstance(leg, dict)]
    # A record an older version wrote has no lines: the call's transcript is then empty.
    lines = tuple(line for line in record.get("lines", ()) if isinstance(line, dict))
    return LiveCall(_str(record["call_id"]), record["started"], _names(record["targets"]),
                    legs, held, lines)


def encode_target(url: str, secret_env: str) -> bytes:
    return orjson.dumps({"url": url, "secret_env": secret_env})


def decode_targets(raw: Mapping[Any, Any]) -> dict[str, tuple[str, str]]:
    targets = {}
    for name, value in raw.items():
        with contextlib.suppress(ValueError, KeyError, TypeError):
            record = orjson.loads(value)
            targets[text(name)] = (_str(record["url"]), _str(record["secret_env"]))
    return targets


def _str(value: object) -> str:
    if not isinstance(value, str):
        raise TypeError("expected text")
    return value


def _dict_or_none(value: object) -> dict[str, Any] | None:
    return value if isinstance(value, dict) else None


def _names(value: object) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise TypeError("expected a list")
    return tuple(_str(name) for name in value)


def _decoded(raws: Iterable[bytes | str | None], decode: Any, kind: str,
             instance: str) -> list[Any]:
    """The records that decode; a foreign or damaged one is skipped with one log line."""
    records, damaged = [], 0
    for raw in raws:
        if raw is None:
            continue
        try:
            records.append(decode(raw.encode() if isinstance(raw, str) else raw))
        except (ValueError, KeyError, TypeError, UnicodeDecodeError):
            damaged += 1
    if damaged:
        log.error("records in Redis that are not callbridge's were skipped", kind=kind,
                  instance=instance, records=damaged)
    return records


# -- the mirror ---------------------------------------------------------------------------------

class OutboxMirror:
    """This instance's outbox, copied to Redis (a ``bridge.delivery.dispatcher.Replica``)."""

    def __init__(self, member: ClusterMember) -> None:
        self.member = member
        self.settings = member.settings
        self.keys = member.keys
        self.redis = member.redis
        self.backlog = 0  # rows the copy lacks, as of the last pass
        self.mirrored = 0  # events copied (counted once per copy)
        self.wait_shortfalls = 0  # batches fewer replicas than cluster.wait_replicas took
        self.takeovers = 0  # lost instances whose events this one took over
        self._waiting_short = False
        self._prune = False
        self._unchecked = False  # reconcile could not reach Redis
        # An event stored this recently is not copied yet: its receiver may take it first.
        self.grace_s = LINGER_S
        self._lock = asyncio.Lock()

    async def reconcile(self, db: OutboxThread) -> None:
        """At start, before the outbox's own recovery: adopt the verdict of a takeover, or
        import this instance's rows into a new file; then copy the whole file again. Redis
        away: the file is the truth."""
        me = self.member.id
        try:
            await self._wait_for_takeover(me)
            if await self.redis.exists(self.keys.taken_over(me)):
                events, calls = await db.call(lambda ob: ob.drop_mirrored())
                await self.redis.delete(self.keys.taken_over(me))
                log.warning("another instance took over this one's undelivered events while "
                            "it was away; local copies of them are dropped, not sent twice",
                            events=events, calls=calls)
            elif await db.call(lambda ob: ob.is_empty()):
                await self._restore(db)
        except REDIS_ERRORS as exc:
            self.member.trouble("outbox reconcile", exc)
            self._unchecked = True  # a takeover's mark, if any, is voided once Redis is back
        await db.call(lambda ob: ob.mirror_again())
        self._prune = True

    async def _wait_for_takeover(self, instance: str) -> None:
        """A survivor may be taking this id over right now: wait until it is done."""
        deadline = time.monotonic() + self.settings.takeover_s * LEASE_FACTOR
        while await self.redis.exists(self.keys.takeover(instance)):
            if time.monotonic() > deadline:
                return
            await asyncio.sleep(self.settings.heartbeat_s)

    async def _restore(self, db: OutboxThread) -> None:
        """A new file: take this instance's rows back from Redis, as they were."""
        me = self.member.id
        targets, events, calls = await read_namespace(self, me)
        rows = [(name, url, env) for name, (url, env) in targets.items()]
        if not events and not calls:
            return
        await db.call(lambda ob: ob.adopt(events, calls, rows))
        log.warning("outbox file was new: this instance's undelivered events and calls were "
                    "restored from the cluster", events=len(events), calls=len(calls))

    async def run(self, db: OutboxThread, changed: asyncio.Event) -> None:
        """Copy changes as they come, until cancelled (a batch in flight is copied again).
        After Redis was away, a copy that did not survive (no persistence) is redone."""
        check_copy = self._unchecked
        while True:
            changed.clear()
            try:
                if check_copy:
                    await self._check_copy(db)
                    check_copy = False
                await self.catch_up(db)
            except REDIS_ERRORS as exc:
                self.member.trouble("outbox mirror", exc)
                self.backlog = await db.call(lambda ob: ob.mirror_backlog())
                check_copy = True
                await asyncio.sleep(self.settings.heartbeat_s)
                continue
            except Exception:  # our bug or the disk: the copy waits, delivery goes on
                log.exception("outbox mirror failed; retrying")
                await asyncio.sleep(self.settings.takeover_s)
                continue
            with contextlib.suppress(TimeoutError):
                # Events too young to copy yet are due once their grace has passed.
                async with asyncio.timeout(LINGER_S if self.backlog else POLL_S):
                    await changed.wait()
            await asyncio.sleep(LINGER_S)  # a burst of changes goes in one round trip

    async def _check_copy(self, db: OutboxThread) -> None:
        """After Redis was away: is the copy still there? Gone with Redis's data, or taken
        over by a survivor while this instance could not reach Redis (it was alive all
        along, so its file stays the truth and the survivor's mark is void)."""
        me = self.member.id
        if await self.redis.exists(self.keys.outbox_copy(me)):
            return
        taken = await self.redis.delete(self.keys.taken_over(me))
        log.warning("this instance's outbox copy is gone from redis; copying the outbox again",
                    reason="taken over while unreachable" if taken else "redis lost its data")
        await db.call(lambda ob: ob.mirror_again())
        self._prune = True

    async def flush(self, db: OutboxThread) -> None:
        self.grace_s = 0.0  # the last pass copies everything
        with contextlib.suppress(*REDIS_ERRORS):
            await self.catch_up(db)

    async def catch_up(self, db: OutboxThread) -> None:
        """Copy everything the copy lacks now, in batches, oldest first. Raises
        ``REDIS_ERRORS``; what was not copied stays marked in the file."""
        async with self._lock:
            copied = calls = removed = 0
            grace = self.grace_s
            batch = await db.call(lambda ob: ob.to_mirror(MIRROR_BATCH, grace))
            while not batch.empty:
                await self._write(batch)
                copied += len(batch.events)
                calls += len(batch.calls)
                removed += len(batch.removed)
                batch = await db.call(lambda ob, done=batch: ob.mark_mirrored(  # type: ignore[misc]
                    done, MIRROR_BATCH, grace))
            pruned = self._prune
            if pruned:
                await self._drop_stale(db)
                await self.redis.set(self.keys.outbox_copy(self.member.id), str(time.time()))
                self._prune = False
            self.backlog = batch.young  # the last batch read had nothing old enough
        self.mirrored += copied
        if copied or calls or removed or pruned:
            self.member.recovered()  # only a Redis call that succeeded says it is back
        if copied or calls or removed:
            log.debug("outbox mirrored", events=copied, calls=calls, removed=removed,
                      backlog=self.backlog)

    async def _write(self, batch: ToMirror) -> None:
        me, keys = self.member.id, self.keys
        outbox, call_key = keys.outbox(me), keys.outbox_calls(me)
        stored = {str(seq): encode_event(event) for seq, _, event in batch.events
                  if event is not None}
        gone = [str(seq) for seq, _, event in batch.events if event is None]
        gone += [key for _, kind, key in batch.removed if kind == "event"]
        gone_calls = [key for _, kind, key in batch.removed if kind == "call"]
        # One round trip on one connection: WAIT counts the writes of its own connection.
        async with self.redis.pipeline(transaction=False) as pipe:
            if batch.targets:
                pipe.hset(keys.outbox_targets(me), mapping={
                    name: encode_target(url, env) for name, (url, env) in batch.targets.items()})
            if stored:
                pipe.hset(outbox, mapping=stored)  # type: ignore[arg-type]
            if gone:
                pipe.hdel(outbox, *gone)
            if batch.calls:
                pipe.hset(call_key, mapping={call.call_id: encode_call(call)
                                             for _, call in batch.calls})
            if gone_calls:
                pipe.hdel(call_key, *gone_calls)
            wanted = self.settings.wait_replicas
            if wanted:
                pipe.execute_command("WAIT", wanted, self.settings.wait_timeout_ms)
            replies = await pipe.execute()
        if wanted:
            self._replicas_took(int(replies[-1]), wanted)

    def _replicas_took(self, acked: int, wanted: int) -> None:
        if acked >= wanted:
            if self._waiting_short:
                log.info("redis replicas acknowledge the outbox's copy again", replicas=acked)
            self._waiting_short = False
            return
        self.wait_shortfalls += 1
        if not self._waiting_short:
            log.warning("fewer redis replicas than cluster.wait_replicas acknowledged the "
                        "outbox's copy in time; events are on the primary only",
                        replicas=acked, wanted=wanted)
        self._waiting_short = True

    async def _drop_stale(self, db: OutboxThread) -> None:
        """After copying the whole file again: drop what Redis has beyond it. Redis's keys
        are read first, so a row copied after that cannot be taken for stale."""
        me = self.member.id
        in_redis = {text(k) for k in await self.redis.hkeys(self.keys.outbox(me))}
        calls_in_redis = {text(k) for k in await self.redis.hkeys(self.keys.outbox_calls(me))}
        events, calls = await db.call(lambda ob: ob.mirrored_keys())
        async with self.redis.pipeline(transaction=False) as pipe:
            if in_redis - events:
                pipe.hdel(self.keys.outbox(me), *(in_redis - events))
            if calls_in_redis - calls:
                pipe.hdel(self.keys.outbox_calls(me), *(calls_in_redis - calls))
            await pipe.execute()


async def read_namespace(mirror: OutboxMirror, instance: str, *, events: bool = True,
                         ) -> tuple[dict[str, tuple[str, str]], list[StoredEvent],
                                    list[LiveCall]]:
    """An instance's targets, events (oldest first) and calls as its mirror left them."""
    redis, keys = mirror.redis, mirror.keys
    targets = decode_targets(await redis.hgetall(keys.outbox_targets(instance)))
    found: list[StoredEvent] = []
    if events:
        fields = sorted((text(k) for k in await redis.hkeys(keys.outbox(instance))),
                        key=lambda f: (len(f), f))  # numbers as text, in numeric order
        for start in range(0, len(fields), READ_BATCH):
            chunk = fields[start:start + READ_BATCH]
            found += _decoded(await redis.hmget(keys.outbox(instance), chunk), decode_event,
                              "event", instance)
    calls = _decoded((await redis.hgetall(keys.outbox_calls(instance))).values(), decode_call,
                     "call", instance)
    return targets, found, calls


# -- takeover -----------------------------------------------------------------------------------

class Takeovers:
    """Watches for lost members and takes over what they left. Use ``async with``."""

    def __init__(self, member: ClusterMember, mirror: OutboxMirror,
                 dispatcher: DurableDispatcher) -> None:
        self.member = member
        self.mirror = mirror
        self.dispatcher = dispatcher
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Takeovers:
        self._task = asyncio.create_task(self._watch(), name="cluster takeover")
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await stop(self._task)

    async def _watch(self) -> None:
        while True:
            try:
                for instance in await self.member.lost():
                    await self.take_over(instance)
            except REDIS_ERRORS as exc:
                self.member.trouble("takeover", exc)
            except Exception:  # our bug or the disk: the lease lapses, the takeover is redone
                log.exception("takeover of a lost instance failed; retrying")
                await asyncio.sleep(self.member.settings.takeover_s)
            await asyncio.sleep(self.member.settings.heartbeat_s)

    async def take_over(self, instance: str) -> bool:
        """Adopt a lost instance's events and calls if no other survivor is doing it;
        returns whether this one did. Raises ``REDIS_ERRORS`` (the lease then lapses and the
        takeover is done again, by this or another survivor)."""
        redis, keys, me = self.member.redis, self.member.keys, self.member.id
        lease_ms = int(self.member.settings.takeover_s * LEASE_FACTOR * 1000)
        if not await redis.set(keys.takeover(instance), me, nx=True, px=lease_ms):
            return False
        try:
            targets, events, calls = await read_namespace(self.mirror, instance)
            added, skipped = 0, 0
            for start in range(0, len(events), READ_BATCH):
                new, old = await self.dispatcher.adopt(events[start:start + READ_BATCH], (),
                                                       targets)
                added, skipped = added + new, skipped + old
            if calls:
                await self.dispatcher.adopt((), calls, targets, reason="instance_lost")
            # Only once our own copy in Redis has them may the lost instance's go.
            await self.mirror.catch_up(self.dispatcher.db)
            async with redis.pipeline(transaction=True) as pipe:
                pipe.delete(keys.outbox(instance), keys.outbox_targets(instance),
                            keys.outbox_calls(instance), keys.outbox_copy(instance),
                            keys.calls(instance))
                pipe.zrem(keys.instances, instance)
                pipe.set(keys.taken_over(instance), me, ex=TAKEN_OVER_KEPT_S)
                await pipe.execute()
        finally:
            with contextlib.suppress(*REDIS_ERRORS):
                if text(await redis.get(keys.takeover(instance)) or b"") == me:
                    await redis.delete(keys.takeover(instance))
        self.mirror.takeovers += 1
        log.warning("lost instance taken over: its undelivered events are delivered from here "
                    "and its calls ended", instance=instance, events=added,
                    already_here=skipped, calls=len(calls))
        return True
