"""Talk analytics end to end: calls of known script through ``callbridge serve``, the figures
read from ``call.ended`` as the receiver got it and from the admin API's view of a live call.

Each leg speaks a voiced buzz (``tests.support.audio.pcm_voice``) at known times, which the
WebRTC detector takes for speech from its first 30 ms frame to its last and holds on for
about 120 ms after; the STT emulator says three words ("tone N hertz") per utterance. An edge
found by the detector is good to ``EDGE_MS``: a figure made of n edges, to n times that.
"""

from __future__ import annotations

import asyncio
import json
from importlib import resources
from typing import Any

import pytest

from bridge.events import AudioEncoding, Track
from bridge.simulate import CallSpec, build_call, stream_call
from tests.conftest import BridgeFactory, BridgeProcess, run_call
from tests.support.admin import TOKEN
from tests.support.audio import pcm_program, ulaw
from tests.support.receiver import WebhookReceiver

pytestmark = pytest.mark.e2e

EDGE_MS = 150

# Who speaks when (ms of stream time):
#   caller  500-2500 and 6000-7000
#   agent   2000-4000: it cuts in 1500 ms into the caller's speech (an interruption), and
#           both speak 2000-2500 (overtalk); nobody speaks 4000-6000 (the longest silence).
CALLER = pcm_program(("silence", 500), ("voice", 2000, 125), ("silence", 3500),
                     ("voice", 1000, 200), ("silence", 1500))
AGENT = pcm_program(("silence", 2000), ("voice", 2000, 160), ("silence", 4500))
CALL_MS = 8500


def near(actual: int, expected: int, edges: int) -> bool:
    return abs(actual - expected) <= edges * EDGE_MS


def ended_data(events: list[Any]) -> dict[str, Any]:
    ended = [e for e in events if e.type == "call.ended"]
    assert len(ended) == 1
    data: dict[str, Any] = ended[0].data
    return data


async def test_a_call_of_known_script_has_its_talk_overtalk_interruption_and_silence(
        bridge_factory: BridgeFactory, receiver: WebhookReceiver) -> None:
    # Sent as fast as the socket takes it: a buffer that holds the whole call lets every
    # utterance reach the engine however busy the machine is (the detector sees all the
    # audio whatever the engine gets).
    bridge = await bridge_factory(CALLBRIDGE_AUDIO_MAX_BUFFER_MS="60000")
    spec = CallSpec("twilio", AudioEncoding.PCMU,
                    {Track.INBOUND: ulaw(CALLER), Track.OUTBOUND: ulaw(AGENT)},
                    call_id="CA-talk", first_timestamp_ms=0)
    events = await run_call(bridge, receiver, spec)
    analytics = ended_data(events)["analytics"]
    caller, agent = analytics["legs"]["inbound"], analytics["legs"]["outbound"]

    assert caller["speaker"] == "caller" and agent["speaker"] == "agent"
    assert near(caller["talk_ms"], 3000, edges=2), caller
    assert near(agent["talk_ms"], 2000, edges=1), agent
    assert near(analytics["overtalk_ms"], 500, edges=1), analytics
    assert (agent["interruptions"], caller["interruptions"], analytics["interruptions"]) == (
        1, 0, 1)
    assert near(analytics["longest_silence_ms"], 2000, edges=1), analytics
    assert near(analytics["silence_ms"], 500 + 2000 + 1500, edges=3), analytics
    assert analytics["measured_ms"] == CALL_MS  # every millisecond of both legs was heard
    assert caller["talk_ratio"] + agent["talk_ratio"] == pytest.approx(1, abs=0.002)
    assert caller["talk_ratio"] == pytest.approx(
        caller["talk_ms"] / (caller["talk_ms"] + agent["talk_ms"]), abs=0.001)

    # Words come from the finals the legs' engine sessions gave: three per utterance.
    finals = {leg: sum(e.type == "transcript.final" and e.data["leg"] == leg for e in events)
              for leg in ("inbound", "outbound")}
    assert finals == {"inbound": 2, "outbound": 1}
    assert (caller["words"], agent["words"]) == (6, 3)
    assert caller["words_per_minute"] == round(6 * 60_000 / caller["talk_ms"], 1)
    assert agent["words_per_minute"] == round(3 * 60_000 / agent["talk_ms"], 1)
    assert analytics["vad"]["coarsened_ms"] == 0


