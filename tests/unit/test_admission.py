"""The bookkeeping of who holds the bridge: waiting connections and live call ids."""

from __future__ import annotations

import pytest

from bridge.admission import MAX_STREAMS_PER_CALL_ID, ConnectionGate, LiveCalls, peer_key
from bridge.errors import CLOSE_POLICY_VIOLATION, CLOSE_TRY_AGAIN_LATER, PolicyRefusal


def test_the_gate_bounds_waiting_connections_overall_and_per_address() -> None:
    gate = ConnectionGate(limit=3, per_address=2)
    assert gate.admit("a") is None and gate.admit("a") is None
    assert gate.admit("a") == "pending_per_address"
    assert gate.admit("b") is None
    assert gate.admit("c") == "pending_full"
    gate.leave("a")
    assert gate.admit("c") is None and gate.pending == 3


def test_no_cap_per_address_behind_a_proxy() -> None:
    gate = ConnectionGate(limit=5, per_address=0)
    assert [gate.admit("lb") for _ in range(6)] == [None] * 5 + ["pending_full"]


def test_a_live_call_id_is_refused_to_a_second_stream() -> None:
    calls: LiveCalls[object] = LiveCalls(max_calls=10)
    victim, intruder = object(), object()
    assert calls.claim("CA1", victim) == "CA1"
    with pytest.raises(PolicyRefusal) as caught:
        calls.claim("CA1", intruder)
    assert caught.value.close_code == CLOSE_POLICY_VIOLATION
    calls.release("CA1", intruder)  # an intruder cannot free the victim's key
    assert calls.get("CA1") is victim
    calls.release("CA1", victim)
    assert calls.get("CA1") is None and calls.changed.is_set()


def test_separate_streams_get_their_own_keys_up_to_a_bound() -> None:
    calls: LiveCalls[object] = LiveCalls(max_calls=100, duplicates="separate")
    keys = [calls.claim("CA1", object()) for _ in range(MAX_STREAMS_PER_CALL_ID)]
    assert keys == ["CA1"] + [f"CA1~{n}" for n in range(2, MAX_STREAMS_PER_CALL_ID + 1)]
    with pytest.raises(PolicyRefusal):
        calls.claim("CA1", object())


def test_slots_are_counted_for_started_calls_only() -> None:
    calls: LiveCalls[object] = LiveCalls(max_calls=1)
    calls.claim("CA1", object())
    with pytest.raises(PolicyRefusal) as caught:
        calls.claim("CA2", object())
    assert caught.value.close_code == CLOSE_TRY_AGAIN_LATER


def test_a_stream_cannot_announce_the_id_of_a_stream_kept_apart() -> None:
    calls: LiveCalls[object] = LiveCalls(max_calls=10, duplicates="separate")
    with pytest.raises(PolicyRefusal):
        calls.claim("CA1~2", object())
    assert calls.claim("CA~x", object()) == "CA~x"  # only the suffix form is kept


def test_ipv6_peers_are_counted_by_their_64_and_mapped_ipv4_as_ipv4() -> None:
    assert peer_key("2001:db8:1:2:aaaa::1") == peer_key("2001:db8:1:2:bbbb::9")
    assert peer_key("2001:db8:1:3::1") != peer_key("2001:db8:1:2::1")
    assert peer_key("::ffff:192.0.2.7") == "192.0.2.7" == peer_key("192.0.2.7")
    assert peer_key(None) == "unknown"
