"""The outbox's records in Redis: what the mirror writes reads back; anything else is refused."""

from __future__ import annotations

import pytest

from bridge.cluster.outbox import (
    decode_call,
    decode_event,
    decode_targets,
    encode_call,
    encode_event,
    encode_target,
)
from bridge.delivery.outbox import HeldFinal, LiveCall, StoredEvent
from bridge.events import EventType


def test_an_event_reads_back_as_written() -> None:
    event = StoredEvent("msg_1", EventType.TRANSCRIPT_FINAL, "CA1", "inbound",
                        '{"text":"héllo"}'.encode(), ("default", "call-0123"))
    assert decode_event(encode_event(event)) == event


def test_a_call_reads_back_with_its_held_finals() -> None:
    call = LiveCall("CA1", {"call_id": "CA1", "stream_id": "S"}, ("default",),
                    [{"leg": "inbound", "speaker": "caller", "text": "hi", "transcripts": 1}],
                    (HeldFinal("inbound", "msg_2", b'{"text":"#### "}', ("default",),
                               "caller", "####"),))
    assert decode_call(encode_call(call)) == call


@pytest.mark.parametrize("raw", [
    b"", b"[]", b"not json", b'{"id": 1}',
    b'{"id":"m","type":"transcript.final","call_id":"C","leg":null,"targets":"t","body":""}',
    b'{"id":"m","type":"nonsense","call_id":"C","leg":null,"targets":[],"body":""}',
    b'{"id":"m","type":"call.ended","call_id":["C"],"leg":null,"targets":[],"body":""}',
])
def test_an_event_record_not_ours_is_refused(raw: bytes) -> None:
    with pytest.raises((ValueError, KeyError, TypeError)):
        decode_event(raw)


@pytest.mark.parametrize("raw", [
    b"{}", b'{"call_id":"C","started":[],"targets":[],"legs":[],"held":[]}',
    b'{"call_id":"C","started":{},"targets":[],"legs":{},"held":[]}',
    b'{"call_id":"C","started":{},"targets":[],"legs":[],"held":[{"leg":1}]}',
])
def test_a_call_record_not_ours_is_refused(raw: bytes) -> None:
    with pytest.raises((ValueError, KeyError, TypeError)):
        decode_call(raw)


def test_targets_that_do_not_decode_are_left_out() -> None:
    assert decode_targets({b"default": encode_target("https://h/x", "HOOKS_SECRET"),
                           b"junk": b"{", b"half": b'{"url": "u"}'}) == {
        "default": ("https://h/x", "HOOKS_SECRET")}
