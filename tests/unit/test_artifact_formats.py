"""The transcript files, read back with real parsers: webvtt-py for WebVTT, JSON, SRT blocks."""

from __future__ import annotations

import html
import io
import json
import re
from typing import Any

import webvtt

from bridge.artifacts.formats import (
    TRANSCRIPT_FILES,
    plain_text,
    srt,
    srt_time,
    transcript_files,
    transcript_json,
    vtt_time,
)
from bridge.artifacts.formats import webvtt as to_webvtt

CALL = {"call_id": "CA-1", "stream_id": "MZ-1", "provider": "twilio",
        "custom_parameters": {"queue": "billing"}, "reason": "stopped", "duration_ms": 9000}


def utterance(leg: str, speaker: str, sequence: int, start_ms: int, end_ms: int, text: str,
              **extra: Any) -> dict[str, Any]:
    return {"leg": leg, "speaker": speaker, "sequence": sequence, "start_ms": start_ms,
            "end_ms": end_ms, "text": text, "is_final": True, "confidence": 0.9,
            "redactions": [], **extra}


CONVERSATION = [
    utterance("inbound", "caller", 1, 200, 1500, "my card is [credit_card] & <b>that</b>",
              redactions=[{"type": "credit_card", "count": 1}]),
    utterance("outbound", "agent", 1, 1700, 2600, "thanks,\nnoted --> done",
              words=[{"text": "thanks", "start_ms": 1700, "end_ms": 2000, "confidence": 0.8}]),
    utterance("inbound", "caller", 2, 3_723_004, 3_724_000, "bye"),
]


def test_webvtt_parses_with_a_real_parser_with_voices_times_and_escaped_text() -> None:
    text = to_webvtt(CONVERSATION).decode()
    captions = webvtt.from_buffer(io.StringIO(text)).captions
    assert [c.voice for c in captions] == ["Caller", "Agent", "Caller"]
    assert [(c.start, c.end) for c in captions] == [
        ("00:00:00.200", "00:00:01.500"), ("00:00:01.700", "00:00:02.600"),
        ("01:02:03.004", "01:02:04.000")]
    assert [html.unescape(c.text) for c in captions] == [
        "my card is [credit_card] & <b>that</b>", "thanks, noted --> done", "bye"]
    # the markup-like text never reaches the file as markup, nor a cue-ending arrow
    assert "<b>" not in text and "&amp;" in text and "noted --&gt; done" in text


def test_srt_blocks_are_numbered_with_comma_times_and_speakers() -> None:
    blocks = srt(CONVERSATION).decode().split("\n\n")
    assert len(blocks) == 3
    for number, block in enumerate(blocks, start=1):
        index, times, _ = block.strip("\n").split("\n")
        assert index == str(number)
        assert re.fullmatch(r"\d\d:\d\d:\d\d,\d{3} --> \d\d:\d\d:\d\d,\d{3}", times)
    assert blocks[1].split("\n")[2] == "Agent: thanks, noted --> done"
    assert blocks[2].split("\n")[1] == "01:02:03,004 --> 01:02:04,000"


def test_plain_text_is_one_speaker_line_per_utterance() -> None:
    assert plain_text(CONVERSATION).decode().splitlines() == [
        "Caller: my card is [credit_card] & <b>that</b>", "Agent: thanks, noted --> done",
        "Caller: bye"]


def test_json_keeps_each_final_with_its_details_and_the_call() -> None:
    document = json.loads(transcript_json(CONVERSATION, CALL))
    assert document["call_id"] == "CA-1" and document["custom_parameters"] == {
        "queue": "billing"}
    first, second, _ = document["utterances"]
    assert first == {"leg": "inbound", "speaker": "caller", "sequence": 1, "start_ms": 200,
                     "end_ms": 1500, "text": "my card is [credit_card] & <b>that</b>",
                     "confidence": 0.9, "redactions": [{"type": "credit_card", "count": 1}]}
    assert second["words"] == [{"text": "thanks", "start_ms": 1700, "end_ms": 2000,
                                "confidence": 0.8}]
    assert second["text"] == "thanks,\nnoted --> done"  # JSON keeps the text as published


def test_every_file_is_made_and_typed() -> None:
    files = transcript_files(CONVERSATION, CALL)
    assert set(files) == set(TRANSCRIPT_FILES)
    assert all(isinstance(body, bytes) and body for body in files.values())


def test_an_empty_call_still_gives_valid_files() -> None:
    assert webvtt.from_buffer(io.StringIO(to_webvtt([]).decode())).captions == []
    assert srt([]) == b"" and plain_text([]) == b""
    assert json.loads(transcript_json([], CALL))["utterances"] == []


def test_times_clamp_and_a_cue_never_ends_before_it_starts() -> None:
    assert vtt_time(-5) == "00:00:00.000" and srt_time(61_001) == "00:01:01,001"
    assert vtt_time(100 * 3_600_000) == "100:00:00.000"
    backwards = [utterance("inbound", "", 1, 900, 400, "x")]
    [caption] = webvtt.from_buffer(io.StringIO(to_webvtt(backwards).decode())).captions
    assert (caption.start, caption.end, caption.voice) == ("00:00:00.900", "00:00:00.900",
                                                           "Inbound")
