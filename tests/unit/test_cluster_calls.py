"""The messages instances exchange about calls, read as hostile input; no Redis, no loop."""

from __future__ import annotations

import contextlib
import json
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.admission import LiveCalls
from bridge.cluster.calls import (
    MAX_COMMAND_AGE_S,
    MAX_COMMAND_BYTES,
    Reply,
    command_key,
    new_command,
    parse_command,
    parse_reply,
    parse_summary,
)
from bridge.cluster.connection import Keys
from bridge.errors import ClusterMessageInvalid
from bridge.web.admin import _member_view

KEY = command_key("the-cluster-admin-token-0123")
NOW = 1_796_000_000.0


SIGNED: dict[str, Any] = json.loads(
    new_command("pause", "CA1", "inbound", sender="b", target="a", now=NOW).encode(KEY))


def _signed(**changes: Any) -> bytes:
    """A valid command's message with some fields changed after signing."""
    return json.dumps({**SIGNED, **changes}).encode()


def test_a_command_survives_the_round_trip() -> None:
    sent = new_command("end", "CA1~2", None, sender="pod-7.example", target="a", now=NOW)
    received = parse_command(sent.encode(KEY), KEY, receiver="a", now=NOW + 3)
    assert received == sent
    assert len(received.request_id) == 32
    again = new_command("end", "CA1", None, sender="b", target="a", now=NOW)
    assert again.request_id != sent.request_id


@pytest.mark.parametrize(("raw", "complaint"), [
    (b"", "not JSON"),
    (b"\xff\xfe", "not JSON"),
    (b"[1, 2]", "not a JSON object"),
    (b"x" * (MAX_COMMAND_BYTES + 1), "larger than"),
    (12, "not text"),
    (None, "not text"),
    (_signed(v=1), "'v'"),
    (_signed(request="../../other-key"), "'request'"),
    (_signed(request="A" * 32), "'request'"),
    (_signed(action="delete"), "'action'"),
    (_signed(action=["end"]), "'action'"),
    (_signed(leg="both"), "'leg'"),
    (_signed(leg=7), "'leg'"),
    (_signed(leg={"a": 1}), "'leg'"),
    (_signed(call=""), "'call'"),
    (_signed(call="a\nb"), "'call'"),
    (_signed(call="C" * 300), "'call'"),
    (_signed(call=None), "'call'"),
    (_signed(**{"from": "bad id/with slash"}), "'from'"),
    (_signed(to="c"), "'to'"),  # signed for another instance, republished on this one
    (_signed(to=None), "'to'"),
    (_signed(at="now"), "'at'"),
    (_signed(at=True), "'at'"),
    (_signed(at=int(NOW) - MAX_COMMAND_AGE_S - 5), "'at'"),
    (_signed(at=int(NOW) + MAX_COMMAND_AGE_S + 5), "'at'"),
    (_signed(sig="AAAA"), "signature"),
    (_signed(sig=None), "signature"),
    (_signed(call="CA2"), "signature"),  # a field changed after signing
    (b'{"v": 2}', "'request' is missing"),
])
def test_a_command_that_is_not_one_is_refused_with_the_field_named(raw: object,
                                                                   complaint: str) -> None:
    with pytest.raises(ClusterMessageInvalid, match=complaint) as refused:
        parse_command(raw, KEY, receiver="a", now=NOW)
    assert "../../" not in str(refused.value) and "CCCC" not in str(refused.value)


def test_a_command_signed_with_another_admin_token_is_refused() -> None:
    other = new_command("end", "CA1", None, sender="b", target="a", now=NOW)
    with pytest.raises(ClusterMessageInvalid, match="signature"):
        parse_command(other.encode(command_key("another-admin-token-456789")), KEY,
                      receiver="a", now=NOW)


def test_a_command_signed_for_another_instance_is_refused_even_re_addressed() -> None:
    for_c = new_command("end", "CA1", None, sender="b", target="c", now=NOW)
    assert parse_command(for_c.encode(KEY), KEY, receiver="c", now=NOW) == for_c
    with pytest.raises(ClusterMessageInvalid, match="'to'"):
        parse_command(for_c.encode(KEY), KEY, receiver="a", now=NOW)
    re_addressed = json.dumps({**json.loads(for_c.encode(KEY)), "to": "a"}).encode()
    with pytest.raises(ClusterMessageInvalid, match="signature"):
        parse_command(re_addressed, KEY, receiver="a", now=NOW)


def test_a_request_id_is_remembered_as_long_as_its_command_is_accepted() -> None:
    sent = new_command("end", "CA1", None, sender="b", target="a", now=NOW)
    assert sent.remember_until(NOW) == int(NOW) + MAX_COMMAND_AGE_S + 1
    # The sender's clock is a minute ahead: accepted until NOW + 120, remembered past that.
    ahead = new_command("end", "CA1", None, sender="b", target="a", now=NOW + MAX_COMMAND_AGE_S)
    parse_command(ahead.encode(KEY), KEY, receiver="a", now=NOW)
    last_accepted = NOW + 2 * MAX_COMMAND_AGE_S
    parse_command(ahead.encode(KEY), KEY, receiver="a", now=last_accepted)
    assert ahead.remember_until(NOW) > last_accepted


def test_replies_are_checked() -> None:
    reply = Reply(202, {"call_id": "CA1", "ending": True})
    request = "0" * 32
    assert parse_reply(reply.encode(KEY, request), KEY, request_id=request) == reply
    for raw in (b"{}", b'{"status": "200", "body": {}}', b'{"status": 99, "body": {}}',
                b'{"status": true, "body": {}}', b'{"status": 200, "body": []}',
                b'{"status": 200}', b"nope", b"[]", b"x" * 300_000):
        with pytest.raises(ClusterMessageInvalid):
            parse_reply(raw, KEY, request_id=request)


