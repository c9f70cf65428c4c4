"""A whole call in process with the after-call work: the real ``Call`` and its legs, a
scripted engine, and ``AfterCallService`` writing to a real folder. An observer that makes a
file of the call (as the recording does) hands it over through ``artifacts()``."""

from __future__ import annotations

import asyncio
import json
import struct
from collections.abc import AsyncGenerator, Sequence
from pathlib import Path

import pytest
import structlog

from bridge.artifacts.record import TranscriptRecord
from bridge.artifacts.service import AfterCallService, Artifact
from bridge.artifacts.store import CallArtifacts, LocalStore, StoredFile, Upload
from bridge.calls import Call, CallObserver
from bridge.config import Settings
from bridge.events import AudioEncoding, AudioFrame, StreamStarted, StreamStopped, Track
from tests.support.fake_engine import EngineScript, FakeEngines, RecordingSink

STARTED = StreamStarted("twilio", "CA-kept", "MZ1", AudioEncoding.PCMU, 8000,
                        (Track.INBOUND,), {"queue": "billing"})
TRANSCRIPTS = ["transcript.json", "transcript.srt", "transcript.txt", "transcript.vtt"]


class AudioFile(CallObserver):
    """Keeps the leg's audio and hands it over as a file when the call ended."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.heard = bytearray()
        self.handed: list[Path] = []

    def audio(self, track: Track, clock_ms: int, data: bytes) -> None:
        self.heard += data

    async def artifacts(self) -> list[Artifact]:
        path = self.folder / f"audio-{len(self.handed)}.raw"
        path.write_bytes(struct.pack("<I", len(self.heard)) + bytes(self.heard))
        self.handed.append(path)
        return [Artifact("recording.raw", "application/octet-stream", path)]


class Broken(CallObserver):
    async def artifacts(self) -> list[Artifact]:
        raise RuntimeError("this part failed")


async def whole_call(service: AfterCallService, sink: RecordingSink) -> Call:
    engines = FakeEngines({"telnyx": EngineScript(utterance_ms=400,
                                                  finals=["hello there", "thanks & bye"])})
    async with asyncio.TaskGroup() as tasks:
        call = Call(settings=Settings(), sink=sink, engines=engines, tasks=tasks, after=service)
        call.handle(STARTED)
        for n in range(40):  # 800 ms of audio: two finals
            call.handle(AudioFrame(Track.INBOUND, bytes([n + 1]) * 160, n * 20, None))
            if n % 10 == 9:
                await asyncio.sleep(0)  # let the leg's sender run, as the media reader would
        call.handle(StreamStopped())
        await call.end("stopped")
    return call


def transcript_record(call: Call) -> CallObserver:
    return TranscriptRecord({Track.INBOUND: "caller", Track.OUTBOUND: "agent"})


async def test_the_transcript_files_and_handed_over_files_are_stored_after_call_ended(
        tmp_path: Path) -> None:
    (tmp_path / "work").mkdir()
    recorders: list[AudioFile] = []

    def recorder(call: Call) -> CallObserver:
        recorders.append(AudioFile(tmp_path / "work"))
        return recorders[-1]

    store = LocalStore(tmp_path / "kept")
    service = AfterCallService([transcript_record, recorder, lambda call: Broken()],
                               store=store, feed_stream=lambda call: "stream-1")
    sink = RecordingSink()
    with structlog.testing.capture_logs() as logs:
        call = await whole_call(service, sink)
    assert sink.events[-1].type == "call.ended"

    manifest = await store.manifest("CA-kept")
    assert manifest is not None and manifest.stream == "stream-1"
    assert sorted(f.name for f in manifest.files) == sorted([*TRANSCRIPTS, "recording.raw"])
    folder = tmp_path / "kept" / "CA-kept"
    assert (folder / "transcript.txt").read_text() == "Caller: hello there\nCaller: thanks & bye\n"
    document = json.loads((folder / "transcript.json").read_text())
    assert document["custom_parameters"] == {"queue": "billing"}
    assert document["reason"] == "stopped" and document["started_at"].endswith("+00:00")
    assert [u["sequence"] for u in document["utterances"]] == [1, 2]
    [audio] = recorders
    assert (folder / "recording.raw").read_bytes()[4:] == bytes(audio.heard)
    assert len(audio.heard) == 40 * 160
    assert not audio.handed[0].exists()  # handed over: removed once stored

    failed = [line for line in logs if line["event"] == "an observer's artifacts failed"]
    assert failed == [{"event": "an observer's artifacts failed", "call_id": "CA-kept",
                       "observer": "Broken", "error": "RuntimeError", "log_level": "warning"}]
    stored = [line for line in logs if line["event"] == "call artifacts stored"]
    assert len(stored) == 1 and stored[0]["call_id"] == "CA-kept"

    # keep() gives the names stored, for what follows the call (call.completed)
    assert sorted(await service.keep(call, call.observers)) == sorted(
        [*TRANSCRIPTS, "recording.raw"])


async def test_a_store_that_fails_is_one_warning_and_the_handed_files_still_go(
        tmp_path: Path) -> None:
    (tmp_path / "work").mkdir()
    (tmp_path / "not-a-folder").write_text("x")
    recorders: list[AudioFile] = []

    def recorder(call: Call) -> CallObserver:
        recorders.append(AudioFile(tmp_path / "work"))
        return recorders[-1]

    service = AfterCallService([transcript_record, recorder],
                               store=LocalStore(tmp_path / "not-a-folder"))
    sink = RecordingSink()
    with structlog.testing.capture_logs() as logs:
        call = await whole_call(service, sink)
    assert [e.type.value for e in sink.events].count("call.ended") == 1
    warnings = [line for line in logs if line["event"] == "call artifacts not stored"]
    assert len(warnings) == 1 and warnings[0]["call_id"] == "CA-kept"
    assert "hello" not in json.dumps(logs)  # no transcript text in any line
    assert not recorders[0].handed[0].exists()
    assert await service.keep(call, call.observers) == []


async def test_without_a_store_there_is_no_observer_and_nothing_is_kept(
        tmp_path: Path) -> None:
    service = AfterCallService()
    sink = RecordingSink()
    call = await whole_call(service, sink)
    assert call.observers == []
    assert await service.keep(call, call.observers) == []
    assert [e.type for e in sink.events][-1] == "call.ended"


class StalledStore:
    """An artifact store that never answers a save: a store gone quiet."""

    description = "stalled"

    def __init__(self) -> None:
        self.saving = asyncio.Event()

    async def save(self, call_key: str, stream: str, uploads: Sequence[Upload]) -> None:
        self.saving.set()
        await asyncio.Event().wait()

    async def manifest(self, call_key: str) -> CallArtifacts | None:
        return None

    async def open(self, call_key: str, file: StoredFile) -> AsyncGenerator[bytes, None]:
        yield b""

    async def sweep(self, before: float) -> int:
        return 0


async def test_a_store_that_does_not_answer_is_given_up_after_the_timeout(
        tmp_path: Path) -> None:
    recorders: list[AudioFile] = []

    def recorder(call: Call) -> CallObserver:
        recorders.append(AudioFile(tmp_path))
        return recorders[-1]

    service = AfterCallService([transcript_record, recorder], store=StalledStore(),
                               timeout_s=0.05)
    sink = RecordingSink()
    with structlog.testing.capture_logs() as logs:
        await whole_call(service, sink)
    [warning] = [line for line in logs if line["event"] == "call artifacts not stored"]
    assert warning["error"] == "no answer within 0.05 s"
    assert service.outcomes == {"failed": 1}
    assert not recorders[0].handed[0].exists()
    assert sink.events[-1].type == "call.ended"


async def test_cancelling_the_call_while_it_stores_removes_the_handed_files(
        tmp_path: Path) -> None:
    recorders: list[AudioFile] = []

    def recorder(call: Call) -> CallObserver:
        recorders.append(AudioFile(tmp_path))
        return recorders[-1]

    store = StalledStore()
    service = AfterCallService([transcript_record, recorder], store=store)
    sink = RecordingSink()
    running = asyncio.create_task(whole_call(service, sink))
    await store.saving.wait()
    assert sink.events[-1].type == "call.ended"  # published before anything is stored
    running.cancel()
    with pytest.raises(asyncio.CancelledError):
        await running
    assert not recorders[0].handed[0].exists()
    assert service.outcomes == {}
