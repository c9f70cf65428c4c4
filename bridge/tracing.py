"""OpenTelemetry traces: one span per leg session, one per utterance with its stages as
children, exported over OTLP/HTTP. Off unless ``OTEL_EXPORTER_OTLP_ENDPOINT`` is set.

The SDK reads the standard ``OTEL_EXPORTER_OTLP_*`` variables itself (endpoint, headers,
timeout); spans leave through a ``BatchSpanProcessor``, off the event loop's path. An
utterance's spans are made once its webhook is settled, from the times that travelled beside
it (``bridge.stages.Timing``), with explicit start and end times: nothing is made for a final
until then, and nothing at all with tracing off.

Attributes carry identifiers and measurements only: the call id as the logs give it, the
leg, the engine, the dialect, durations, the webhook's status and attempts. Never transcript
text, audio or secrets.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Final

from bridge.errors import ConfigError

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import Span, Tracer

    from bridge.stages import Timing

ENDPOINT_VARIABLE: Final = "OTEL_EXPORTER_OTLP_ENDPOINT"
SERVICE_NAME: Final = "callbridge"
CLOSE_WITHIN_S: Final = 5.0  # how long the exit waits for the last spans to be exported


class Tracing:
    """The process's tracer; see the module docstring."""

    def __init__(self, provider: TracerProvider) -> None:
        self._provider = provider
        self._tracer: Tracer = provider.get_tracer("callbridge")
        # Monotonic times travel beside results; spans want Unix nanoseconds.
        self._offset_ns = time.time_ns() - time.monotonic_ns()

    def _ns(self, monotonic_s: float) -> int:
        return int(monotonic_s * 1e9) + self._offset_ns

    def leg_span(self, *, call_id: str, leg: str, engine: str, dialect: str) -> Span:
        """A leg's session span, started now; the caller ends it when the leg ends."""
        return self._tracer.start_span("callbridge.leg", attributes={
            "callbridge.call_id": call_id, "callbridge.leg": leg,
            "callbridge.engine": engine, "callbridge.dialect": dialect})

    def utterance(self, timing: Timing, settled_at: float) -> None:
        """The spans of one final, whose webhook settled at ``settled_at``: the utterance
        under its leg's span, and under it engine latency, redaction hold-back, outbox write
        and webhook delivery (each only when its times are known)."""
        from opentelemetry import trace

        received = timing.received_at
        heard = received - (timing.engine_s or 0.0)
        parent = timing.parent
        context = trace.set_span_in_context(parent) if isinstance(parent, trace.Span) else None
        attributes: dict[str, Any] = {"callbridge.webhook.attempts": timing.attempts}
        if timing.status is not None:
            attributes["http.response.status_code"] = timing.status
        root = self._tracer.start_span("callbridge.utterance", context=context,
                                       start_time=self._ns(heard))
        inner = trace.set_span_in_context(root)
        released = timing.released_at if timing.released_at is not None else received
        children: list[tuple[str, float, float | None, dict[str, Any]]] = [
            ("callbridge.engine_latency", heard, received if timing.engine_s else None, {}),
            ("callbridge.redaction_hold", received, released, {}),
            ("callbridge.outbox_write", released, timing.stored_at, {}),
            ("callbridge.webhook_delivery", timing.posted_at or settled_at, settled_at,
             attributes),
        ]
        for name, start, end, extra in children:
            if end is None or end < start:
                continue
            span = self._tracer.start_span(name, context=inner, start_time=self._ns(start),
                                           attributes=extra)
            span.end(end_time=self._ns(end))
        root.end(end_time=self._ns(max(settled_at, heard)))

    def shutdown(self) -> None:
        """Export what is queued and stop (blocks up to the exporter's timeout)."""
        self._provider.shutdown()

    async def close(self, within_s: float) -> None:
        """``shutdown`` on a thread of its own, waited for at most ``within_s``: a collector
        that is down (the exporter retries for its whole timeout) does not hold up the
        bridge's exit; spans not exported by then are lost."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()

        def finished() -> None:
            if not done.done():
                done.set_result(None)

        def run() -> None:
            try:
                self._provider.shutdown()
            finally:
                with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                    loop.call_soon_threadsafe(finished)

        # A daemon thread: the process may exit while it still waits on the collector.
        threading.Thread(target=run, name="trace export", daemon=True).start()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(within_s):
                await done


def check_tracing(environ: Mapping[str, str] | None = None) -> None:
    """Raise ``ConfigError`` naming ``OTEL_EXPORTER_OTLP_ENDPOINT`` when it is set but the
    ``otel`` extra is not installed: before anything starts, with the other settings."""
    tracing_from_environment(environ, build=False)


def tracing_from_environment(environ: Mapping[str, str] | None = None, *,
                             build: bool = True) -> Tracing | None:
    """The tracer when ``OTEL_EXPORTER_OTLP_ENDPOINT`` is set, else None (always None
    without ``build``: only the check).

    Raises ``ConfigError`` naming the variable when it is set but the ``otel`` extra is not
    installed.
    """
    env = os.environ if environ is None else environ
    if not env.get(ENDPOINT_VARIABLE):
        return None
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError:
        raise ConfigError(ENDPOINT_VARIABLE, "is set, but tracing needs the OpenTelemetry "
                          "packages: pip install 'callbridge[otel]' (or unset it)") from None
    if not build:
        return None
    # Stopped by ``close`` at the application's end, within a bound; not again at exit.
    # The standard OTEL_SERVICE_NAME or OTEL_RESOURCE_ATTRIBUTES name the service when set
    # (deployments sharing a collector tell themselves apart); the SDK reads them itself, and
    # its default for neither is "unknown_service...", which becomes "callbridge".
    resource = Resource.create()
    if str(resource.attributes.get("service.name", "")).startswith("unknown_service"):
        resource = resource.merge(Resource({"service.name": SERVICE_NAME}))
    provider = TracerProvider(resource=resource, shutdown_on_exit=False)
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    return Tracing(provider)
