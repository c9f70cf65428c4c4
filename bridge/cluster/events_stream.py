"""Every event appended to one Redis stream, for consumers reading it with consumer groups.

With ``cluster.events_stream`` set, each event a call publishes (partials included, and each
body exactly the webhook's, so redacted as webhooks are) is appended with ``XADD`` under an
id Redis gives, fields ``type``, ``id`` (the ``webhook-id``), ``call_id`` and ``body``. The
stream is capped at ``cluster.events_stream_max_len`` entries (``MAXLEN ~``) and, when
``cluster.events_stream_max_age_s`` is above 0, trimmed of older entries (``MINID ~``).

Appending never blocks the call (``RedisAppender``): the events wait in a bounded queue
while Redis is away, and are written in order when it is back; beyond the queue they are
dropped, with one log line. A batch is written in one ``MULTI``; if the connection breaks
after Redis applied it, the retry appends it again: consumers de-duplicate on ``id``, as
webhook receivers do.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Final

from bridge.cluster.appender import RedisAppender
from bridge.cluster.member import ClusterMember
from bridge.delivery.retry import Outcome
from bridge.delivery.webhooks import EventSink
from bridge.events import OutboundEvent

QUEUE_LIMIT: Final = 20_000


class EventStream(RedisAppender[OutboundEvent]):
    """Appends events to ``cluster.events_stream``. Use ``async with``."""

    name = "event stream entries"

    def __init__(self, member: ClusterMember, *, stream: str, max_len: int,
                 max_age_s: float, limit: int = QUEUE_LIMIT) -> None:
        super().__init__(member, limit=limit)
        self.stream = stream
        self.max_len = max_len
        self.max_age_ms = int(max_age_s * 1000)

    async def write(self, batch: Sequence[OutboundEvent]) -> None:
        async with self.member.redis.pipeline(transaction=True) as pipe:
            for event in batch:
                pipe.xadd(self.stream, {"type": event.type.value, "id": event.id,
                                        "call_id": event.call_id, "body": event.body},
                          maxlen=self.max_len, approximate=True)
            if self.max_age_ms:
                # Ids Redis gives start with the Unix time in ms: older ones are older entries.
                oldest = int(time.time() * 1000) - self.max_age_ms
                pipe.xtrim(self.stream, minid=f"{oldest}-0", approximate=True)
            await pipe.execute()


class EventStreamTee:
    """A call's sink: ``sink`` as before, and every published event to ``stream`` too."""

    def __init__(self, sink: EventSink, stream: EventStream) -> None:
        self._sink = sink
        self._stream = stream

    def publish(self, event: OutboundEvent) -> asyncio.Future[Outcome]:
        self._stream.offer(event)
        return self._sink.publish(event)

    def hold(self, call_id: str, leg: str, finals: Sequence[OutboundEvent]) -> None:
        self._sink.hold(call_id, leg, finals)  # held finals are for the outbox until released
