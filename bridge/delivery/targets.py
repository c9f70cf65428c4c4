"""Webhook targets as delivery keeps them, and delivery's counters.

A ``Target`` is shared state: routing creates and retires it, the outbox writer counts what
it stores for it (``pending``), and its delivery workers wait on ``wake`` and drain
``partials``. All of them run on the event loop, so none of this needs a lock.
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass, field
from fnmatch import fnmatch
from typing import Final

from bridge.events import OutboundEvent

CALL_TARGET_PREFIX: Final = "call-"
PER_CALL_LABEL: Final = "per_call"  # every per-call target, as one metrics series
PARTIAL_QUEUE: Final = 64  # per target


@dataclass
class Target:
    """A webhook target: where it is, what it wants, and what is waiting for it."""

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
