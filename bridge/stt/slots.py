"""Engine concurrency limits counted in this process: each engine section's ``max_streams``.

Without a cluster this is the limit: a leg takes a slot of its engine before its first
session and gives it back when it ends (``bridge.legs.upstream``). In cluster mode
``bridge.cluster.engine_slots`` counts across instances and keeps the slots this instance
holds here, falling back on a local share of the limit while Redis is away. Pure: no I/O,
no clock.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Mapping
from typing import Protocol

from bridge.config import Settings, engine_settings


def stream_limits(settings: Settings) -> dict[str, int]:
    """``max_streams`` of each engine in use (0: no limit)."""
    return {name: int(engine_settings(settings, name).max_streams)
            for name in settings.stt.in_use()}


class EngineLimits(Protocol):
    """What the application holds: the legs' ``EngineSlots``, and what metrics read."""

    async def acquire(self, engine: str) -> LocalSlot | None:
        """A slot of ``engine``, or None when it is full."""

    def usage(self) -> dict[tuple[str, str], int]:
        """Sessions in use by (engine, scope): ``instance``, and ``cluster`` in a cluster."""


def new_lease() -> str:
    """A slot's id: random, so that a restarted instance never reuses one of its own
    leases still unexpired elsewhere."""
    return secrets.token_hex(8)


class LocalSlot:
    """One leg's place within an engine's limit; ``release`` gives it back, once."""

    __slots__ = ("_owner", "engine", "lease", "released")

    def __init__(self, owner: LocalEngineSlots, engine: str, lease: str) -> None:
        self._owner = owner
        self.engine = engine
        self.lease = lease  # unique among the slots ever held here
        self.released = False

    def release(self) -> None:
        if not self.released:
            self.released = True
            self._owner.released(self)

    def __repr__(self) -> str:
        return f"LocalSlot({self.engine!r}, {self.lease!r}, released={self.released})"


class LocalEngineSlots:
    """The slots this process holds, by engine, against ``limits`` (engine -> max_streams,
    0 or absent: no limit). ``on_release`` hears of every slot given back."""

    def __init__(self, limits: Mapping[str, int],
                 on_release: Callable[[LocalSlot], None] | None = None) -> None:
        self.limits = dict(limits)
        self._held: dict[str, dict[str, LocalSlot]] = {}
        self._on_release = on_release

    def take(self, engine: str, limit: int | None = None,
             lease: str | None = None) -> LocalSlot | None:
        """A slot of ``engine`` if fewer than ``limit`` (default: the engine's own limit;
        0: none) are held here, else None. ``lease``: its id, if chosen already."""
        limit = self.limits.get(engine, 0) if limit is None else limit
        held = self._held.setdefault(engine, {})
        if limit and len(held) >= limit:
            return None
        slot = LocalSlot(self, engine, lease or new_lease())
        held[slot.lease] = slot
        return slot

    async def acquire(self, engine: str) -> LocalSlot | None:
        """``take`` with the engine's own limit (the ``EngineSlots`` protocol of the legs)."""
        return self.take(engine)

    def released(self, slot: LocalSlot) -> None:
        """Called by ``LocalSlot.release``."""
        if self.drop(slot) and self._on_release is not None:
            self._on_release(slot)

    def drop(self, slot: LocalSlot) -> bool:
        """Forget a slot without telling ``on_release`` (it was never granted); False when
        it was not held."""
        slot.released = True
        held = self._held.get(slot.engine, {})
        if held.get(slot.lease) is not slot:
            return False
        del held[slot.lease]
        return True

    def leases(self, engine: str) -> list[str]:
        """The lease ids of the slots of ``engine`` held here."""
        return list(self._held.get(engine, {}))

    def in_use(self) -> dict[str, int]:
        """Slots held here, for every engine with a limit or a slot."""
        return {name: len(self._held.get(name, {}))
                for name in sorted(set(self.limits) | set(self._held))}

    def usage(self) -> dict[tuple[str, str], int]:
        return {(name, "instance"): count for name, count in self.in_use().items()}
