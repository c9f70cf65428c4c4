"""The Redis client of a cluster member, and the names of every key it uses.

A client comes from ``cluster.redis_url`` (``redis://``, ``rediss://`` or ``unix://``, with
credentials and database in the URL), or from Sentinel: ``cluster.sentinels`` name the
Sentinels and ``cluster.sentinel_primary`` the primary, and the URL, if given too, lends its
credentials and database. Every key starts with ``cluster.key_prefix``.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import unquote, urlsplit

import redis.asyncio as redis
from redis.asyncio.connection import BlockingConnectionPool
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
from redis.backoff import ExponentialBackoff
from redis.exceptions import RedisError

from bridge.config import ClusterSettings

# What a Redis call may raise when Redis is unreachable, failing over or refusing: the client's
# own errors and the socket's.
REDIS_ERRORS: Final = (RedisError, OSError, TimeoutError)

CONNECT_TIMEOUT_S: Final = 2.0
COMMAND_TIMEOUT_S: Final = 5.0


# Connections of one client at most: the commands client's, for what an instance does at
# once (heartbeat, writers, requests); the blocking client's, one per feed reader waiting
# plus the few other waits (admin commands' replies). A command finding every connection
# busy waits up to POOL_WAIT_S for one, then fails as Redis being away does.
MAX_CONNECTIONS: Final = 64
BLOCKING_MARGIN: Final = 16
POOL_WAIT_S: Final = 2.0


class _BlockingSentinelPool(SentinelConnectionPool, BlockingConnectionPool):
    """Sentinel's pool (it finds the primary) with a bound on connections that waits."""


def connect(settings: ClusterSettings, *, blocking: bool = False) -> redis.Redis:
    """A client for the cluster's Redis (not connected until first used), with a bounded
    pool of connections.

    ``blocking``: for commands that wait on the server (``XREAD BLOCK``, ``BLPOP``,
    subscriptions), whose replies may take longer than any fixed read timeout; they pass
    their own timeouts. Its pool holds ``cluster.feed_readers`` connections and a margin.
    """
    options: dict[str, Any] = {
        "socket_connect_timeout": CONNECT_TIMEOUT_S,
        "socket_timeout": None if blocking else COMMAND_TIMEOUT_S,
        "socket_keepalive": True,
        "health_check_interval": 15,
        # One quick retry covers a connection the server closed while idle; a Redis that is
        # down is reported by the caller, not retried here for seconds.
        "retry": Retry(ExponentialBackoff(cap=0.2, base=0.05), 1),
        "decode_responses": False,
        "max_connections": settings.feed_readers + BLOCKING_MARGIN if blocking
        else MAX_CONNECTIONS,
        "timeout": POOL_WAIT_S,
    }
    url = settings.redis_url.reveal()
    if not settings.sentinels:
        return redis.Redis.from_pool(BlockingConnectionPool.from_url(url, **options))
    parts = urlsplit(url) if url else None
    if parts is not None:
        if parts.password:
            options["password"] = unquote(parts.password)
        if parts.username:
            options["username"] = unquote(parts.username)
        if parts.path.strip("/").isdigit():
            options["db"] = int(parts.path.strip("/"))
        if parts.scheme == "rediss":
            options["ssl"] = True
    sentinels = [(host, int(port)) for host, _, port in
                 (address.rpartition(":") for address in settings.sentinels)]
    sentinel = Sentinel(sentinels, socket_connect_timeout=CONNECT_TIMEOUT_S,  # type: ignore[no-untyped-call]
                        socket_timeout=CONNECT_TIMEOUT_S)
    client: redis.Redis = sentinel.master_for(settings.sentinel_primary,
                                              connection_pool_class=_BlockingSentinelPool,
                                              **options)
    return client


def check_cancelled() -> None:
    """Raise ``CancelledError`` if this task was cancelled during a Redis call that returned
    anyway: on Python 3.11 redis-py writes through ``asyncio.wait_for``, which drops a
    cancellation that lands as the write completes (fixed in 3.12). A loop around Redis
    calls checks after each, or it would never stop."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


async def stop(*tasks: asyncio.Task[Any] | None) -> None:
    """Cancel a part's background tasks and wait until they have ended. A task's own error
    is raised; a cancellation of the caller is not swallowed (as awaiting a cancelled task
    under ``suppress(CancelledError)`` would)."""
    running = [task for task in tasks if task is not None]
    for task in running:
        task.cancel()
    if not running:
        return
    await asyncio.wait(running)
    for task in running:
        if not task.cancelled():
            task.result()


def text(raw: Any) -> str:
    """A reply's bytes as text (the client returns bytes; its type hints say more)."""
    return raw.decode() if isinstance(raw, bytes) else str(raw)


