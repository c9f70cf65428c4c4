"""Latency the bridge adds, on a real server: the per-stage histograms in ``/metrics`` and the
OpenTelemetry traces exported to an OTLP receiver."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from bridge.events import AudioEncoding, Track
from bridge.simulate import CallSpec, build_call, stream_call
from tests.conftest import BridgeFactory, BridgeProcess
from tests.e2e.test_startup import callbridge, environment
from tests.support.admin import TOKEN, start_call, token_for
from tests.support.audio import ulaw
from tests.support.deepgram import DeepgramEmulator
from tests.support.otlp import OtlpReceiver, ReceivedSpan
from tests.support.receiver import WebhookReceiver
from tests.support.speech import CALLER, CALLER_SAYS, SCRIPT, SECRETS, SPEECH
from tests.support.sse import read_events
from tests.support.telnyx_stt import TelnyxSttEmulator

pytestmark = pytest.mark.e2e

HISTOGRAM = "callbridge_stage_latency_seconds"
CHUNK_MS = 100  # chunk_ms's default


@pytest.fixture
async def otlp() -> AsyncIterator[OtlpReceiver]:
    async with OtlpReceiver() as receiver:
        yield receiver


async def stage_histograms(bridge: BridgeProcess) -> dict[str, dict[str, float]]:
    """Each stage's samples: ``count``, ``sum`` and one entry per bucket bound."""
    status, text = await bridge.http("GET", "/metrics")
    assert status == 200
    stages: dict[str, dict[str, float]] = {}
    for family in text_string_to_metric_families(text):
        if family.name != HISTOGRAM:
            continue
        for sample in family.samples:
            stage = stages.setdefault(sample.labels["stage"], {})
            if sample.name.endswith("_bucket"):
                stage[sample.labels["le"]] = sample.value
            else:
                stage[sample.name.rpartition("_")[2]] = sample.value
    return stages


