"""Engines' frames of the wrong shape or with unbounded numbers: read as no result, or as a
result without times, never as an exception that ends the leg."""

from __future__ import annotations

import json
from typing import Any

import pytest

from bridge.stt.assemblyai import TurnReader
from bridge.stt.deepgram import UtteranceJoiner
from bridge.stt.telnyx import ServerError, parse_server_frame

DEEP = '{"a":' * 1000 + '"x"' + "}" * 1000


@pytest.mark.parametrize("message", [
    {"channel": [1, 2], "is_final": True},
    {"channel": {"alternatives": "text"}, "is_final": True},
    {"channel": {"alternatives": []}, "is_final": True},
    {"channel": {"alternatives": [{"transcript": {"x": 1}}]}, "is_final": True},
    {"channel": {"alternatives": [{"transcript": "hi", "words": "no"}]}, "start": "abc",
     "duration": 1e308, "is_final": True, "speech_final": True},
    {"channel": {"alternatives": [{"transcript": "hi", "confidence": "high", "words": [
        {"word": {"x": 1}, "start": 1e300, "end": -1}, {"word": "hi", "start": 0.1,
                                                          "end": 0.4}]}]},
     "is_final": True, "speech_final": True},
])
def test_deepgram_frames_of_any_shape(message: dict[str, Any]) -> None:
    result = UtteranceJoiner().take(message)
    if result is not None:
        assert result.text == "hi"
        assert all(0 <= w.start_s <= w.end_s < 1e6 for w in result.words)


@pytest.mark.parametrize("message", [
    {"type": "Turn", "turn_order": {"x": 1}, "end_of_turn": True, "turn_is_formatted": True,
     "transcript": "hi", "words": [{"text": "hi", "start": 10**30, "end": "x"}]},
    {"type": "Turn", "turn_order": [1], "end_of_turn": True, "turn_is_formatted": True,
     "transcript": ["hi"], "words": {"a": 1}},
])
def test_assemblyai_turns_of_any_shape(message: dict[str, Any]) -> None:
    result = TurnReader(formatted=True).take(message)
    assert result is None or (result.words == () and result.start_s is None)


@pytest.mark.parametrize("text", [
    '{"transcript": "hi", "is_final": true, "start_time": NaN, "duration": 1}',
    '{"transcript": "hi", "is_final": true, "start_time": 1' + "0" * 400 + ', "duration": 1}',
    json.dumps({"transcript": "hi", "is_final": True, "start_time": "1", "duration": 1e308}),
    '{"errors": [' + DEEP + "]}",
    '{"type": "error", "error": {"code": 40001, "title": "' + "t" * 10_000 + '"}}',
])
def test_telnyx_frames_of_any_shape(text: str) -> None:
    frame = parse_server_frame(text)
    if isinstance(frame, ServerError):
        assert len(frame.title) <= 200 and len(frame.detail) <= 200
    elif frame is not None:
        assert frame.text == "hi" and frame.start_s is None
