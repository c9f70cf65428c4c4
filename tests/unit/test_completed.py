"""call.completed's data, built from plain data without an event loop; its lines in Redis."""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest

from bridge.artifacts.completed import completed_data, transcript_url
from bridge.artifacts.record import TranscriptRecord
from bridge.cluster.outbox import decode_call, encode_call
from bridge.compliance.redact import Redacted
from bridge.config import load_settings
from bridge.delivery.outbox import HeldFinal, LiveCall
from bridge.errors import ConfigError
from bridge.events import Track, TranscriptResult


def final(leg: str, sequence: int, start_ms: int, text: str, **more: Any) -> dict[str, Any]:
    """A published final's event data as the transcript record keeps it."""
    return {"leg": leg, "speaker": {"inbound": "caller", "outbound": "agent"}[leg],
            "sequence": sequence, "text": text, "is_final": True, "confidence": 0.9,
            "start_ms": start_ms, "end_ms": start_ms + 900, "redactions": [], **more}


FINALS = [final("inbound", 1, 0, "hello"), final("inbound", 2, 2000, "my card is [credit_card]"),
          final("outbound", 1, 1000, "how can I help", words=[{"text": "how"}]),
          final("outbound", 2, 2000, "go on")]
ENDED = {"reason": "stopped", "duration_ms": 5000, "legs": [{"leg": "inbound"}],
         "analytics": {"talk": {"caller_ms": 1800}}, "sentiment": {"caller": 0.1}}


def encoded_size(lines: list[dict[str, Any]]) -> int:
    """The transcript's size as the event body encodes it."""
    return len(json.dumps(lines, separators=(",", ":"), ensure_ascii=False).encode())


def test_the_transcript_is_both_legs_in_the_conversations_order_with_the_lines_fields() -> None:
    data = completed_data(FINALS, call_id="CA1", ended=ENDED, max_bytes=4096)
    assert data["transcript"] == [
        {"leg": "inbound", "speaker": "caller", "sequence": 1, "start_ms": 0, "end_ms": 900,
         "text": "hello"},
        {"leg": "outbound", "speaker": "agent", "sequence": 1, "start_ms": 1000,
         "end_ms": 1900, "text": "how can I help"},
        {"leg": "inbound", "speaker": "caller", "sequence": 2, "start_ms": 2000,
         "end_ms": 2900, "text": "my card is [credit_card]"},
        {"leg": "outbound", "speaker": "agent", "sequence": 2, "start_ms": 2000,
         "end_ms": 2900, "text": "go on"}]
    assert {k: v for k, v in data.items() if k != "transcript"} == {
        "reason": "stopped", "duration_ms": 5000, "transcript_lines": 4,
        "transcript_truncated": False, "transcript_url": None,
        "analytics": {"talk": {"caller_ms": 1800}, "sentiment": {"caller": 0.1}},
        "artifacts": [], "rebuilt": False}


def test_a_transcript_of_exactly_the_limit_is_whole_and_one_byte_less_truncates_it() -> None:
    whole = completed_data(FINALS, call_id="CA1", ended=ENDED, max_bytes=4096)["transcript"]
    size = encoded_size(whole)
    assert completed_data(FINALS, call_id="CA1", ended=ENDED,
                          max_bytes=size)["transcript_truncated"] is False
    cut = completed_data(FINALS, call_id="CA1", ended=ENDED, max_bytes=size - 1,
                         artifacts=["transcript.json", "transcript.vtt"])
    assert cut["transcript"] == whole[:3]  # the first lines that fit, in order
    assert cut["transcript_truncated"] is True and cut["transcript_lines"] == 4
    assert cut["transcript_url"] == "/calls/CA1/artifacts/transcript.json"
    assert cut["artifacts"] == ["transcript.json", "transcript.vtt"]


def test_past_the_limit_the_transcript_keeps_what_fits_and_never_more() -> None:
    many = [final("inbound", n, n * 1000, f"utterance number {n} " + "é" * 30)
            for n in range(1, 400)]
    for limit in (1024, 5000, 20_000):
        data = completed_data(many, call_id="CA1", ended=ENDED, max_bytes=limit)
        kept = data["transcript"]
        assert encoded_size(kept) <= limit < encoded_size(
            [*kept, completed_data(many, call_id="CA1", ended=ENDED,
                                   max_bytes=10**9)["transcript"][len(kept)]])
        assert [line["sequence"] for line in kept] == list(range(1, len(kept) + 1))
        # No stored transcript file named: nothing to link to.
        assert data["transcript_truncated"] is True and data["transcript_url"] is None


