"""Stage latencies without a server: the tallies, the finals' times between the redactor and
the webhook, the chunks' ready times in a leg's buffer, and the traces built from them."""

from __future__ import annotations

import sys
import threading

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from bridge.errors import ConfigError
from bridge.stages import MAX_TRACKED, STAGE_BUCKETS, Stages, StageTally, Timing
from bridge.tracing import Tracing, tracing_from_environment
from tests.unit.test_leg_audio import FRAME, feed, leg


def test_a_tally_counts_each_value_in_the_first_bucket_that_holds_it() -> None:
    tally = StageTally()
    for value in (0.0001, 0.00025, 0.0003, 0.02, 11.0):
        tally.observe(value)
    buckets = dict(tally.buckets())
    assert buckets["0.00025"] == 2  # a bound holds the values equal to it (le)
    assert buckets["0.0005"] == 3
    assert buckets["0.02"] == 4 and buckets["10.0"] == 4
    assert buckets["+Inf"] == tally.count == 5
    assert tally.total == pytest.approx(11.02065)
    assert len(buckets) == len(STAGE_BUCKETS) + 1


def test_the_collector_gives_one_histogram_with_every_stage() -> None:
    stages = Stages()
    stages.frame_to_upstream.observe(0.001)
    [family] = stages.collect()
    assert family.name == "callbridge_stage_latency_seconds"
    counts = {s.labels["stage"]: s.value for s in family.samples if s.name.endswith("_count")}
    assert counts == {"frame_to_upstream": 1, "final_to_webhook": 0, "redaction_hold": 0,
                      "result_to_viewer": 0}


def test_a_final_is_measured_from_its_release_to_its_first_attempt_only() -> None:
    stages = Stages()
    timing = Timing(10.0)
    timing.released_at = 12.0  # held two seconds by the redactor: not part of this stage
    stages.track("msg_1", timing)
    stages.stored("msg_1", 12.001)
    stages.posting("msg_1", 12.004)
    stages.posting("msg_1", 15.0)  # a retry
    assert stages.final_to_webhook.count == 1
    assert stages.final_to_webhook.total == pytest.approx(0.004)
    assert (timing.stored_at, timing.posted_at, timing.attempts) == (12.001, 12.004, 2)
    stages.settled("msg_1", 15.1, 200)
    assert timing.status == 200
    stages.posting("msg_1", 16.0)  # no longer tracked: nothing happens
    assert stages.final_to_webhook.count == 1


def test_finals_waiting_for_delivery_are_bounded_oldest_forgotten() -> None:
    stages = Stages()
    for n in range(MAX_TRACKED + 1):
        timing = Timing(0.0)
        timing.released_at = 0.0
        stages.track(f"msg_{n}", timing)
    stages.posting("msg_0", 1.0)
    assert stages.final_to_webhook.count == 0
    stages.posting(f"msg_{MAX_TRACKED}", 1.0)
    assert stages.final_to_webhook.count == 1


def test_each_chunk_sent_gives_back_the_time_it_became_ready() -> None:
    audio = leg()
    feed(audio, 0, 5)
    audio.stamp_ready(1.0)
    feed(audio, 100, 10)
    audio.stamp_ready(2.0)  # two chunks completed by one push... or by several: one stamp
    ready = []
    for chunk in audio.ready_chunks():
        ready.append(audio.sent(chunk))
    assert ready == [1.0, 2.0, 2.0]


def test_ready_times_stay_with_their_chunks_when_the_oldest_are_dropped() -> None:
    audio = leg(max_buffer_ms=200)
    for n in range(4):
        feed(audio, 100 * n, 5, byte=n + 1)
        audio.stamp_ready(float(n))
    assert audio.counters.chunks_dropped == 2
    chunk = audio.ready_chunks()[0]
    assert chunk.data[0] == 3  # the third chunk, stamped 2.0
    assert audio.sent(chunk) == 2.0


def test_a_chunk_never_stamped_is_not_measured() -> None:
    audio = leg()
    audio.push(b"\x01" * FRAME * 5, 0)
    [chunk] = audio.ready_chunks()
    assert audio.sent(chunk) is None


