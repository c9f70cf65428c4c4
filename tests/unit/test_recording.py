"""The recording's parts: what a redacted final silences, the spool, the stale clean-up, and
the rendered file (a real WAV in a temporary directory)."""

from __future__ import annotations

import fcntl
import os
import sys
import wave
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from bridge.artifacts.recording import (
    REDACTION_MARGIN_MS,
    LegSpool,
    RenderPlan,
    locate_words,
    longest_recording,
    recording_wanted,
    redaction_spans,
    remove_stale_spools,
    render,
)
from bridge.codecs import g711
from bridge.compliance.dtmf import DtmfDetector
from bridge.compliance.redact import CREDIT_CARD, Redacted
from bridge.config import ArtifactsSettings, EngineRouteSettings, Settings, SttSettings, override
from bridge.errors import ConfigError
from bridge.events import AudioEncoding, Track, TranscriptResult
from tests.support.dtmf import dtmf_tone

M = REDACTION_MARGIN_MS
TEXT = "my card is 4111 1111 1111 1111 thanks"
WORDS = (("my", 0, 100, None), ("card", 100, 200, None), ("is", 200, 300, None),
         ("4111", 300, 400, None), ("1111", 400, 500, None), ("1111", 500, 600, None),
         ("1111", 600, 700, None), ("thanks", 700, 800, None))
CUT = (11, 30)  # "4111 1111 1111 1111"


def final(text: str = TEXT, words: tuple[tuple[str, int, int, float | None], ...] = WORDS
          ) -> TranscriptResult:
    return TranscriptResult(text, True, 0.9, 0, 800, words)


def card(cuts: list[tuple[int, int]] | None = None, **counts: int) -> Redacted:
    return Redacted("my card is [credit_card] thanks", Counter(counts or {CREDIT_CARD: 1}),
                    [CUT] if cuts is None else cuts)


def test_an_unredacted_final_silences_nothing() -> None:
    assert redaction_spans(final(), Redacted(TEXT), {"text": TEXT}) == []


def test_the_words_under_a_cut_are_silenced_when_the_engine_timed_them() -> None:
    spans = redaction_spans(final(), card(), {"text": "..."})
    assert spans == [(300 - M, 400 + M), (400 - M, 500 + M), (500 - M, 600 + M),
                     (600 - M, 700 + M)]


@pytest.mark.parametrize("result", [
    final(words=()),  # no word times
    final(words=(("my", 0, 100, None), ("kard", 100, 200, None))),  # a word not in the text
    final(words=(*WORDS[:3], ("4111", 300, 400, None), *WORDS[3:])),  # one word too many
], ids=["no words", "word not in text", "more words than the text"])
def test_the_whole_utterance_when_words_cannot_be_placed(result: TranscriptResult) -> None:
    assert redaction_spans(result, card(), {"text": "..."}) == [(0 - M, 800 + M)]


def test_a_custom_pattern_leaves_no_ranges_so_the_whole_utterance_goes() -> None:
    redacted = Redacted("my [member_id]", Counter({"member_id": 1}), [])
    assert redaction_spans(final(), redacted, {"text": "..."}) == [(0 - M, 800 + M)]
    mixed = card(member_id=1, credit_card=1)
    assert redaction_spans(final(), mixed, {"text": "..."}) == [(0 - M, 800 + M)]


def test_an_emptied_final_is_silenced_even_without_ranges() -> None:
    assert redaction_spans(final(), Redacted(""), None) == [(0 - M, 800 + M)]
    # With ranges, only the words under them.
    assert len(redaction_spans(final(), card(), None)) == 4


def test_words_are_found_in_order_whatever_their_case() -> None:
    assert locate_words("Tone 400 hertz.", ["tone", "400", "hertz."]) == [(0, 4), (5, 8),
                                                                          (9, 15)]
    assert locate_words("a b", ["b", "a"]) is None
    # "İ" lowers to two characters: ranges stay in the text as given.
    assert locate_words("İ 4111 x", ["İ", "4111"]) == [(0, 1), (2, 6)]
    assert locate_words("Straße 4111", ["STRASSE", "4111"]) is None  # no folding guess
    assert locate_words("Straße 4111", ["straße", "4111"]) == [(0, 6), (7, 11)]


