"""One leg's voice activity without an event loop: programs of known timing (a voiced buzz,
``tests.support.audio.pcm_voice``) and the shipped speech sample through the WebRTC
detector, the smoothing, every codec and rate, and jumps of the clock."""

from __future__ import annotations

import json
from collections.abc import Callable
from importlib import resources

import pytest

from bridge.analytics.intervals import Span, intersect, total_ms
from bridge.analytics.voice import LegVoice, takes_rate
from bridge.codecs.g711 import audioop
from bridge.events import AudioEncoding
from tests.support.audio import alaw, pcm_program, ulaw

# The detector decides per 30 ms frame and holds on a little after speech ends: edges are
# good to this much.
TOLERANCE_MS = 150


def play(voice: LegVoice, data: bytes, *, at_ms: int = 0, chunk_ms: int = 20,
         bytes_per_ms: int = 8) -> None:
    step = chunk_ms * bytes_per_ms
    for offset in range(0, len(data), step):
        voice.audio(at_ms + offset // bytes_per_ms, data[offset:offset + step])


def near(found: list[Span], expected: list[Span]) -> bool:
    return len(found) == len(expected) and all(
        abs(fs - es) <= TOLERANCE_MS and abs(fe - ee) <= TOLERANCE_MS
        for (fs, fe), (es, ee) in zip(found, expected, strict=True))


TWO_UTTERANCES = pcm_program(("silence", 500), ("voice", 2000, 125), ("silence", 2000),
                             ("voice", 1000, 200), ("silence", 500))
SAID = [(500, 2500), (4500, 5500)]


def test_speech_is_found_where_it_was_played_and_silence_is_not_speech() -> None:
    voice = LegVoice(AudioEncoding.PCMU, 8000)
    play(voice, ulaw(TWO_UTTERANCES))
    voice.end()
    assert near(voice.spans(), SAID), voice.spans()
    assert voice.heard.spans() == [(0, 6000)]


def test_a_run_in_progress_counts_before_the_leg_ends() -> None:
    voice = LegVoice(AudioEncoding.PCMU, 8000)
    play(voice, ulaw(pcm_program(("silence", 500), ("voice", 1000, 160))))
    assert voice.speech.spans() == []  # nothing has closed yet
    assert near(voice.spans(), [(500, 1500)]), voice.spans()


@pytest.mark.parametrize(("gap_ms", "runs"), [(150, 1), (900, 2)])
def test_gaps_shorter_than_the_hangover_stay_inside_the_speech(gap_ms: int, runs: int) -> None:
    voice = LegVoice(AudioEncoding.PCMU, 8000, hangover_ms=300)
    play(voice, ulaw(pcm_program(("silence", 300), ("voice", 600, 160), ("silence", gap_ms),
                                 ("voice", 600, 160), ("silence", 600))))
    voice.end()
    assert len(voice.spans()) == runs, voice.spans()


def test_a_click_shorter_than_the_minimum_is_not_speech() -> None:
    # The detector holds on about 90 ms past a sound: 30 ms of sound is four voiced frames.
    program = pcm_program(("silence", 500), ("voice", 30, 160), ("silence", 1000))
    strict = LegVoice(AudioEncoding.PCMU, 8000, min_speech_ms=150)
    play(strict, ulaw(program))
    strict.end()
    assert strict.spans() == []
    lenient = LegVoice(AudioEncoding.PCMU, 8000, min_speech_ms=30)
    play(lenient, ulaw(program))
    lenient.end()
    assert len(lenient.spans()) == 1  # the same audio, counted: the minimum did it


def test_no_speech_crosses_a_jump_of_the_clock() -> None:
    # A pause (or a long hole) between 1.5 s and 4 s: the audio before and after is one
    # sound, but the leg's speech is two spans, and it was heard in two pieces.
    sound = ulaw(pcm_program(("voice", 1000, 125)))
    voice = LegVoice(AudioEncoding.PCMU, 8000)
    play(voice, ulaw(pcm_program(("silence", 500))) + sound)
    play(voice, sound + ulaw(pcm_program(("silence", 500))), at_ms=4000)
    voice.end()
    assert near(voice.spans(), [(500, 1500), (4000, 5000)]), voice.spans()
    assert voice.heard.spans() == [(0, 1500), (4000, 5500)]


def resampled(pcm: bytes, rate: int) -> bytes:
    return audioop.ratecv(pcm, 2, 1, 8000, rate, None)[0]


@pytest.mark.parametrize(("encoding", "rate", "make"), [
    (AudioEncoding.PCMA, 8000, alaw),
    (AudioEncoding.L16, 8000, lambda pcm: pcm),
    (AudioEncoding.L16, 16000, lambda pcm: resampled(pcm, 16000)),
    (AudioEncoding.L16, 24000, lambda pcm: resampled(pcm, 24000)),  # resampled to 16 kHz
])
def test_every_codec_and_rate_finds_the_same_speech(
        encoding: AudioEncoding, rate: int, make: Callable[[bytes], bytes]) -> None:
    voice = LegVoice(encoding, rate)
    bytes_per_ms = rate // 1000 * (2 if encoding is AudioEncoding.L16 else 1)
    play(voice, make(TWO_UTTERANCES), bytes_per_ms=bytes_per_ms)
    voice.end()
    assert near(voice.spans(), SAID), voice.spans()


def test_chunks_of_any_size_give_the_same_spans() -> None:
    data = ulaw(TWO_UTTERANCES)
    even = LegVoice(AudioEncoding.PCMU, 8000)
    play(even, data, chunk_ms=100)
    ragged = LegVoice(AudioEncoding.PCMU, 8000)
    offset = 0
    for size in (7, 160, 333, 1, 960) * 1000:
        if offset >= len(data):
            break
        piece = data[offset:offset + size]
        ragged.audio(offset // 8, piece)
        offset += len(piece)
    for voice in (even, ragged):
        voice.end()
    # Pieces of less than a millisecond are kept too: every frame is judged the same.
    assert near(ragged.spans(), even.spans())
    assert ragged.frames == even.frames


def test_the_shipped_conversation_is_found_turn_by_turn() -> None:
    """Real (synthesised) speech, with its pauses between words and sentences: the speech
    found lies inside the speaker's turns, and covers nearly all of each."""
    sample = resources.files("bridge.samples").joinpath("support_call")
    reference = json.loads(sample.joinpath("reference.json").read_text())
    for speaker in ("caller", "agent"):
        voice = LegVoice(AudioEncoding.PCMU, 8000)
        play(voice, sample.joinpath(f"{speaker}.ulaw").read_bytes())
        voice.end()
        turns = [(t["start_ms"], t["end_ms"]) for t in reference["turns"]
                 if t["speaker"] == speaker]
        padded = [(start - TOLERANCE_MS, end + TOLERANCE_MS) for start, end in turns]
        found = voice.spans()
        assert total_ms(intersect(found, padded)) == total_ms(found), (found, turns)
        for turn in turns:
            # The reference turns end with the synthesiser's trailing silence.
            assert total_ms(intersect(found, [turn])) >= 0.85 * total_ms([turn]), (found, turn)


@pytest.mark.parametrize(("rate", "taken"), [(8000, True), (24000, True), (48000, True),
                                             (0, False), (11025, False), (96000, False)])
def test_a_rate_the_detector_cannot_take_is_refused_up_front(rate: int, taken: bool) -> None:
    assert takes_rate(rate) is taken
    if not taken:
        with pytest.raises(ValueError, match="8-48 kHz"):
            LegVoice(AudioEncoding.L16, rate)
