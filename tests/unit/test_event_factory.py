"""The event factory: an outgoing event's id, timestamp and body, made once."""

from __future__ import annotations

import json
import re

from bridge.events import EventType, make_event


def test_the_body_is_the_compact_webhook_json_of_type_timestamp_and_data() -> None:
    data = {"call_id": "CA1", "leg": "inbound", "text": "grüße 100 €", "sequence": 3}
    event = make_event(EventType.TRANSCRIPT_FINAL, data, call_id="CA1", leg="inbound",
                       targets=("default",))
    assert json.loads(event.body) == {"type": "transcript.final",
                                      "timestamp": event.timestamp, "data": data}
    assert b", " not in event.body and b'": ' not in event.body  # compact separators
    assert "grüße 100 €".encode() in event.body  # UTF-8, not \\u escapes
    assert (event.call_id, event.leg, event.targets) == ("CA1", "inbound", ("default",))


def test_each_event_gets_its_own_id_and_a_utc_millisecond_timestamp() -> None:
    first, second = (make_event(EventType.CALL_STARTED, {}, call_id="CA1") for _ in range(2))
    assert first.id != second.id
    assert re.fullmatch(r"msg_[0-9a-f]{32}", first.id)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", first.timestamp)