def settings(**artifacts: object) -> Settings:
    return override(Settings(), "artifacts", **artifacts)


def test_who_is_recorded_routes_and_the_calls_own_choice() -> None:
    routes = (EngineRouteSettings(path="/streams/twilio", recording=True),
              EngineRouteSettings(parameters=(("queue", "vip"),), recording=False))
    base = Settings(stt=SttSettings(routes=routes))
    assert not recording_wanted(Settings(), {}, "/streams/telnyx")
    assert recording_wanted(settings(recording=True), {}, "/streams/telnyx")
    assert recording_wanted(base, {}, "/streams/twilio")
    assert not recording_wanted(override(base, "artifacts", recording=True), {"queue": "vip"},
                                "/streams/telnyx")
    # The call's parameter counts only when calls may choose.
    assert not recording_wanted(Settings(), {"callbridge_recording": "true"}, "")
    per_call = settings(recording_per_call=True)
    assert recording_wanted(per_call, {"callbridge_recording": "true"}, "")
    assert not recording_wanted(override(base, "artifacts", recording_per_call=True),
                                {"callbridge_recording": "false"}, "/streams/twilio")


def spool(tmp_path: Path, name: str = "leg", **limits: int) -> LegSpool:
    return LegSpool(tmp_path / f"{name}.spool", sample_rate=8000, width=1,
                    max_bytes=limits.get("max_bytes", 10**6),
                    max_samples=limits.get("max_samples", 10**6))


def test_the_spool_is_private_and_keeps_runs_on_the_clock(tmp_path: Path) -> None:
    leg = spool(tmp_path)
    leg.write(1000, b"\x01" * 160)  # 20 ms at 1000 ms
    leg.write(1020, b"\x02" * 160)  # continues
    leg.write(1041, b"\x03" * 80)  # a ms of jitter: still continues
    leg.write(3000, b"\x04" * 160)  # the clock jumped: a new run
    leg.close()
    assert leg.runs == [[8000, 0, 400], [24000, 400, 160]]
    assert (leg.path.stat().st_mode & 0o777) == 0o600
    assert leg.path.read_bytes() == b"\x01" * 160 + b"\x02" * 160 + b"\x03" * 80 + b"\x04" * 160


def test_the_spool_stops_at_its_bounds(tmp_path: Path) -> None:
    long = spool(tmp_path, "long", max_samples=8000)
    long.write(0, b"\x00" * 4000)
    long.write(5000, b"\x00" * 80)  # past one second of clock from the first byte
    large = spool(tmp_path, "large", max_bytes=200)
    large.write(0, b"\x00" * 160)
    large.write(20, b"\x00" * 160)
    for leg in (long, large):
        leg.close()
        assert leg.truncated
    assert long.size == 4000 and large.size == 160


def test_stale_spools_go_and_live_ones_stay(tmp_path: Path) -> None:
    live = spool(tmp_path, "live")
    stale = tmp_path / "crashed.inbound.spool"
    stale.write_bytes(b"\x00" * 10)
    half = tmp_path / "crashed.recording.wav.part"
    half.write_bytes(b"RIFF")
    other = tmp_path / "notes.txt"
    other.write_bytes(b"kept")
    assert remove_stale_spools(tmp_path) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["live.spool", "notes.txt"]
    live.close()
    assert remove_stale_spools(tmp_path) == 1


@pytest.mark.parametrize("extension", ["wav", "flac", "opus"])
def test_a_rendered_recording_a_crash_left_unstored_goes_at_start(
        tmp_path: Path, extension: str) -> None:
    # Rendered but not yet in the store when the process died: nothing else would ever
    # delete it (retention sweeps the store, not the spool directory).
    rendered = tmp_path / f"CA1-0123456789ab.recording.{extension}"
    rendered.write_bytes(b"RIFF")
    assert remove_stale_spools(tmp_path) == 1
    assert list(tmp_path.iterdir()) == []