async def test_each_stage_of_a_call_is_counted_in_the_latency_histogram(
        bridge_factory: BridgeFactory, stt: TelnyxSttEmulator,
        receiver: WebhookReceiver) -> None:
    stt.script = list(SCRIPT)
    bridge = await bridge_factory(CALLBRIDGE_SERVER_ADMIN_TOKEN=TOKEN,
                                  CALLBRIDGE_TELNYX_INTERIM_RESULTS="true")
    before = await stage_histograms(bridge)
    assert sorted(before) == ["final_to_webhook", "frame_to_upstream", "redaction_hold",
                              "result_to_viewer"]
    assert all(stage["count"] == 0 for stage in before.values())
    call = start_call(bridge, "CA-stages", {Track.INBOUND: ulaw(SPEECH)})
    await bridge.wait_for_log("call started", call_id="CA-stages")
    issued = await token_for(bridge, "CA-stages")
    shown = []
    async with aiohttp.ClientSession() as session, session.get(
            f"http://127.0.0.1:{bridge.port}{issued['events_url']}") as response:
        async with asyncio.timeout(30):
            async for event in read_events(response):
                if event.event.startswith("transcript."):
                    shown.append(event)
                if event.event == "call.ended":
                    break
    assert (await call).close_code == 1000
    await receiver.wait_for(receiver.ended("CA-stages"))
    summary = await bridge.wait_for_log("call summary", call_id="CA-stages")
    stages = await stage_histograms(bridge)

    # Every chunk the engine got was measured once: the leg's audio in chunk_ms pieces,
    # the last one short.
    audio_ms = summary["legs"]["inbound"]["audio_ms"]
    assert stages["frame_to_upstream"]["count"] == -(-audio_ms // CHUNK_MS)
    # Each final once through the redactor and once to the webhook, at its first attempt.
    finals = [e for e in receiver.of_call("CA-stages") if e.type == "transcript.final"]
    assert len(finals) == 3
    assert stages["redaction_hold"]["count"] == 3
    assert stages["final_to_webhook"]["count"] == 3
    # The first final ends where the card number goes on: it is held until the next final,
    # which needs at least another 500 ms of audio sent in real time, so its hold is not 0.
    assert stages["redaction_hold"]["0.00025"] < 3
    assert stages["redaction_hold"]["sum"] > 0
    # Each transcript event the viewer got live was measured once written (one seen in the
    # backlog on joining, if any, is history and is not).
    assert 1 <= stages["result_to_viewer"]["count"] <= len(shown)
    for stage in stages.values():  # cumulative buckets, ending at the count
        bounds = [v for k, v in stage.items() if k not in ("count", "sum", "created")]
        assert bounds == sorted(bounds) and bounds[-1] == stage["count"]


def digits_of(texts: list[str]) -> set[str]:
    return {run for text in texts for run in re.findall(r"\d+", text)}


async def test_a_traced_call_exports_its_leg_and_utterance_spans_without_its_words(
        bridge_factory: BridgeFactory, stt: TelnyxSttEmulator, receiver: WebhookReceiver,
        otlp: OtlpReceiver) -> None:
    # The spoken text: words that are numbers, and a digit sequence said as digits.
    stt.script = [*SCRIPT[:2], "seven three seven thanks 4242 9931"]
    bridge = await bridge_factory(OTEL_EXPORTER_OTLP_ENDPOINT=otlp.endpoint,
                                  OTEL_BSP_SCHEDULE_DELAY="100")
    spec = CallSpec("twilio", AudioEncoding.PCMU, {Track.INBOUND: ulaw(SPEECH)},
                    call_id="CA-traced")
    result = await stream_call(bridge.url("/streams/twilio"), build_call(spec), speed=1)
    assert result.close_code == 1000
    await receiver.wait_for(receiver.ended("CA-traced"))

    def complete(spans: list[ReceivedSpan]) -> bool:
        names = [s.name for s in spans]
        return names.count("callbridge.leg") == 1 and \
            names.count("callbridge.utterance") == 3 and \
            names.count("callbridge.webhook_delivery") == 3
    await otlp.wait_for(complete)
    spans = otlp.spans
    [leg] = [s for s in spans if s.name == "callbridge.leg"]
    assert leg.resource["service.name"] == "callbridge"
    assert leg.attributes == {"callbridge.call_id": "CA-traced", "callbridge.leg": "inbound",
                              "callbridge.engine": "telnyx", "callbridge.dialect": "twilio"}
    utterances = [s for s in spans if s.name == "callbridge.utterance"]
    for utterance in utterances:
        assert (utterance.trace_id, utterance.parent_span_id) == (leg.trace_id, leg.span_id)
        children = {s.name: s for s in spans if s.parent_span_id == utterance.span_id}
        # Telnyx gives no segment times, so no engine latency can be told apart for it.
        assert sorted(children) == ["callbridge.outbox_write", "callbridge.redaction_hold",
                                    "callbridge.webhook_delivery"]
        for child in children.values():
            assert child.trace_id == leg.trace_id
            assert utterance.start_ns <= child.start_ns <= child.end_ns <= utterance.end_ns
        delivery = children["callbridge.webhook_delivery"]
        assert delivery.attributes == {"http.response.status_code": 204,  # the receiver's
                                       "callbridge.webhook.attempts": 1}
    for span in spans:
        assert span.end_ns >= span.start_ns
    # Nothing said is in any attribute or event: not the words, not a digit sequence.
    said = [f.data["text"] for f in receiver.of_call("CA-traced")
            if f.type == "transcript.final"]
    spoken = [*SECRETS, "4242", "9931"]
    exported = [repr(s.attributes) + repr(s.events) for s in spans]
    for text in exported:
        assert not [secret for secret in spoken if secret in text], text
        assert not digits_of(said) & digits_of([text]) - {"204", "1"}, text


async def test_an_engine_that_gives_segment_times_adds_the_engine_latency_span(
        bridge_factory: BridgeFactory, deepgram: DeepgramEmulator, receiver: WebhookReceiver,
        otlp: OtlpReceiver) -> None:
    bridge = await bridge_factory(OTEL_EXPORTER_OTLP_ENDPOINT=otlp.endpoint,
                                  OTEL_BSP_SCHEDULE_DELAY="100",
                                  CALLBRIDGE_STT_ENGINE="deepgram",
                                  DEEPGRAM_API_KEY="test-deepgram-key",
                                  CALLBRIDGE_DEEPGRAM_URL=deepgram.url)
    spec = CallSpec("twilio", AudioEncoding.PCMU, {Track.INBOUND: ulaw(CALLER)},
                    call_id="CA-traced-dg")
    result = await stream_call(bridge.url("/streams/twilio"), build_call(spec), speed=1)
    assert result.close_code == 1000
    await receiver.wait_for(receiver.ended("CA-traced-dg"))
    await otlp.wait_for(lambda spans: sum(
        s.name == "callbridge.webhook_delivery" for s in spans) == len(CALLER_SAYS) and any(
        s.name == "callbridge.leg" for s in spans))
    [leg] = [s for s in otlp.spans if s.name == "callbridge.leg"]
    assert leg.attributes["callbridge.engine"] == "deepgram"
    utterances = {s.span_id: s for s in otlp.spans if s.name == "callbridge.utterance"}
    engine = [s for s in otlp.spans if s.name == "callbridge.engine_latency"]
    assert len(engine) == len(utterances) == len(CALLER_SAYS)
    for span in engine:
        utterance = utterances[span.parent_span_id]
        assert utterance.parent_span_id == leg.span_id
        # The utterance begins where its audio had been sent: the engine's time comes first.
        assert span.start_ns == utterance.start_ns <= span.end_ns


async def test_the_endpoint_set_without_the_extra_stops_the_start_in_one_line(
        stt: TelnyxSttEmulator, tmp_path: Path) -> None:
    # A machine without the otel extra: its packages cannot be imported.
    blocked = tmp_path / "without_otel" / "opentelemetry"
    blocked.mkdir(parents=True)
    (blocked / "__init__.py").write_text("raise ImportError('not installed')\n")
    status, out, err = await callbridge("serve", "--port", "0", env=environment(
        stt, tmp_path, PYTHONPATH=str(blocked.parent),
        OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:4318"))
    assert status == 2 and out == []
    assert err == ["callbridge: invalid setting OTEL_EXPORTER_OTLP_ENDPOINT: is set, but "
                   "tracing needs the OpenTelemetry packages: pip install 'callbridge[otel]' "
                   "(or unset it)"]
