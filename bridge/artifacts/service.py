"""The after-call work: which observers follow a call, and what happens once it ended.

The web layer builds one ``AfterCallService`` for the process and hands it to every call
(``bridge.calls.AfterCall``). Each observer factory looks at the call that just started (its
settings, route, custom parameters) and returns an observer, or None when it has nothing to
follow on this call. An observer that leaves files behind (``ArtifactSource``) hands them
over as ``Artifact``s once the call ended.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import structlog

from bridge.calls import Call, CallObserver

log = structlog.get_logger("bridge.artifacts")

ObserverFactory = Callable[[Call], CallObserver | None]


@dataclass(frozen=True, slots=True)
class Artifact:
    """A file kept of a call: its name in the call's folder, content type, where it is now."""

    name: str
    content_type: str
    path: Path


@runtime_checkable
class ArtifactSource(Protocol):
    """An observer that leaves files of the call behind."""

    async def artifacts(self) -> list[Artifact]:
        """The call ended: write the files (if any) and say where they are."""
        ...


class AfterCallService:
    """The process's after-call work (``bridge.calls.AfterCall``)."""

    def __init__(self, factories: Sequence[ObserverFactory] = ()) -> None:
        self._factories = tuple(factories)

    def observers(self, call: Call) -> list[CallObserver]:
        return [observer for factory in self._factories
                if (observer := factory(call)) is not None]

    async def finish(self, call: Call, observers: list[CallObserver],
                     ended: Mapping[str, Any]) -> None:
        """Collect the observers' files. Cancelling it leaves the files written so far where
        they are (a recording's spool files are removed at the next start)."""
        artifacts: list[Artifact] = []
        for observer in observers:
            if isinstance(observer, ArtifactSource):
                artifacts += await observer.artifacts()
        if artifacts:
            log.info("call artifacts", artifacts=[a.name for a in artifacts])
