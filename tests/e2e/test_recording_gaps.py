"""Recordings where the transcript cannot vouch for the audio: an engine that stopped
answering, through ``callbridge serve``, proven from the stored audio."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bridge.events import AudioEncoding, Track
from bridge.simulate import CallSpec, build_call, stream_call
from tests.conftest import BridgeFactory
from tests.e2e.test_recording import (
    CALL_MS,
    CARD_SPOKEN,
    MARGIN_MS,
    SCRIPT,
    SPEECH_1,
    caller_audio,
    decoded,
    read_stereo,
    recording_env,
    samples,
    stored_recording,
    ulaw_of,
)
from tests.support.faults import Failure, Fault
from tests.support.receiver import WebhookReceiver
from tests.support.telnyx_stt import TelnyxSttEmulator

pytestmark = pytest.mark.e2e


async def test_a_card_read_after_the_engine_stopped_answering_is_silence(
        bridge_factory: BridgeFactory, stt: TelnyxSttEmulator, receiver: WebhookReceiver,
        tmp_path: Path) -> None:
    # The engine (one that never closes its session by itself) goes quiet after the first
    # utterance, 1.8 s of audio in, and the card is read after that: no final carries it,
    # so the redactor never saw it, and nothing but the bridge's own doubt can silence it.
    stt.script = SCRIPT
    stt.with_times = True
    stt.faults = [Fault(after_bytes=samples(1800), failure=Failure.STALL)]
    bridge = await bridge_factory(**recording_env(
        tmp_path, CALLBRIDGE_TELNYX_TRANSCRIPTION_ENGINE="Google",
        CALLBRIDGE_STT_CLOSE_GRACE_S="0.5"))
    caller = caller_audio()
    spec = CallSpec("twilio", AudioEncoding.PCMU, {Track.INBOUND: ulaw_of(caller)},
                    call_id="CA-stalled")
    assert (await stream_call(bridge.url("/streams/twilio"), build_call(spec), speed=0)
            ).close_code == 1000
    events = await receiver.wait_for(receiver.ended("CA-stalled"))
    finals = [e.data for e in events if e.type == "transcript.final"]
    assert [f["text"] for f in finals] == [SCRIPT[0]]

    left = read_stereo(await stored_recording(bridge, tmp_path, "CA-stalled"))[:, 0]
    assert len(left) == samples(CALL_MS)
    card = slice(samples(CARD_SPOKEN[0]), samples(CARD_SPOKEN[1]))
    assert decoded(ulaw_of(caller))[card].any()  # the input had it, loud
    assert not left[card].any()
    # What the engine did transcribe is kept, sample for sample, but for the margin at the
    # end of its last final (engines' times are approximate).
    spoken = slice(samples(SPEECH_1[0]), samples(SPEECH_1[1] - MARGIN_MS))
    assert np.array_equal(left[spoken], decoded(ulaw_of(caller))[spoken])


async def test_a_crashs_spool_files_go_at_start_even_with_recording_now_off(
        bridge_factory: BridgeFactory, tmp_path: Path) -> None:
    # A crash left a leg's raw audio, card numbers and all, before anything was silenced;
    # an operator who then turns recording off must not keep it on disk for ever.
    spool = tmp_path / "spool"
    spool.mkdir(mode=0o700)
    stale = spool / "CA-crashed-0123456789ab.inbound.spool"
    stale.write_bytes(b"\xff" * 800)
    rendered = spool / "CA-crashed-0123456789ab.recording.wav"
    rendered.write_bytes(b"RIFF")
    unrelated = spool / "notes.txt"
    unrelated.write_bytes(b"kept")
    bridge = await bridge_factory(CALLBRIDGE_ARTIFACTS_SPOOL_DIR=str(spool))
    removed = await bridge.wait_for_log("removed spool files a crash left behind")
    assert removed["files"] == 2
    assert sorted(p.name for p in spool.iterdir()) == ["notes.txt"]