def traced() -> tuple[Tracing, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return Tracing(provider), exporter


def test_an_utterance_with_engine_times_and_a_retry_has_every_child_span() -> None:
    tracing, exporter = traced()
    leg_span = tracing.leg_span(call_id="CA1", leg="inbound", engine="deepgram",
                                dialect="twilio")
    stages = Stages(tracing)
    timing = Timing(100.0, engine_s=0.3, parent=leg_span)
    timing.released_at = 100.5
    stages.track("msg_1", timing)
    stages.stored("msg_1", 100.502)
    stages.posting("msg_1", 100.503)
    stages.posting("msg_1", 101.5)
    stages.settled("msg_1", 101.6, 200)
    leg_span.end()
    spans: dict[str, ReadableSpan] = {s.name: s for s in exporter.get_finished_spans()}
    utterance = spans["callbridge.utterance"]
    assert utterance.parent is not None
    assert utterance.parent.span_id == leg_span.get_span_context().span_id
    durations = {name: ((s.end_time or 0) - (s.start_time or 0)) / 1e9
                 for name, s in spans.items() if name != "callbridge.leg"}
    assert durations == pytest.approx({
        "callbridge.utterance": 1.9, "callbridge.engine_latency": 0.3,
        "callbridge.redaction_hold": 0.5, "callbridge.outbox_write": 0.002,
        "callbridge.webhook_delivery": 1.097}, abs=1e-6)
    assert utterance.context is not None
    for name in durations:
        parent = spans[name].parent
        if name != "callbridge.utterance":
            assert parent is not None and parent.span_id == utterance.context.span_id
    assert dict(spans["callbridge.webhook_delivery"].attributes or {}) == {
        "http.response.status_code": 200, "callbridge.webhook.attempts": 2}


def test_tracing_is_off_without_the_endpoint_variable() -> None:
    assert tracing_from_environment({}) is None
    assert tracing_from_environment({"OTEL_EXPORTER_OTLP_ENDPOINT": ""}) is None


def test_the_endpoint_without_the_extra_stops_the_start_naming_both(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # As if opentelemetry-sdk were not installed: importing it fails.
    monkeypatch.setitem(sys.modules, "opentelemetry.sdk.trace", None)
    with pytest.raises(ConfigError) as raised:
        tracing_from_environment({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"})
    assert "OTEL_EXPORTER_OTLP_ENDPOINT" in str(raised.value)
    assert "callbridge[otel]" in str(raised.value)


def test_a_tracer_made_from_the_environment_names_the_service() -> None:
    tracing = tracing_from_environment({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9"})
    assert tracing is not None
    try:
        span = tracing.leg_span(call_id="CA1", leg="inbound", engine="telnyx", dialect="twilio")
        assert isinstance(span, trace.Span)
        resource = getattr(span, "resource", None)
        assert resource is not None and resource.attributes["service.name"] == "callbridge"
    finally:
        tracing.shutdown()  # the span never ended: nothing is exported to the closed port


@pytest.mark.parametrize(("variable", "value"), [
    ("OTEL_SERVICE_NAME", "cc-bridge"),
    ("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment=prod,service.name=cc-bridge"),
])
def test_the_standard_variables_rename_the_service(
        monkeypatch: pytest.MonkeyPatch, variable: str, value: str) -> None:
    # Two deployments sending to one collector tell themselves apart this way.
    monkeypatch.setenv(variable, value)
    tracing = tracing_from_environment({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9"})
    assert tracing is not None
    try:
        span = tracing.leg_span(call_id="CA1", leg="inbound", engine="telnyx", dialect="twilio")
        resource = getattr(span, "resource", None)
        assert resource is not None and resource.attributes["service.name"] == "cc-bridge"
    finally:
        tracing.shutdown()


def test_a_final_that_will_not_be_delivered_is_no_longer_tracked() -> None:
    stages = Stages()
    timing = Timing(1.0)
    timing.released_at = 1.0
    stages.track("msg_1", timing)
    stages.forget("msg_1")  # no target wanted it, or the outbox refused it
    stages.posting("msg_1", 2.0)
    stages.stored("msg_1", 2.0)
    assert stages.final_to_webhook.count == 0 and timing.stored_at is None


async def test_closing_with_the_collector_down_does_not_wait_for_the_exporter(
        monkeypatch: pytest.MonkeyPatch, refused_port: int) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{refused_port}")
    tracing = tracing_from_environment()
    assert tracing is not None
    tracing.leg_span(call_id="CA1", leg="inbound", engine="telnyx", dialect="twilio").end()
    await tracing.close(within_s=0.05)
    # The exporter retries a refused collector for its whole timeout (10 s): still at it.
    assert [t for t in threading.enumerate() if t.name == "trace export" and t.is_alive()]