def test_a_reply_not_signed_by_the_owner_for_this_request_is_refused() -> None:
    request = "0" * 32
    reply = Reply(202, {"call_id": "CA1", "ending": True})
    forged = [
        # What a Redis writer without the admin token would push.
        orjson.dumps({"status": 202, "body": orjson.dumps(reply.body).decode()}),
        reply.encode(command_key("another-admin-token-456789"), request),
        reply.encode(KEY, "1" * 32),  # the owner's reply to another request
        orjson.dumps({**orjson.loads(reply.encode(KEY, request)), "status": 200}),
        orjson.dumps({**orjson.loads(reply.encode(KEY, request)), "body": '{"ok": 1}'}),
    ]
    for raw in forged:
        with pytest.raises(ClusterMessageInvalid, match=r"'sig'|signature"):
            parse_reply(raw, KEY, request_id=request)


def test_a_summary_gets_its_instance_from_the_hash_and_its_duration_from_now() -> None:
    raw = orjson.dumps({"call_id": "CA1", "instance": "liar", "opened_at": NOW - 12.34,
                        "duration_s": 0.0, "legs": {}})
    summary = parse_summary(raw, instance="a", now=NOW)
    assert summary == {"call_id": "CA1", "instance": "a", "duration_s": 12.3, "legs": {}}
    for garbage in (b"nope", b"[]", b'{"call_id": 5}', b'{"legs": {}}', b"x" * 20_000, 3):
        assert parse_summary(garbage, instance="a", now=NOW) is None


def test_a_member_is_shown_from_its_heartbeat_and_wrong_kinds_are_null() -> None:
    alive = {"instance": "a", "alive": True, "heartbeat_ms": NOW * 1000 - 1500, "calls": 5,
             "max_calls": 20, "draining": False, "version": "1.2"}
    view = _member_view(alive, NOW * 1000)
    assert view == {"instance": "a", "alive": True, "heartbeat_age_s": 1.5, "calls": 5,
                    "max_calls": 20, "load": 0.25, "draining": False,
                    "accepting_calls": True, "version": "1.2"}
    assert _member_view({**alive, "draining": True}, NOW * 1000)["accepting_calls"] is False
    assert _member_view({**alive, "calls": 20}, NOW * 1000)["accepting_calls"] is False
    hostile = _member_view({**alive, "calls": "lots", "max_calls": 0, "draining": "no",
                            "version": 3}, NOW * 1000)
    assert hostile["calls"] is None and hostile["load"] is None
    assert hostile["draining"] is None and hostile["accepting_calls"] is False
    assert "engine_sessions" not in hostile
    assert "version" not in hostile
    lost = _member_view({"instance": "c", "alive": False, "heartbeat_ms": NOW * 1000 - 60_000},
                        NOW * 1000)
    assert lost["alive"] is False and lost["heartbeat_age_s"] == 60.0
    assert lost["calls"] is None and lost["accepting_calls"] is False


def test_a_member_s_engine_sessions_are_shown_only_as_names_and_counts() -> None:
    state = {"instance": "a", "alive": True, "heartbeat_ms": NOW * 1000, "calls": 1,
             "max_calls": 2, "draining": False,
             "engine_sessions": {"deepgram": 3, "x" * 41: 1, "telnyx": -1, "assemblyai": True,
                                 **{f"e{i}": i for i in range(40)}}}
    shown = _member_view(state, NOW * 1000)["engine_sessions"]
    assert shown["deepgram"] == 3 and len(shown) <= 16
    assert not {"x" * 41, "telnyx", "assemblyai"} & set(shown)
    assert "engine_sessions" not in _member_view({**state, "engine_sessions": [1]}, NOW * 1000)
    assert "engine_sessions" not in _member_view({**state, "alive": False}, NOW * 1000)


def test_each_instance_has_its_own_calls_hash() -> None:
    keys = Keys("cb")
    assert keys.calls("a") == "cb:calls:a" != keys.calls("b")


def test_live_calls_say_when_a_call_comes_and_goes() -> None:
    calls: LiveCalls[object] = LiveCalls(max_calls=2)
    call = object()
    key = calls.claim("CA1", call)
    assert calls.updated.is_set() and not calls.changed.is_set()
    calls.updated.clear()
    calls.release(key, object())  # not the holder: nothing changes
    assert not calls.updated.is_set()
    calls.release(key, call)
    assert calls.updated.is_set() and calls.changed.is_set()


_JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                 max_size=4),
    max_leaves=12)


@settings(max_examples=300, deadline=None)
@given(field=st.sampled_from(["v", "request", "action", "call", "leg", "from", "to", "at",
                              "sig"]),
       value=_JSON_VALUES)
def test_any_value_in_any_field_is_refused_or_read_never_raised(field: str, value: Any) -> None:
    try:
        parse_command(_signed(**{field: value}), KEY, receiver="a", now=NOW)
    except ClusterMessageInvalid:
        return
    assert value == SIGNED[field]  # only what was signed is read


@settings(max_examples=200, deadline=None)
@given(raw=st.binary(max_size=300) | _JSON_VALUES.map(lambda v: json.dumps(v).encode()))
def test_any_bytes_are_refused_or_read_never_raised(raw: bytes) -> None:
    with pytest.raises(ClusterMessageInvalid):  # no signature in there
        parse_command(raw, KEY, receiver="a", now=NOW)
    with contextlib.suppress(ClusterMessageInvalid):
        reply = parse_reply(raw, KEY, request_id="0" * 32)
        assert 200 <= reply.status <= 599 and isinstance(reply.body, dict)
    assert parse_summary(raw, instance="a", now=NOW) is None or b"call_id" in raw