async def test_the_shipped_conversation_takes_turns_without_overtalk(
        bridge: BridgeProcess, receiver: WebhookReceiver) -> None:
    """Real (synthesised) speech: each speaker's talk time is that of its turns, and turns
    half a second apart are neither overtalk nor interruptions."""
    sample = resources.files("bridge.samples").joinpath("support_call")
    reference = json.loads(sample.joinpath("reference.json").read_text())
    spec = CallSpec("twilio", AudioEncoding.PCMU,
                    {Track.INBOUND: sample.joinpath("caller.ulaw").read_bytes(),
                     Track.OUTBOUND: sample.joinpath("agent.ulaw").read_bytes()},
                    call_id="CA-talk-sample")
    analytics = ended_data(await run_call(bridge, receiver, spec))["analytics"]
    assert analytics["overtalk_ms"] == 0 and analytics["interruptions"] == 0
    for leg, speaker in (("inbound", "caller"), ("outbound", "agent")):
        turns = [t for t in reference["turns"] if t["speaker"] == speaker]
        # The reference turns end with the synthesiser's trailing silence: talk is shorter,
        # by less than one edge per turn.
        spoken = sum(t["end_ms"] - t["start_ms"] for t in turns)
        talk = analytics["legs"][leg]["talk_ms"]
        assert spoken - 2 * EDGE_MS * len(turns) <= talk <= spoken, (leg, talk, spoken)
    # Between turns the line is quiet for about half a second; never two seconds.
    assert 300 <= analytics["longest_silence_ms"] <= 1000


async def test_the_admin_view_shows_a_live_calls_figures(
        bridge_factory: BridgeFactory, receiver: WebhookReceiver) -> None:
    bridge = await bridge_factory(CALLBRIDGE_SERVER_ADMIN_TOKEN=TOKEN)
    # The caller speaks 500-2000 ms, then the line stays open, silent, for a while.
    caller = pcm_program(("silence", 500), ("voice", 1500, 125), ("silence", 20_000))
    agent = pcm_program(("silence", 21_500))
    spec = CallSpec("twilio", AudioEncoding.PCMU,
                    {Track.INBOUND: ulaw(caller), Track.OUTBOUND: ulaw(agent)},
                    call_id="CA-talk-live")
    call = asyncio.create_task(stream_call(bridge.url("/streams/twilio"), build_call(spec),
                                           speed=1))
    # The engine's final for the utterance comes once it has had the silence after it: the
    # detector has had that audio too (it sees a chunk before the engine does).
    await receiver.wait_for(lambda events: any(
        e.type == "transcript.final" and e.data["call_id"] == "CA-talk-live" for e in events))
    status, body = await bridge.http("GET", "/calls/CA-talk-live", TOKEN)
    assert status == 200, body
    live = json.loads(body)["analytics"]
    assert near(live["legs"]["inbound"]["talk_ms"], 1500, edges=2), live
    assert live["legs"]["inbound"]["words"] == 3
    assert live["legs"]["outbound"]["talk_ms"] == 0
    assert 2000 <= live["measured_ms"] < 21_500  # heard so far: the call is not over
    assert live["overtalk_ms"] == 0 and live["interruptions"] == 0

    status, _ = await bridge.http("POST", "/calls/CA-talk-live/end", TOKEN)
    assert status == 202
    await call
    await receiver.wait_for(receiver.ended("CA-talk-live"))
    final = ended_data(receiver.of_call("CA-talk-live"))["analytics"]
    assert final["legs"]["inbound"]["talk_ms"] == live["legs"]["inbound"]["talk_ms"]
    assert final["measured_ms"] >= live["measured_ms"]


async def test_switched_off_there_are_no_figures(bridge_factory: BridgeFactory,
                                                 receiver: WebhookReceiver) -> None:
    bridge = await bridge_factory(CALLBRIDGE_ANALYTICS_TALK="false",
                                  CALLBRIDGE_SERVER_ADMIN_TOKEN=TOKEN)
    spec = CallSpec("twilio", AudioEncoding.PCMU, {Track.INBOUND: ulaw(CALLER)},
                    call_id="CA-talk-off")
    data = ended_data(await run_call(bridge, receiver, spec))
    assert "analytics" not in data
    assert [leg["leg"] for leg in data["legs"]] == ["inbound"]  # the call itself as before
