"""The Deepgram client's pure parts: the URL, joining settled segments, close codes."""

from urllib.parse import parse_qs, urlsplit

from bridge.config import DeepgramSettings
from bridge.errors import UpstreamRefused, UpstreamUnavailable
from bridge.events import AudioEncoding
from bridge.stt.base import EngineResult
from bridge.stt.deepgram import UtteranceJoiner, build_url, classify_close


def results(text: str, is_final: bool, speech_final: bool, start: float, duration: float,
            confidence: float = 0.9) -> dict[str, object]:
    return {"type": "Results", "is_final": is_final, "speech_final": speech_final,
            "start": start, "duration": duration,
            "channel": {"alternatives": [{"transcript": text, "confidence": confidence}]}}


def test_url_carries_the_legs_codec_and_one_parameter_per_value() -> None:
    settings = DeepgramSettings(redact=("pci", "ssn"), keyterms=("Telnyx", "SIP"),
                                interim_results=True)
    query = parse_qs(urlsplit(build_url(settings, AudioEncoding.PCMA, 8000)).query)
    assert query["encoding"] == ["alaw"] and query["sample_rate"] == ["8000"]
    assert query["channels"] == ["1"] and query["redact"] == ["pci", "ssn"]
    assert query["keyterm"] == ["Telnyx", "SIP"] and "keywords" not in query
    older = build_url(DeepgramSettings(model="nova-2", keyterms=("SIP:2",)), AudioEncoding.L16,
                      16000)
    query = parse_qs(urlsplit(older).query)
    assert query["keywords"] == ["SIP:2"] and query["encoding"] == ["linear16"]


def test_settled_segments_join_into_one_final() -> None:
    joiner = UtteranceJoiner()
    assert joiner.take(results("my card", False, False, 0.5, 0.4)) == EngineResult(
        "my card", False, None, 0.5, 0.9)
    assert joiner.take(results("my card is", True, False, 0.5, 0.6, 0.8)) is None
    partial = joiner.take(results("on file", False, False, 1.0, 0.25))
    assert partial == EngineResult("my card is on file", False, None, 0.5, 1.25)
    final = joiner.take(results("on file", True, True, 1.0, 0.5, 1.0))
    assert final == EngineResult("my card is on file", True, 0.9, 0.5, 1.5)
    assert joiner.close() is None  # nothing left


def test_utterance_end_closes_an_utterance_without_speech_final() -> None:
    joiner = UtteranceJoiner()
    joiner.take(results("hello", True, False, 0.0, 0.5))
    assert joiner.close() == EngineResult("hello", True, 0.9, 0.0, 0.5)


def test_close_codes() -> None:
    assert classify_close(1000, "") is None
    assert isinstance(classify_close(1008, "DATA-0000"), UpstreamRefused)
    assert isinstance(classify_close(1011, "NET-0001"), UpstreamUnavailable)
