"""The cluster's live calls: each instance publishes its own, any instance lists them all and
sends an admin action to the instance holding a call.

Each instance keeps a hash of its live calls (``Keys.calls``: call key -> summary JSON),
updated when a call starts or ends and rewritten whole at every heartbeat, so a Redis that
was away or restarted is healed within one heartbeat. A listing reads the hashes of the
instances that are alive; a lost instance's calls drop out with its heartbeat.

An admin action for a call held elsewhere is a ``Command`` published on the owner's channel
(``Keys.commands``); the owner does it as it would for its own API and pushes a ``Reply``
to ``Keys.reply(request_id)``, which the sender waits on with ``BLPOP`` for
``cluster.command_timeout_s``. Commands are signed with a key derived from the admin token
and carry their target instance and their time; each request id is taken once across the
cluster (``Keys.command_seen``, so neither another instance nor the owner after a restart
does it again), and replies are signed with the same key: a party that can write to Redis
but does not hold the admin token cannot end or pause a call, nor answer in its owner's
place. Everything read from Redis is checked as hostile input (``parse_command``,
``parse_reply``, ``parse_summary``).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import re
import secrets
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

import orjson
import redis.asyncio as redis
import structlog

from bridge.cluster.connection import REDIS_ERRORS, check_cancelled, connect, stop
from bridge.cluster.member import FORGET_AFTER_S, ClusterMember
from bridge.config import INSTANCE_ID
from bridge.errors import ClusterMessageInvalid, OwnerUnreachable
from bridge.ingress.auth import NonceCache
from bridge.ingress.base import MAX_ID

log = structlog.get_logger("bridge.cluster")

ACTIONS: Final = frozenset({"end", "pause", "resume", "show"})
LEGS: Final = frozenset({"inbound", "outbound"})
COMMAND_VERSION: Final = 2
COMMAND_CONTEXT: Final = b"callbridge cluster admin command v1"
# Signed before a reply's fields, so that no command's signature is ever a reply's.
REPLY_SIGNED_PREFIX: Final = b"callbridge cluster admin reply v1"
MAX_COMMAND_BYTES: Final = 2048
MAX_REPLY_BYTES: Final = 256 * 1024
MAX_SUMMARY_BYTES: Final = 16 * 1024
# A call key is the announced id, or that id with "~n" when kept apart (bridge.admission).
MAX_CALL_KEY: Final = MAX_ID + 4
# A command older or newer than this (clocks of two machines, plus the wait) is refused.
MAX_COMMAND_AGE_S: Final = 60
MAX_COMMANDS_IN_FLIGHT: Final = 64  # on the owner: more at once are dropped (senders: 504)
MAX_WAITING_REPLIES: Final = 64  # on the sender: more at once are refused (503)
MAX_CALLS_LISTED_PER_INSTANCE: Final = 20_000
MAX_CALLS_LISTED: Final = 20_000  # the whole cluster's listing, past which it is partial
REPLY_TTL_MARGIN_S: Final = 30
REJECTIONS_LOGGED_EVERY_S: Final = 60.0
_REQUEST_ID: Final = re.compile(r"^[0-9a-f]{32}$")


@dataclass(frozen=True, slots=True)
class Command:
    """An admin action for a call, sent to the instance holding it."""

    request_id: str
    action: str  # one of ACTIONS
    call_key: str
    leg: str | None  # one of LEGS, or None for the whole call
    sender: str
    target: str  # the instance meant to do it: no other instance takes it
    at: int  # Unix seconds when it was sent

    def _signed_text(self) -> bytes:
        return "\n".join((str(COMMAND_VERSION), self.request_id, self.action, self.call_key,
                          self.leg or "", self.sender, self.target, str(self.at))).encode()

    def remember_until(self, now: float) -> int:
        """Until when its request id must be remembered: as long as a command sent at
        ``at`` is accepted, which is past ``now`` when the sender's clock is ahead."""
        return int(max(now, self.at)) + MAX_COMMAND_AGE_S + 1

    def encode(self, key: bytes) -> bytes:
        """The message published on the owner's channel, signed with ``key``."""
        signature = hmac.new(key, self._signed_text(), hashlib.sha256).digest()
        return orjson.dumps({"v": COMMAND_VERSION, "request": self.request_id,
                             "action": self.action, "call": self.call_key, "leg": self.leg,
                             "from": self.sender, "to": self.target, "at": self.at,
                             "sig": base64.b64encode(signature).decode()})


