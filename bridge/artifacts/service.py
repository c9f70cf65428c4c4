"""The after-call work: which observers follow a call, and what happens once it ended.

The web layer builds one ``AfterCallService`` for the process and hands it to every call
(``bridge.calls.AfterCall``). Each observer factory looks at the call that just started (its
settings, route, custom parameters) and returns an observer, or None when it has nothing to
follow on this call.

With ``artifacts.completed`` (the default) every started call is followed by a
``TranscriptRecord``, and ``finish`` publishes the call's ``call.completed`` after its
``call.ended``: the outbox delivers a call's events in order to each target, so it reaches
each one after every final of the call.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from bridge.artifacts.completed import completed_data
from bridge.artifacts.record import TranscriptRecord
from bridge.calls import Call, CallObserver
from bridge.config import ArtifactsSettings
from bridge.events import EventType, Track

ObserverFactory = Callable[[Call], CallObserver | None]


def transcript_record(call: Call) -> TranscriptRecord:
    """A call's transcript record, with its legs' speakers as configured."""
    speakers = call.settings.speakers
    return TranscriptRecord({track: getattr(speakers, track.value) for track in Track})


class AfterCallService:
    """The process's after-call work (``bridge.calls.AfterCall``)."""

    def __init__(self, factories: Sequence[ObserverFactory] = (), *,
                 artifacts: ArtifactsSettings | None = None) -> None:
        self._artifacts = artifacts or ArtifactsSettings(completed=False)
        if self._artifacts.completed:
            factories = (*factories, transcript_record)
        self._factories = tuple(factories)

    def observers(self, call: Call) -> list[CallObserver]:
        return [observer for factory in self._factories
                if (observer := factory(call)) is not None]

    async def finish(self, call: Call, observers: list[CallObserver],
                     ended: Mapping[str, Any]) -> None:
        """Publish the call's ``call.completed`` (with ``artifacts.completed``)."""
        self.publish_completed(call, observers, ended)

    def publish_completed(self, call: Call, observers: list[CallObserver],
                          ended: Mapping[str, Any], artifacts: Sequence[str] = ()) -> None:
        """Publish ``call.completed`` from the call's transcript record, naming
        ``artifacts`` (the files stored for the call); nothing without a record."""
        record = next((o for o in observers if isinstance(o, TranscriptRecord)), None)
        if not self._artifacts.completed or record is None or call.call_id is None:
            return
        call.publish(EventType.CALL_COMPLETED, completed_data(
            record.finals, call_id=call.call_id, ended=ended, artifacts=artifacts,
            max_bytes=self._artifacts.completed_max_bytes, dropped=record.dropped))