def test_a_locked_spool_is_held_by_its_process(tmp_path: Path) -> None:
    leg = spool(tmp_path)
    descriptor = os.open(leg.path, os.O_RDONLY)
    try:
        with pytest.raises(BlockingIOError):
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    finally:
        os.close(descriptor)
        leg.close()


def ulaw_of(samples: np.ndarray) -> bytes:
    return g711.encode_ulaw(samples.astype("<i2").tobytes())


def decoded(data: bytes) -> np.ndarray:
    return np.frombuffer(g711.decode_ulaw(data), dtype="<i2")


def read_wav(path: Path) -> tuple[int, np.ndarray]:
    with wave.open(str(path), "rb") as wav:
        assert (wav.getnchannels(), wav.getsampwidth()) == (2, 2)
        frames = np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2")
        return wav.getframerate(), frames.reshape(-1, 2)


def test_render_aligns_legs_silences_spans_and_tones_and_keeps_the_rest(
        tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    voice = rng.normal(0, 2500, 8000 * 4).clip(-30000, 30000).astype(np.int16)
    caller = np.concatenate([voice[:8000], dtmf_tone("4", 100), voice[8000:16000]])
    agent = voice[16000:24000]
    legs = {Track.INBOUND: spool(tmp_path, "in"), Track.OUTBOUND: spool(tmp_path, "out")}
    legs[Track.INBOUND].write(0, ulaw_of(caller))
    legs[Track.OUTBOUND].write(500, ulaw_of(agent))  # the agent starts 500 ms later
    for leg in legs.values():
        leg.close()
    output = tmp_path / "call.recording.wav"
    plan = RenderPlan(AudioEncoding.PCMU, 8000, legs,
                      {Track.INBOUND: [(200, 300)], Track.OUTBOUND: []}, [(1800, 1900)],
                      set(), output)
    rendered = render(plan)
    assert rendered is not None and rendered.path == output and rendered.tones == 1
    rate, stereo = read_wav(output)
    assert rate == 8000 and len(stereo) == len(caller) == 8000 * 2 + 800
    assert (output.stat().st_mode & 0o777) == 0o600
    left, right = stereo[:, 0], stereo[:, 1]
    expected_left = decoded(ulaw_of(caller)).copy()
    expected_right = np.zeros(len(stereo), dtype=np.int16)
    expected_right[4000:4000 + len(agent)] = decoded(ulaw_of(agent))[:len(stereo) - 4000]
    # Silenced: 200-300 ms on the left; the key press (1000-1100 ms, plus the detector's
    # reach and margin) on both; the reported press window 1800-1900 on both.
    tone = slice(1000 * 8 - 205 - 800, 1100 * 8 + 205 + 800)
    assert not left[1600:2400].any() and not left[8000:8800].any()
    assert not right[8000:8800].any() and not right[14400:15200].any()
    keep = np.ones(len(stereo), dtype=bool)
    keep[1600:2400] = keep[tone] = keep[14400:15200] = False
    assert np.array_equal(left[keep], expected_left[keep])
    assert np.array_equal(right[keep], expected_right[keep])
    silenced_left = int((left != expected_left).sum())
    assert 0 < silenced_left <= 800 + (tone.stop - tone.start) + 800


def test_a_render_that_fails_leaves_no_half_written_file(tmp_path: Path) -> None:
    legs = {Track.INBOUND: spool(tmp_path, "in")}
    legs[Track.INBOUND].write(0, b"\x10" * 8000)
    legs[Track.INBOUND].close()
    output = tmp_path / "r.wav"
    # A full disk: every write of the half-written file fails.
    (tmp_path / "r.wav.part").symlink_to("/dev/full")
    with pytest.raises(OSError, match="No space"):
        render(RenderPlan(AudioEncoding.PCMU, 8000, legs, {Track.INBOUND: []}, [], set(),
                          output))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.spool"]


def test_a_muted_leg_is_silent_and_no_audio_is_no_file(tmp_path: Path) -> None:
    legs = {Track.INBOUND: spool(tmp_path, "in"), Track.OUTBOUND: spool(tmp_path, "out")}
    legs[Track.INBOUND].write(0, b"\x10" * 800)
    legs[Track.OUTBOUND].write(0, b"\x20" * 800)
    for leg in legs.values():
        leg.close()
    output = tmp_path / "r.wav"
    render(RenderPlan(AudioEncoding.PCMU, 8000, legs, {t: [] for t in legs}, [],
                      {Track.OUTBOUND}, output))
    _, stereo = read_wav(output)
    assert stereo[:, 0].all() and not stereo[:, 1].any()
    empty = spool(tmp_path, "empty")
    empty.close()
    assert render(RenderPlan(AudioEncoding.PCMU, 8000, {Track.INBOUND: empty}, {}, [], set(),
                             tmp_path / "none.wav")) is None


def test_artifacts_settings_are_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    ArtifactsSettings().validate(lambda key: key)
    with pytest.raises(ConfigError, match="recording_format"):
        ArtifactsSettings(recording_format="mp3").validate(lambda key: key)
    with pytest.raises(ConfigError, match="max_recording_s"):
        ArtifactsSettings(max_recording_s=10).validate(lambda key: key)
    # FLAC and Opus without PyAV (here: an import that fails) are refused at start.
    monkeypatch.setitem(sys.modules, "av", None)
    ArtifactsSettings(recording_format="wav").validate(lambda key: key)
    with pytest.raises(ConfigError, match="codecs extra"):
        ArtifactsSettings(recording_format="flac").validate(lambda key: key)


def test_legs_far_apart_on_the_clock_make_no_longer_file_than_the_bound(
        tmp_path: Path) -> None:
    legs = {Track.INBOUND: spool(tmp_path, "in"), Track.OUTBOUND: spool(tmp_path, "out")}
    legs[Track.INBOUND].write(0, b"\x10" * 800)
    legs[Track.OUTBOUND].write(10**9, b"\x20" * 800)  # eleven days later, says the stream
    for leg in legs.values():
        leg.close()
    output = tmp_path / "r.wav"
    render(RenderPlan(AudioEncoding.PCMU, 8000, legs, {t: [] for t in legs}, [], set(),
                      output, max_samples=16000))
    _, stereo = read_wav(output)
    assert len(stereo) == 16000 and stereo[:800, 0].all() and not stereo[:, 1].any()


def test_a_16_khz_linear_leg_is_rendered_at_its_rate(tmp_path: Path) -> None:
    n = np.arange(16000)
    voice = (3000 * np.sin(2 * np.pi * 300 * n / 16000)).astype("<i2")
    leg = LegSpool(tmp_path / "l16.spool", sample_rate=16000, width=2, max_bytes=10**6,
                   max_samples=10**6)
    leg.write(0, voice.tobytes())
    leg.close()
    output = tmp_path / "r.wav"
    render(RenderPlan(AudioEncoding.L16, 16000, {Track.INBOUND: leg}, {Track.INBOUND: []}, [],
                      set(), output))
    rate, stereo = read_wav(output)
    assert rate == 16000 and np.array_equal(stereo[:, 0], voice)


def test_opus_holds_both_channels_for_the_whole_call(tmp_path: Path) -> None:
    av = pytest.importorskip("av", reason="Opus needs the codecs extra")
    n = np.arange(8000 * 2)
    tone = (8000 * np.sin(2 * np.pi * 440 * n / 8000)).astype(np.int16)
    legs = {Track.INBOUND: spool(tmp_path, "in")}
    legs[Track.INBOUND].write(0, ulaw_of(tone))
    legs[Track.INBOUND].close()
    output = tmp_path / "r.opus"
    render(RenderPlan(AudioEncoding.PCMU, 8000, legs, {Track.INBOUND: []}, [], set(), output,
                      "opus"))
    with av.open(str(output)) as container:
        # Opus decodes to planar floats at 48 kHz: (channels, samples) in [-1, 1].
        frames = [f.to_ndarray() for f in container.decode(audio=0)]
        rate = container.streams.audio[0].sample_rate
    stereo = np.concatenate(frames, axis=1).astype(np.float64)
    assert stereo.shape[0] == 2 and abs(stereo.shape[1] / rate - 2.0) < 0.1
    left, right = np.sqrt((stereo ** 2).mean(axis=1))
    assert left > 0.1 and right < 0.005  # the caller on the left (RMS 0.17), none on the right


def test_spans_and_tones_across_the_render_windows_are_silenced_exactly(
        tmp_path: Path) -> None:
    # Rendered 30 s at a time: what straddles 30 s and 60 s must come out the same.
    rng = np.random.default_rng(11)
    audio = rng.normal(0, 2000, 8000 * 65).clip(-30000, 30000).astype(np.int16)
    audio[8000 * 30 - 400:8000 * 30 + 400] = dtmf_tone("9", 100)  # 29.95-30.05 s
    leg = spool(tmp_path, "in", max_bytes=10**7, max_samples=10**7)
    leg.write(0, ulaw_of(audio))
    leg.close()
    output = tmp_path / "r.wav"
    spans = [(29_000, 29_500), (29_400, 29_600), (59_900, 60_100)]  # two overlap
    rendered = render(RenderPlan(AudioEncoding.PCMU, 8000, {Track.INBOUND: leg},
                                 {Track.INBOUND: spans}, [], set(), output))
    assert rendered is not None and rendered.tones == 1
    _, stereo = read_wav(output)
    left, expected = stereo[:, 0], decoded(ulaw_of(audio))
    silenced = np.zeros(len(left), dtype=bool)
    for start, end in [(29_000, 29_600), (59_900, 60_100)]:
        silenced[start * 8:end * 8] = True
    assert not left[silenced].any()
    tone_reach = np.zeros(len(left), dtype=bool)
    tone_reach[8000 * 30 - 400 - 205 - 800:8000 * 30 + 400 + 205 + 800] = True
    assert not left[8000 * 30 - 400:8000 * 30 + 400].any()
    kept = ~silenced & ~tone_reach
    assert np.array_equal(left[kept], expected[kept])
    assert DtmfDetector(8000).find(left.copy()) == []


def test_a_wav_recording_never_outgrows_what_its_header_can_count() -> None:
    # A day of a 24 kHz leg (max_recording_s allows it) is 8.3 GB of stereo WAV: the 32-bit
    # RIFF size would overflow when the header is written, and the recording be lost.
    frames = longest_recording("wav", 24000, 86400)
    assert 36 + frames * 4 <= 2**32 - 1
    assert frames > 24000 * 12 * 3600  # still over 12 hours
    assert longest_recording("flac", 24000, 86400) == 24000 * 86400  # no such limit
    assert longest_recording("wav", 8000, 14400) == 8000 * 14400  # the default: untouched


def test_a_leg_whose_clock_jumps_at_every_chunk_is_placed_exactly_across_windows(
        tmp_path: Path) -> None:
    # 20 ms of audio every 700 ms for 70 s, and two chunks straddling the 30 s and 60 s
    # window edges: a run per chunk, each read where its clock says.
    leg = spool(tmp_path, "in", max_bytes=10**7, max_samples=10**7)
    expected = np.zeros(8000 * 70, dtype=np.int16)
    rng = np.random.default_rng(5)
    for at_ms in sorted({*range(0, 70_000, 700), 29_990, 59_995}):
        chunk = decoded(ulaw_of(rng.normal(0, 3000, 160).clip(-30000, 30000)))
        leg.write(at_ms, ulaw_of(chunk))
        expected[at_ms * 8:at_ms * 8 + 160] = chunk
    leg.close()
    assert len(leg.runs) == 102
    output = tmp_path / "r.wav"
    render(RenderPlan(AudioEncoding.PCMU, 8000, {Track.INBOUND: leg},
                      {Track.INBOUND: []}, [], set(), output))
    _, stereo = read_wav(output)
    assert len(stereo) == 69_300 * 8 + 160
    assert np.array_equal(stereo[:, 0], expected[:len(stereo)])