def command_key(admin_token: str) -> bytes:
    """The key commands are signed with: derived from the admin token, which every instance
    of a cluster shares, and used for nothing else."""
    return hmac.new(admin_token.encode(), COMMAND_CONTEXT, hashlib.sha256).digest()


def new_command(action: str, call_key: str, leg: str | None, *, sender: str, target: str,
                now: float) -> Command:
    """A command for instance ``target``, with a fresh request id."""
    return Command(secrets.token_hex(16), action, call_key, leg, sender, target, int(now))


def _field(message: Mapping[str, Any], name: str) -> Any:
    if name not in message:
        raise ClusterMessageInvalid(f"field {name!r} is missing")
    return message[name]


def _text_field(message: Mapping[str, Any], name: str, limit: int) -> str:
    value = _field(message, name)
    if not isinstance(value, str) or not 0 < len(value) <= limit or not value.isprintable():
        raise ClusterMessageInvalid(f"field {name!r} must be 1-{limit} printable characters")
    return value


def _json_object(raw: object, limit: int, what: str) -> dict[str, Any]:
    if not isinstance(raw, bytes | str):
        raise ClusterMessageInvalid(f"{what} is not text")
    if len(raw) > limit:
        raise ClusterMessageInvalid(f"{what} is larger than {limit} bytes")
    try:
        message = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise ClusterMessageInvalid(f"{what} is not JSON") from None
    if not isinstance(message, dict):
        raise ClusterMessageInvalid(f"{what} is not a JSON object")
    return message


def parse_command(raw: object, key: bytes, *, receiver: str, now: float) -> Command:
    """The command in a channel message for instance ``receiver``, checked: size, shape,
    known action and leg, target, time, signature. Raises ``ClusterMessageInvalid`` (the
    message names the field, nothing of the value)."""
    message = _json_object(raw, MAX_COMMAND_BYTES, "command")
    if _field(message, "v") != COMMAND_VERSION:
        raise ClusterMessageInvalid(f"field 'v' must be {COMMAND_VERSION}")
    request_id = _field(message, "request")
    if not isinstance(request_id, str) or not _REQUEST_ID.match(request_id):
        raise ClusterMessageInvalid("field 'request' must be 32 hexadecimal digits")
    action = _field(message, "action")
    if not isinstance(action, str) or action not in ACTIONS:
        raise ClusterMessageInvalid(f"field 'action' must be one of {sorted(ACTIONS)}")
    leg = _field(message, "leg")
    if leg is not None and (not isinstance(leg, str) or leg not in LEGS):
        raise ClusterMessageInvalid("field 'leg' must be inbound, outbound or null")
    call_key = _text_field(message, "call", MAX_CALL_KEY)
    sender = _field(message, "from")
    if not isinstance(sender, str) or not INSTANCE_ID.match(sender):
        raise ClusterMessageInvalid("field 'from' must be an instance id")
    target = _field(message, "to")
    if target != receiver:
        # Signed for another instance, and republished here (a replay elsewhere).
        raise ClusterMessageInvalid("field 'to' must be this instance's id")
    at = _field(message, "at")
    if isinstance(at, bool) or not isinstance(at, int) or abs(now - at) > MAX_COMMAND_AGE_S:
        raise ClusterMessageInvalid(f"field 'at' must be a time within {MAX_COMMAND_AGE_S} s")
    signature = _field(message, "sig")
    command = Command(request_id, action, call_key, leg, sender, receiver, at)
    expected = base64.b64encode(
        hmac.new(key, command._signed_text(), hashlib.sha256).digest()).decode()
    if not isinstance(signature, str) or not hmac.compare_digest(signature.encode(),
                                                                 expected.encode()):
        raise ClusterMessageInvalid("the signature does not match (another admin token?)")
    return command


