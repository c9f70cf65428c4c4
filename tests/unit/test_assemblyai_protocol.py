"""The AssemblyAI client's pure parts: the URL, turns to results, error codes."""

import json
from urllib.parse import parse_qs, urlsplit

from bridge.config import AssemblyAISettings
from bridge.errors import EngineAtCapacity, UpstreamRefused, UpstreamUnavailable
from bridge.events import AudioEncoding
from bridge.stt.assemblyai import TurnReader, build_url, error_for
from bridge.stt.base import EngineResult


def turn(order: int, text: str, end: bool, formatted: bool) -> dict[str, object]:
    return {"type": "Turn", "turn_order": order, "turn_is_formatted": formatted,
            "end_of_turn": end, "transcript": text,
            "words": [{"text": "x", "start": 500, "end": 900, "confidence": 0.8,
                       "word_is_final": True},
                      {"text": "y", "start": 900, "end": 1500, "confidence": 1.0,
                       "word_is_final": True}]}


def test_url() -> None:
    settings = AssemblyAISettings(keyterms=("Telnyx", "SIP"), redact=("pci", "ssn"))
    query = parse_qs(urlsplit(build_url(settings, AudioEncoding.PCMU, 8000)).query)
    assert query["encoding"] == ["pcm_mulaw"] and query["sample_rate"] == ["8000"]
    assert query["speech_model"] == ["universal-streaming-english"]
    assert json.loads(query["keyterms_prompt"][0]) == ["Telnyx", "SIP"]
    assert "us_social_security_number" in json.loads(query["redact_pii_policies"][0])
    pcma = parse_qs(urlsplit(build_url(settings, AudioEncoding.PCMA, 8000)).query)
    assert pcma["encoding"] == ["pcm_s16le"]


def test_the_formatted_end_of_turn_is_the_final() -> None:
    reader = TurnReader(formatted=True)
    assert reader.take(turn(0, "hello", False, False)) == EngineResult(
        "hello", False, None, 0.5, 1.5)
    assert reader.take(turn(0, "hello there", True, False)) is None
    final = reader.take(turn(0, "Hello there.", True, True))
    assert final is not None
    assert (final.text, final.is_final, final.confidence, final.start_s, final.end_s) == (
        "Hello there.", True, 0.9, 0.5, 1.5)
    assert [(w.text, w.start_s, w.end_s) for w in final.words] == [("x", 0.5, 0.9),
                                                                    ("y", 0.9, 1.5)]
    assert reader.take(turn(0, "Hello there.", True, True)) is None  # once per turn


def test_without_formatting_the_first_end_of_turn_is_the_final() -> None:
    reader = TurnReader(formatted=False)
    result = reader.take(turn(3, "hello there", True, False))
    assert result is not None and result.is_final and result.text == "hello there"


def test_error_codes() -> None:
    for code in (1008, 3006, 3007, 4001):
        assert isinstance(error_for(code, "x"), UpstreamRefused)
    for code in (3005, 3008, 3009):
        assert isinstance(error_for(code, "x"), UpstreamUnavailable)


def test_too_many_sessions_is_the_engine_at_capacity_whichever_code_says_it() -> None:
    for code, message in ((3009, "Too many concurrent sessions"),
                          (1008, "Unauthorized connection: Too many concurrent sessions")):
        error = error_for(code, message)
        assert isinstance(error, EngineAtCapacity) and error.code == "engine_capacity"
    assert not isinstance(error_for(1008, "Unauthorized connection: invalid key"),
                          EngineAtCapacity)
