"""The in-band DTMF detector: every key found in G.711 audio, speech and noise never."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import bridge
from bridge.codecs import g711
from bridge.compliance.dtmf import COLUMNS, KEYS, ROWS, DtmfDetector, ToneSpan
from tests.support.dtmf import dtmf_tone


def through_ulaw(samples: np.ndarray) -> np.ndarray:
    """What a G.711 leg carries: the samples after a µ-law round trip."""
    pcm = g711.decode_ulaw(g711.encode_ulaw(samples.astype("<i2").tobytes()))
    return np.frombuffer(pcm, dtype="<i2").astype(np.int16)


def silence(ms: int, rate: int = 8000) -> np.ndarray:
    return np.zeros(rate * ms // 1000, dtype=np.int16)


@pytest.mark.parametrize("digit", [key for row in KEYS for key in row])
def test_every_key_is_found_where_it_sounds(digit: str) -> None:
    detector = DtmfDetector(8000)
    audio = through_ulaw(np.concatenate([silence(300), dtmf_tone(digit, 60), silence(300)]))
    [span] = detector.find(audio)
    assert span.digit == digit
    # The tone runs over samples 2400-2880; a block mostly filled by it counts, so the span
    # may reach into the silence around it by less than one block.
    assert 2400 - detector.block < span.start <= 2400 + detector.hop
    assert 2880 - detector.hop <= span.end < 2880 + detector.block


@pytest.mark.parametrize(("row_db", "column_db"), [(0, -6), (-6, 0), (-22, -22)])
def test_twist_and_quiet_tones_within_the_limits_are_found(row_db: float,
                                                          column_db: float) -> None:
    audio = through_ulaw(np.concatenate([
        silence(100), dtmf_tone("5", 80, row_db=row_db, column_db=column_db), silence(100)]))
    assert [s.digit for s in DtmfDetector(8000).find(audio)] == ["5"]


@pytest.mark.parametrize("deviation", [-0.035, -0.015, 0.015, 0.035])
@pytest.mark.parametrize("rate", [8000, 16000])
def test_keys_off_their_nominal_frequencies_are_found(rate: int, deviation: float) -> None:
    # A receiver must accept tones 1.5 % off (ITU-T Q.24) and many accept more: a key an IVR
    # reads from such a phone must not survive in a recording.
    missed = []
    for digit in (key for row in KEYS for key in row):
        tone = dtmf_tone(digit, 60, rate=rate, deviation=deviation)
        audio = np.concatenate([silence(200, rate), tone, silence(200, rate)])
        if rate == 8000:
            audio = through_ulaw(audio)
        if [s.digit for s in DtmfDetector(rate).find(audio)] != [digit]:
            missed.append(digit)
    assert missed == []


def test_a_tone_at_16_khz_is_found_too() -> None:
    audio = np.concatenate([silence(100, 16000), dtmf_tone("#", 60, rate=16000),
                            silence(100, 16000)])
    assert [s.digit for s in DtmfDetector(16000).find(audio)] == ["#"]


def test_separate_presses_of_one_key_are_separate_spans() -> None:
    audio = through_ulaw(np.concatenate([dtmf_tone("7", 60), silence(60), dtmf_tone("7", 60)]))
    assert [s.digit for s in DtmfDetector(8000).find(audio)] == ["7", "7"]


def test_speech_is_not_a_key_press() -> None:
    detector = DtmfDetector(8000)
    for leg in ("caller.ulaw", "agent.ulaw"):
        path = Path(bridge.__file__).parent / "samples" / "support_call" / leg
        speech = np.frombuffer(g711.decode_ulaw(path.read_bytes()), dtype="<i2")
        assert len(speech) > 8000 * 10
        assert detector.find(speech.astype(np.int16)) == []


def test_noise_single_tones_and_dial_tone_are_not_key_presses() -> None:
    detector = DtmfDetector(8000)
    rng = np.random.default_rng(7)
    noise = rng.normal(0, 4000, 8000 * 5).clip(-32768, 32767).astype(np.int16)
    n = np.arange(8000)
    single_row = (8000 * np.sin(2 * np.pi * ROWS[1] * n / 8000)).astype(np.int16)
    single_column = (8000 * np.sin(2 * np.pi * COLUMNS[2] * n / 8000)).astype(np.int16)
    dial_tone = (5000 * (np.sin(2 * np.pi * 350 * n / 8000)
                         + np.sin(2 * np.pi * 440 * n / 8000))).astype(np.int16)
    for audio in (noise, single_row, single_column, dial_tone):
        assert detector.find(through_ulaw(audio)) == []


def test_two_keys_at_once_are_not_one() -> None:
    # Two row tones and two column tones: no single key; a receiver rejects it.
    both = dtmf_tone("1", 100).astype(np.int32) + dtmf_tone("9", 100).astype(np.int32)
    assert DtmfDetector(8000).find((both // 2).astype(np.int16)) == []


def test_short_input_has_no_blocks() -> None:
    assert DtmfDetector(8000).find(silence(10)) == []
    assert ToneSpan("1", 0, 1).digit == "1"