def test_finals_the_record_could_not_keep_mark_the_transcript_truncated() -> None:
    data = completed_data(FINALS, call_id="CA1", ended=ENDED, max_bytes=4096, dropped=2,
                          artifacts=["transcript.json"])
    assert len(data["transcript"]) == 4 and data["transcript_lines"] == 6
    assert data["transcript_truncated"] is True
    assert data["transcript_url"] == "/calls/CA1/artifacts/transcript.json"


def test_the_link_quotes_a_call_id_that_is_not_a_plain_path_segment() -> None:
    assert transcript_url("v=0/a b?c") == "/calls/v%3D0%2Fa%20b%3Fc/artifacts/transcript.json"


def test_a_rebuilt_transcript_takes_stored_lines_as_they_are() -> None:
    lines = [{"leg": "inbound", "speaker": "caller", "sequence": 2, "start_ms": 3000,
              "end_ms": 3500, "text": "my card is # # # #"},
             {"leg": "inbound", "speaker": "caller", "sequence": 1, "start_ms": 0,
              "end_ms": 900, "text": "hello"}]
    data = completed_data(lines, call_id="CA1", ended={"reason": "bridge_restart",
                                                        "duration_ms": None, "legs": []},
                          max_bytes=4096, rebuilt=True)
    assert [line["sequence"] for line in data["transcript"]] == [1, 2]
    assert data["rebuilt"] is True and data["analytics"] == {}


def test_a_call_in_redis_keeps_its_lines_and_one_an_older_version_wrote_reads_without() -> None:
    line = {"leg": "inbound", "speaker": "caller", "sequence": 1, "start_ms": 0,
            "end_ms": 900, "text": "hello"}
    held_line = {**line, "sequence": 2, "text": "my card is # #"}
    call = LiveCall("CA1", {"call_id": "CA1"}, ("default",), [], (
        HeldFinal("inbound", "msg_2", b"{}", ("default",), "caller", "my card is # #",
                  held_line),), (line,))
    assert decode_call(encode_call(call)) == call
    older = orjson.loads(encode_call(call))
    del older["lines"]
    del older["held"][0]["line"]
    read = decode_call(orjson.dumps(older))
    assert read.lines == () and read.held[0].line is None


def test_call_completed_is_on_by_default_and_its_limit_is_checked_by_name() -> None:
    settings = load_settings(environ={}).artifacts
    assert (settings.completed, settings.completed_max_bytes) == (True, 262144)
    off = load_settings(environ={"CALLBRIDGE_ARTIFACTS_COMPLETED": "false"}).artifacts
    assert off.completed is False
    with pytest.raises(ConfigError) as caught:
        load_settings(environ={"CALLBRIDGE_ARTIFACTS_COMPLETED_MAX_BYTES": "100"})
    assert caught.value.setting == "CALLBRIDGE_ARTIFACTS_COMPLETED_MAX_BYTES"


def test_a_record_for_call_completed_alone_keeps_each_final_without_its_word_times() -> None:
    # Word times are most of a final's weight, and only the transcript files show them.
    fields = {"sequence": 1, "text": "hello there", "is_final": True, "confidence": 0.9,
              "start_ms": 0, "end_ms": 900, "redactions": [],
              "words": [{"text": "hello", "start_ms": 0, "end_ms": 400, "confidence": 0.9},
                        {"text": "there", "start_ms": 500, "end_ms": 900, "confidence": 0.9}]}
    result = TranscriptResult("hello there", True, 0.9, 0, 900)
    lean = TranscriptRecord({Track.INBOUND: "caller"}, keep_words=False)
    whole = TranscriptRecord({Track.INBOUND: "caller"})
    for record in (lean, whole):
        record.final(Track.INBOUND, result, Redacted("hello there"), fields)
    assert lean.finals == [{"leg": "inbound", "speaker": "caller",
                            **{k: v for k, v in fields.items() if k != "words"}}]
    assert whole.finals[0]["words"] == fields["words"]
