"""The Telnyx STT client's pure parts: the session URL and server-frame classification."""

from urllib.parse import parse_qs, urlsplit

import pytest

from bridge.config import TelnyxSettings
from bridge.events import AudioEncoding
from bridge.stt.base import EngineResult
from bridge.stt.telnyx import ServerError, build_url, parse_server_frame


def test_url_carries_the_legs_codec_and_every_configured_parameter() -> None:
    settings = TelnyxSettings(url="wss://api.telnyx.com/v2/speech-to-text/transcription",
                              model="nova-3", interim_results=True, endpointing="300",
                              redact="pci,ssn", keyterms=("Telnyx", "call bridge"),
                              keywords=("SIP:2",))
    url = build_url(settings, AudioEncoding.PCMA)
    parts = urlsplit(url)
    assert parts.netloc == "api.telnyx.com"
    assert parts.path == "/v2/speech-to-text/transcription"
    assert parse_qs(parts.query) == {
        "transcription_engine": ["Deepgram"], "input_format": ["alaw"], "sample_rate": ["8000"],
        "model": ["nova-3"], "language": ["en-US"], "endpointing": ["300"],
        "redact": ["pci,ssn"], "interim_results": ["true"],
        "keyterm": ["Telnyx", "call bridge"], "keywords": ["SIP:2"]}


def test_mulaw_legs_ask_for_mulaw_at_8000_and_omit_unset_options() -> None:
    query = parse_qs(urlsplit(build_url(TelnyxSettings(), AudioEncoding.PCMU)).query)
    assert query == {"transcription_engine": ["Deepgram"], "input_format": ["mulaw"],
                     "sample_rate": ["8000"], "language": ["en-US"]}


@pytest.mark.parametrize(("text", "frame"), [
    ('{"transcript":"Hello there","is_final":true,"speech_final":true,"confidence":0.98}',
     EngineResult("Hello there", True, 0.98)),
    ('{"type":"transcript","transcript":"Hello, this","is_final":false,"confidence":0.85}',
     EngineResult("Hello, this", False, 0.85)),
    ('{"transcript":"x","is_final":true,"confidence":null}', EngineResult("x", True, None)),
    ('{"transcript":"x","is_final":true,"start_time":1.5,"duration":0.5}',
     EngineResult("x", True, None, 1.5, 2.0)),
    ('{"transcript":"","is_final":true,"utterance_end":true}', None),
    ('{"errors":[{"code":"40002","title":"Unsupported format","detail":"d",'
     '"source":{"parameter":"input_format"}}]}', ServerError("40002", "Unsupported format", "d")),
    ('{"type":"error","error":"Invalid transcription_engine specified"}',
     ServerError("", "error", "Invalid transcription_engine specified")),
    ('{"type":"Metadata"}', None),
    ("not json", None),
])
def test_frames_are_classified_by_their_keys(text: str, frame: object) -> None:
    assert parse_server_frame(text) == frame
