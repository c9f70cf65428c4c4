"""The after-call work: which observers follow a call, and what happens once it ended.

The web layer builds one ``AfterCallService`` for the process and hands it to every call
(``bridge.calls.AfterCall``). Each observer factory looks at the call that just started (its
settings, route, custom parameters) and returns an observer, or None when it has nothing to
follow on this call.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from bridge.calls import Call, CallObserver

ObserverFactory = Callable[[Call], CallObserver | None]


class AfterCallService:
    """The process's after-call work (``bridge.calls.AfterCall``)."""

    def __init__(self, factories: Sequence[ObserverFactory] = ()) -> None:
        self._factories = tuple(factories)

    def observers(self, call: Call) -> list[CallObserver]:
        return [observer for factory in self._factories
                if (observer := factory(call)) is not None]

    async def finish(self, call: Call, observers: list[CallObserver],
                     ended: Mapping[str, Any]) -> None:
        """Nothing is kept yet beyond the call's events."""