def _reply_signature(key: bytes, request_id: str, status: int, body: str) -> str:
    signed = b"\n".join((REPLY_SIGNED_PREFIX, request_id.encode(), str(status).encode(),
                         body.encode()))
    return base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()


@dataclass(frozen=True, slots=True)
class Reply:
    """What the owner answered: the HTTP status and JSON body its own API would give."""

    status: int
    body: dict[str, Any]

    def encode(self, key: bytes, request_id: str) -> bytes:
        """The reply to ``request_id``, signed with ``key``: a party that can write to Redis
        but holds no admin token cannot answer in the owner's place. The body travels as
        JSON text, so the signature covers exactly the bytes the sender reads."""
        body = orjson.dumps(self.body).decode()
        return orjson.dumps({"status": self.status, "body": body,
                             "sig": _reply_signature(key, request_id, self.status, body)})


def parse_reply(raw: object, key: bytes, *, request_id: str) -> Reply:
    """The reply to ``request_id`` in a reply list's item, checked: size, shape, signature.
    Raises ``ClusterMessageInvalid``."""
    message = _json_object(raw, MAX_REPLY_BYTES, "reply")
    status = _field(message, "status")
    if isinstance(status, bool) or not isinstance(status, int) or not 200 <= status <= 599:
        raise ClusterMessageInvalid("field 'status' must be an HTTP status")
    body_text = _field(message, "body")
    if not isinstance(body_text, str):
        raise ClusterMessageInvalid("field 'body' must be JSON text")
    signature = _field(message, "sig")
    expected = _reply_signature(key, request_id, status, body_text)
    if not isinstance(signature, str) or not hmac.compare_digest(signature.encode(),
                                                                 expected.encode()):
        raise ClusterMessageInvalid("the reply's signature does not match")
    return Reply(status, _json_object(body_text, MAX_REPLY_BYTES, "reply body"))


def parse_summary(raw: object, *, instance: str, now: float) -> dict[str, Any] | None:
    """A call's summary as another instance published it, with ``instance`` and its
    duration as of ``now``; None for anything that is not one (it is skipped)."""
    try:
        summary = _json_object(raw, MAX_SUMMARY_BYTES, "summary")
        _text_field(summary, "call_id", MAX_CALL_KEY)
    except ClusterMessageInvalid:
        return None
    opened_at = summary.pop("opened_at", None)
    if isinstance(opened_at, int | float) and not isinstance(opened_at, bool):
        summary["duration_s"] = round(max(0.0, now - opened_at), 1)
    summary["instance"] = instance
    return summary


Perform = Callable[[Command], Awaitable[Reply]]


