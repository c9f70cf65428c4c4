"""The after-call work: which observers follow a call, and what happens once it ended.

The web layer builds one ``AfterCallService`` for the process and hands it to every call
(``bridge.calls.AfterCall``). Each observer factory looks at the call that just started (its
settings, route, custom parameters) and returns an observer, or None when it has nothing to
follow on this call.

With an artifact store (``artifacts.enabled``), ``keep`` writes the call's transcript files
(``bridge.artifacts.formats``) and every ``Artifact`` its observers give (``ArtifactSource``)
to the store, once the call ended and ``call.ended`` was published. A failure there is one
log line; the call's events never depend on it.

With ``artifacts.completed`` (the default) every started call is followed by a
``TranscriptRecord``, and ``finish`` then publishes the call's ``call.completed``, naming the
files just stored: the outbox delivers a call's events in order to each target, so it
reaches each one after every final of the call.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import structlog

from bridge.artifacts.completed import completed_data
from bridge.artifacts.formats import TRANSCRIPT_FILES, transcript_files
from bridge.artifacts.record import TranscriptRecord
from bridge.artifacts.store import ArtifactStore, Upload, is_artifact_name
from bridge.calls import Call, CallObserver
from bridge.config import ArtifactsSettings
from bridge.errors import ArtifactStoreError
from bridge.events import EventType, Track

log = structlog.get_logger("bridge.artifacts")

ObserverFactory = Callable[[Call], CallObserver | None]


@dataclass(frozen=True, slots=True)
class Artifact:
    """A file an observer made of a call (a recording), to be stored under ``name`` (a plain
    lower-case file name such as ``recording.wav``). ``keep`` reads it from ``path`` and
    removes that file once it is stored or given up: it is handed over."""

    name: str
    content_type: str
    path: Path


@runtime_checkable
class ArtifactSource(Protocol):
    """An observer that makes files of its call."""

    async def artifacts(self) -> list[Artifact]:
        """The call ended: the files to store (none is fine)."""


class FeedStream(CallObserver):
    """Whose live-feed viewer tokens open the call's transcript files once stored: the id of
    the feed's stream, taken when the call starts (a later stream under the same call id has
    another)."""

    def __init__(self, stream: str) -> None:
        self.stream = stream


def transcript_record(call: Call) -> TranscriptRecord:
    """A call's transcript record for ``call.completed`` alone, with its legs' speakers as
    configured: without the finals' word times, which only the transcript files carry (they
    are most of a final's weight)."""
    speakers = call.settings.speakers
    return TranscriptRecord({track: getattr(speakers, track.value) for track in Track},
                            keep_words=False)