def where(settings: ClusterSettings) -> str:
    """Where the cluster's Redis is, for logs: host and port, never credentials."""
    if settings.sentinels:
        return f"sentinel {settings.sentinel_primary} via {', '.join(settings.sentinels)}"
    parts = urlsplit(settings.redis_url.reveal())
    if parts.scheme == "unix":
        return f"unix:{parts.path}"
    return f"{parts.scheme}://{parts.hostname}:{parts.port or 6379}"


@dataclass(frozen=True, slots=True)
class Keys:
    """Every Redis key a member uses; all start with the prefix."""

    prefix: str

    @property
    def instances(self) -> str:
        """Sorted set: instance id -> its last heartbeat (Unix ms)."""
        return f"{self.prefix}:instances"

    def instance(self, instance_id: str) -> str:
        """String, expiring ``cluster.takeover_s`` after the last heartbeat: the instance's
        state (JSON). Its absence says the instance is gone."""
        return f"{self.prefix}:instance:{instance_id}"

    def calls(self, instance_id: str) -> str:
        """Hash: call key -> summary (JSON) of each live call an instance holds.

        It does not expire with the instance: whoever takes a lost instance over reads its
        calls from here and deletes the hash; listings skip instances that are not alive.
        """
        return f"{self.prefix}:calls:{instance_id}"

    def commands(self, instance_id: str) -> str:
        """Pub/sub channel: admin actions for the calls an instance holds."""
        return f"{self.prefix}:commands:{instance_id}"

    def command_seen(self, request_id: str) -> str:
        """String, expiring once its command could no longer be accepted: the request id of
        an admin action taken by some instance (a replay on any instance is refused)."""
        return f"{self.prefix}:command-seen:{request_id}"

    def reply(self, request_id: str) -> str:
        """List: the one reply to an admin action, expiring soon after."""
        return f"{self.prefix}:reply:{request_id}"

    def outbox(self, instance_id: str) -> str:
        """Hash: an instance's undelivered events, mirrored from its outbox."""
        return f"{self.prefix}:outbox:{instance_id}"

    def outbox_targets(self, instance_id: str) -> str:
        """Hash: target name -> its URL and secret's variable, for an instance's events."""
        return f"{self.prefix}:outbox-targets:{instance_id}"

    def outbox_copy(self, instance_id: str) -> str:
        """String: present while Redis holds an instance's whole outbox copy; missing after
        a Redis that lost its data, which makes the instance copy everything again."""
        return f"{self.prefix}:outbox-copy:{instance_id}"

    def outbox_calls(self, instance_id: str) -> str:
        """Hash: call id -> an instance's call in progress as its outbox tracks it (legs'
        text so far, held finals masked), for closing it if the instance is lost."""
        return f"{self.prefix}:outbox-calls:{instance_id}"

    def takeover(self, instance_id: str) -> str:
        """String: the survivor taking over a lost instance's events (a lease)."""
        return f"{self.prefix}:takeover:{instance_id}"

    def taken_over(self, instance_id: str) -> str:
        """String, expiring: which survivor took over an instance's events; the instance,
        restarted, drops its local copies of them instead of delivering them twice."""
        return f"{self.prefix}:taken-over:{instance_id}"

    def feed(self, call_key: str) -> str:
        """Stream: one call's events as its live feed shows them."""
        return f"{self.prefix}:feed:{call_key}"

    def feed_info(self, call_key: str) -> str:
        """Hash: which stream a call's feed is (its tokens' subject), its instance, if ended."""
        return f"{self.prefix}:feed-info:{call_key}"

    def engine(self, engine: str) -> str:
        """Sorted set: the engine's sessions in use cluster-wide -> their lease's expiry."""
        return f"{self.prefix}:engine:{engine}"