class ClusterCalls:
    """This instance's calls in Redis, and the cluster's calls as seen from here.

    ``summaries`` gives this instance's live calls (call key -> JSON-ready summary, with
    ``opened_at`` in Unix seconds); ``updated`` is set when a call starts or ends.
    ``perform`` does an admin action for one of this instance's calls; without it (no admin
    token) this instance takes no actions from others. Use ``async with``; Redis being away
    never raises out of it: failures go to ``member.trouble`` and are healed at the next
    heartbeat.
    """

    def __init__(self, member: ClusterMember, *,
                 summaries: Callable[[], Mapping[str, Mapping[str, Any]]],
                 updated: asyncio.Event, admin_token: str = "",
                 perform: Perform | None = None) -> None:
        self.member = member
        self.keys = member.keys
        self.redis = member.redis
        self._blocking: redis.Redis = connect(member.settings, blocking=True)
        self._summaries = summaries
        self._updated = updated
        self._key = command_key(admin_token) if admin_token else b""
        self._perform = perform if admin_token else None
        self._published: set[str] = set()
        self._seen = NonceCache(limit=10_000)
        self._in_flight = 0
        self._waiting = 0
        # Admin actions by outcome, for metrics: sent to others and answered, sent and not
        # answered, taken from others, ignored (invalid, a replay, or too many at once).
        self.outcomes: Counter[str] = Counter()
        self._rejected_logged_at = -REJECTIONS_LOGGED_EVERY_S
        self._rejected_since_log = 0
        self.listening = asyncio.Event()  # subscribed to this instance's command channel
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def own_key(self) -> str:
        return self.keys.calls(self.member.id)

    async def __aenter__(self) -> ClusterCalls:
        self._tasks.append(asyncio.create_task(self._keep_published(), name="cluster calls"))
        if self._perform is not None:
            self._tasks.append(asyncio.create_task(self._take_commands(),
                                                   name="cluster admin commands"))
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await stop(*self._tasks)
        # Leaving on purpose, after the drain: no call is left to list.
        with contextlib.suppress(*REDIS_ERRORS):
            await self.redis.delete(self.own_key)
        await self._blocking.aclose()

    # -- this instance's calls ----------------------------------------------------------------

    def _encoded(self) -> dict[str, bytes]:
        return {key: orjson.dumps({**summary, "instance": self.member.id})
                for key, summary in self._summaries().items()}

    async def publish_all(self) -> None:
        """Rewrite this instance's hash with its live calls (atomic: readers never see it
        half written)."""
        current = self._encoded()
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.delete(self.own_key)
            if current:
                pipe.hset(self.own_key, mapping=current)  # type: ignore[arg-type]
                pipe.expire(self.own_key, FORGET_AFTER_S)
            deleted, *_ = await pipe.execute()
        if self._published and not deleted:
            # The hash had gone (Redis restarted empty, or failed over to a replica that
            # never had it), and this instance's membership with it: both are back from
            # now, rather than the calls waiting for the next heartbeat to be listed.
            await self.member.heartbeat()
            log.debug("cluster calls published again", calls=len(current))
        self._published = set(current)

    async def publish_changes(self) -> None:
        """Add the calls that started and remove those that ended since the last write."""
        current = self._encoded()
        added = {key: body for key, body in current.items() if key not in self._published}
        removed = self._published - current.keys()
        if not added and not removed:
            return
        async with self.redis.pipeline(transaction=True) as pipe:
            if added:
                pipe.hset(self.own_key, mapping=added)  # type: ignore[arg-type]
            if removed:
                pipe.hdel(self.own_key, *removed)
            pipe.expire(self.own_key, FORGET_AFTER_S)
            await pipe.execute()
        self._published = set(current)
        log.debug("cluster calls published", started=len(added), ended=len(removed),
                  calls=len(current))

    async def _keep_published(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                await self.publish_all()
            except REDIS_ERRORS as exc:
                self.member.trouble("publishing calls", exc)
            check_cancelled()
            next_full = loop.time() + self.member.settings.heartbeat_s
            while (remaining := next_full - loop.time()) > 0:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(remaining):
                        await self._updated.wait()
                if not self._updated.is_set():
                    continue
                self._updated.clear()
                try:
                    await self.publish_changes()
                except REDIS_ERRORS as exc:
                    self.member.trouble("publishing calls", exc)
                check_cancelled()

    # -- the cluster's calls ------------------------------------------------------------------

    async def _others_alive(self) -> list[str]:
        return [m["instance"] for m in await self.member.members()
                if m.get("alive") and m["instance"] != self.member.id]

    async def elsewhere(self) -> tuple[list[dict[str, Any]], bool]:
        """The live calls of every other instance that is alive, each with ``instance``;
        and whether some were left out (an instance listing more than its bound, or the
        instances together more than ``MAX_CALLS_LISTED``).

        Raises one of ``REDIS_ERRORS`` when Redis is away.
        """
        others = await self._others_alive()
        if not others:
            return [], False
        sizes = await self.counts(others)
        listed, total = [], 0
        for instance, size in zip(others, sizes, strict=True):
            if size <= MAX_CALLS_LISTED_PER_INSTANCE and total + size <= MAX_CALLS_LISTED:
                listed.append(instance)
                total += size
        left_out = len(listed) < len(others)
        async with self.redis.pipeline(transaction=False) as pipe:
            for instance in listed:
                pipe.hgetall(self.keys.calls(instance))
            hashes = await pipe.execute()
        now = time.time()
        calls = []
        for instance, fields in zip(listed, hashes, strict=True):
            for raw in fields.values():
                summary = parse_summary(raw, instance=instance, now=now)
                if summary is not None:
                    calls.append(summary)
        return calls, left_out

    async def counts(self, instances: list[str]) -> list[int]:
        """How many live calls each of ``instances`` has published (current to the last
        call that started or ended, where heartbeats are up to ``heartbeat_s`` old).

        Raises one of ``REDIS_ERRORS`` when Redis is away.
        """
        if not instances:
            return []
        async with self.redis.pipeline(transaction=False) as pipe:
            for instance in instances:
                pipe.hlen(self.keys.calls(instance))
            return [int(count) for count in await pipe.execute()]

    async def owners(self, call_key: str) -> list[str]:
        """The other live instances holding a call under ``call_key`` (normally one).

        Raises one of ``REDIS_ERRORS`` when Redis is away.
        """
        others = await self._others_alive()
        if not others:
            return []
        async with self.redis.pipeline(transaction=False) as pipe:
            for instance in others:
                pipe.hexists(self.keys.calls(instance), call_key)
            held = await pipe.execute()
        return [i for i, holds in zip(others, held, strict=True) if holds]

    async def send(self, owner: str, action: str, call_key: str, leg: str | None) -> Reply:
        """Have ``owner`` do ``action`` on its call ``call_key``, and its answer.

        Raises ``OwnerUnreachable`` when nothing listens on the owner's channel or no reply
        comes within ``cluster.command_timeout_s``, ``ClusterMessageInvalid`` for a reply
        that is not one, and one of ``REDIS_ERRORS`` when Redis is away. Cancelled, the
        command may still be done by the owner; its reply then expires unread.
        """
        if not self._key:
            raise OwnerUnreachable(owner, "cannot be asked: this instance has no admin token")
        if self._waiting >= MAX_WAITING_REPLIES:
            raise OwnerUnreachable(owner, "cannot be asked now: too many admin actions "
                                          "are waiting for other instances")
        timeout_s = self.member.settings.command_timeout_s
        command = new_command(action, call_key, leg, sender=self.member.id, target=owner,
                              now=time.time())
        self._waiting += 1
        try:
            receivers = await self.redis.publish(self.keys.commands(owner),
                                                 command.encode(self._key))
            if not receivers:
                self.outcomes["unanswered"] += 1
                raise OwnerUnreachable(owner, "is not listening for admin actions")
            # The client's socket has no read timeout (it blocks by design): this bounds a
            # server that stops answering mid-wait.
            async with asyncio.timeout(timeout_s + 2):
                popped = await self._blocking.blpop([self.keys.reply(command.request_id)],
                                                    timeout=timeout_s)
        except TimeoutError:
            popped = None
        finally:
            self._waiting -= 1
        if popped is None:
            self.outcomes["unanswered"] += 1
            raise OwnerUnreachable(owner, f"did not answer within {timeout_s:g} s "
                                          "(cluster.command_timeout_s)")
        self.outcomes["answered"] += 1
        return parse_reply(popped[1], self._key, request_id=command.request_id)

    # -- admin actions from other instances ---------------------------------------------------

    async def _take_commands(self) -> None:
        async with asyncio.TaskGroup() as tasks:
            while True:
                try:
                    await self._listen(tasks)
                except REDIS_ERRORS as exc:
                    self.member.trouble("listening for admin actions", exc)
                finally:
                    self.listening.clear()
                check_cancelled()
                await asyncio.sleep(self.member.settings.heartbeat_s)

    async def _listen(self, tasks: asyncio.TaskGroup) -> None:
        async with self._blocking.pubsub() as pubsub:
            await pubsub.subscribe(self.keys.commands(self.member.id))
            while True:
                message = await pubsub.get_message(ignore_subscribe_messages=False,
                                                   timeout=None)
                check_cancelled()
                if message is None:
                    continue
                if message.get("type") == "subscribe":
                    self.listening.set()
                    log.debug("listening for admin commands")
                    continue
                if message.get("type") != "message":
                    continue
                self.receive(message.get("data"), tasks)

    def receive(self, raw: object, tasks: asyncio.TaskGroup) -> None:
        """One message from this instance's channel: a valid command is done in ``tasks``;
        anything else is dropped and counted (logged at most once a minute)."""
        if self._perform is None:
            return
        now = time.time()
        try:
            command = parse_command(raw, self._key, receiver=self.member.id, now=now)
            if not self._seen.first_use(command.request_id,
                                        until=command.remember_until(now), now=int(now)):
                raise ClusterMessageInvalid("the request id was used already (a replay)")
        except ClusterMessageInvalid as exc:
            self._reject(exc)
            return
        if self._in_flight >= MAX_COMMANDS_IN_FLIGHT:
            self._reject(ClusterMessageInvalid("too many admin actions in progress"))
            return
        self._in_flight += 1
        tasks.create_task(self._answer(command, self._perform))

    def _reject(self, error: ClusterMessageInvalid) -> None:
        self.outcomes["ignored"] += 1
        self._rejected_since_log += 1
        now = time.monotonic()
        if now - self._rejected_logged_at >= REJECTIONS_LOGGED_EVERY_S:
            log.warning("admin command from the cluster channel ignored", reason=str(error),
                        ignored=self._rejected_since_log)
            self._rejected_logged_at = now
            self._rejected_since_log = 0

    async def _first_taken(self, command: Command) -> bool:
        """Whether no instance, this one before a restart included, has taken this request
        id yet; it is taken from now. Raises one of ``REDIS_ERRORS``."""
        now = time.time()
        ttl_s = max(1, command.remember_until(now) - int(now))
        return bool(await self.redis.set(self.keys.command_seen(command.request_id), b"1",
                                         nx=True, ex=ttl_s))

    async def _answer(self, command: Command, perform: Perform) -> None:
        # Each command's failure stays its own: an exception leaving this task would end
        # the task group, and with it this instance's taking of admin actions.
        try:
            await self._answer_once(command, perform)
        except Exception:  # our own bug: logged with its traceback; the sender times out
            log.exception("answering an admin action for another instance failed",
                          action=command.action, sender=command.sender)
        finally:
            self._in_flight -= 1

    async def _answer_once(self, command: Command, perform: Perform) -> None:
        try:
            if not await self._first_taken(command):
                self._reject(ClusterMessageInvalid("the request id was used already (a replay)"))
                return
        except REDIS_ERRORS as exc:
            # Unable to tell a replay: not done (the sender is told its owner did not answer).
            self.member.trouble("taking an admin action", exc)
            return
        self.outcomes["taken"] += 1
        try:
            reply = await perform(command)
        except Exception:  # our own bug: logged with its traceback, answered 500
            log.exception("admin action for another instance failed",
                          action=command.action, sender=command.sender)
            reply = Reply(500, {"error": "internal error"})
        try:
            encoded = reply.encode(self._key, command.request_id)
        except orjson.JSONEncodeError:  # our own bug: a body JSON cannot hold
            log.exception("admin action reply for another instance cannot be encoded",
                          action=command.action, sender=command.sender)
            encoded = Reply(500, {"error": "internal error"}).encode(self._key,
                                                                     command.request_id)
        key = self.keys.reply(command.request_id)
        ttl_ms = int((self.member.settings.command_timeout_s + REPLY_TTL_MARGIN_S) * 1000)
        try:
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.rpush(key, encoded)
                pipe.pexpire(key, ttl_ms)
                await pipe.execute()
        except REDIS_ERRORS as exc:
            self.member.trouble("answering an admin action", exc)