class AfterCallService:
    """The process's after-call work (``bridge.calls.AfterCall``).

    ``store`` is where artifacts go (None: artifacts are off); ``feed_stream`` tells, for a
    call that just started, the id of its live feed's stream ("" without a feed);
    ``timeout_s`` bounds the storing of one call's files; ``artifacts`` says whether
    ``call.completed`` is sent, and its size limit (None: not sent).
    """

    def __init__(self, factories: Sequence[ObserverFactory] = (), *,
                 store: ArtifactStore | None = None,
                 feed_stream: Callable[[Call], str] = lambda _: "",
                 timeout_s: float = 120.0,
                 artifacts: ArtifactsSettings | None = None) -> None:
        self._factories = tuple(factories)
        self._completed = artifacts if artifacts is not None and artifacts.completed else None
        self.store = store
        self._feed_stream = feed_stream
        self._timeout_s = timeout_s
        # Calls whose artifacts were stored, or not (the store failed or timed out).
        self.outcomes: Counter[str] = Counter()

    def observers(self, call: Call) -> list[CallObserver]:
        observers = [observer for factory in self._factories
                     if (observer := factory(call)) is not None]
        if self.store is not None:
            observers.append(FeedStream(self._feed_stream(call)))
        if self._completed is not None and not any(
                isinstance(observer, TranscriptRecord) for observer in observers):
            observers.append(transcript_record(call))
        return observers

    async def finish(self, call: Call, observers: list[CallObserver],
                     ended: Mapping[str, Any]) -> None:
        """Keep the call's artifacts (see ``keep``), then publish its ``call.completed``
        naming them. Cancelled while the files are stored, it publishes nothing."""
        names = await self.keep(call, observers, ended)
        await self.publish_completed(call, observers, ended, names)

    async def publish_completed(self, call: Call, observers: Sequence[CallObserver],
                                ended: Mapping[str, Any], artifacts: Sequence[str] = ()) -> None:
        """Publish ``call.completed`` from the call's transcript record, naming
        ``artifacts`` (the files stored for the call); nothing when it is off or the call
        has no record. Built in a thread: a long call's transcript takes a while to sort
        and measure, and the event loop carries every other call's audio."""
        record = next((o for o in observers if isinstance(o, TranscriptRecord)), None)
        settings = self._completed
        call_id = call.call_id
        if settings is None or record is None or call_id is None:
            return
        data = await asyncio.to_thread(
            completed_data, record.finals, call_id=call_id, ended=ended, artifacts=artifacts,
            max_bytes=settings.completed_max_bytes, dropped=record.dropped)
        call.publish(EventType.CALL_COMPLETED, data)

    async def keep(self, call: Call, observers: Sequence[CallObserver],
                   ended: Mapping[str, Any] | None = None) -> list[str]:
        """Store the call's transcript files and its observers' artifacts: the names stored,
        [] when artifacts are off or storing failed (logged in one line, without raising).

        ``ended`` is ``call.ended``'s data, for the JSON file's metadata. Bounded by the
        timeout given; cancelling it leaves no listed artifact of the call (its manifest is
        written last), perhaps some of its files, which retention removes.
        """
        handed_over = [a for observer in observers if isinstance(observer, ArtifactSource)
                       for a in await _artifacts_of(observer, call)]
        try:
            if self.store is None or call.key is None:
                return []
            uploads = await self._transcripts(call, observers, ended or {})
            for artifact in handed_over:
                if is_artifact_name(artifact.name) and artifact.name not in TRANSCRIPT_FILES:
                    uploads.append(Upload(artifact.name, artifact.content_type, artifact.path))
                else:
                    log.error("an artifact with a name the store refuses was dropped",
                              call_id=call.key, artifact=artifact.name[:80])
            stream = next((o.stream for o in observers if isinstance(o, FeedStream)), "")
            try:
                async with asyncio.timeout(self._timeout_s):
                    await self.store.save(call.key, stream, uploads)
            except (ArtifactStoreError, TimeoutError, OSError) as exc:
                log.warning("call artifacts not stored", call_id=call.key,
                            store=self.store.description,
                            error=str(exc) or f"no answer within {self._timeout_s:g} s")
                self.outcomes["failed"] += 1
                return []
        finally:
            for artifact in handed_over:
                with contextlib.suppress(OSError):
                    await asyncio.to_thread(artifact.path.unlink, missing_ok=True)
        names = [u.name for u in uploads]
        self.outcomes["stored"] += 1
        log.info("call artifacts stored", call_id=call.key, store=self.store.description,
                 artifacts=names)
        return names

    @staticmethod
    async def _transcripts(call: Call, observers: Sequence[CallObserver],
                           ended: Mapping[str, Any]) -> list[Upload]:
        """The transcript files, rendered in a thread: a long call's thousands of finals
        would otherwise hold the event loop (every other call's audio) while they render."""
        record = next((o for o in observers if isinstance(o, TranscriptRecord)), None)
        if record is None:
            return []
        started = call.started
        metadata = {
            "call_id": call.key,
            "stream_id": started.stream_id if started else None,
            "provider": started.provider if started else None,
            "custom_parameters": dict(started.custom_parameters) if started else {},
            "started_at": datetime.fromtimestamp(call.opened_at, UTC).isoformat(
                timespec="milliseconds"),
            "reason": ended.get("reason"),
            "duration_ms": ended.get("duration_ms"),
            "finals_not_kept": record.dropped,
        }
        files = await asyncio.to_thread(
            lambda: transcript_files(record.conversation(), metadata))
        return [Upload(name, TRANSCRIPT_FILES[name], data) for name, data in files.items()]


async def _artifacts_of(source: ArtifactSource, call: Call) -> list[Artifact]:
    """An observer's artifacts; one that fails gives none, in one log line."""
    try:
        return list(await source.artifacts())
    except Exception as exc:  # noqa: BLE001 - another part's failure must not lose the rest
        log.warning("an observer's artifacts failed", call_id=call.key,
                    observer=type(source).__name__, error=type(exc).__name__)
        return []
