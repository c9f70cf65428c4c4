"""Prometheus metrics: one registry per application, exposed at ``/metrics``.

Counts are taken where they are cheap: calls and legs as they start and end, media totals
when a leg ends (nothing per frame), upstream sessions as they open, fail, reconnect, fail
over and roll, latency per final; per-stage latency is tallied in plain lists
(``bridge.stages``). Webhook delivery, the outbox, authentication failures, the stage
tallies and event-loop lag are read when the metrics are scraped.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from typing import Any, Final

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from bridge.stages import Stages

LATENCY_BUCKETS: Final = (0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0)


class Metrics:
    """The bridge's metrics."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.calls_active = Gauge("callbridge_calls_active", "Live calls", ["dialect"],
                                  registry=r)
        self.legs_active = Gauge("callbridge_legs_active", "Live legs", ["dialect"], registry=r)
        self.calls = Counter("callbridge_calls", "Calls ended, by reason", ["dialect", "reason"],
                             registry=r)
        self.frames = Counter("callbridge_media_frames", "Media frames received (counted "
                              "when their leg ends)", ["dialect"], registry=r)
        self.media_bytes = Counter("callbridge_media_bytes", "Media bytes received (counted "
                                   "when their leg ends)", ["dialect"], registry=r)
        self.gaps = Counter("callbridge_gaps_filled", "Holes in media filled with silence",
                            ["dialect"], registry=r)
        self.chunks_dropped = Counter("callbridge_chunks_dropped", "Audio chunks dropped for "
                                      "a slow upstream", ["dialect"], registry=r)
        self.upstream = Counter("callbridge_upstream_sessions", "Upstream session events",
                                ["engine", "event"], registry=r)
        self.engine_full = Counter("callbridge_engine_capacity_refusals", "Times a leg found "
                                   "an engine full (its max_streams in use, or the service "
                                   "answering 429) and took the secondary or waited; once per "
                                   "wait, not per retry", ["engine"], registry=r)
        self.latency = Histogram("callbridge_upstream_latency_seconds", "From the end of an "
                                 "utterance's audio being sent to its final", ["engine"],
                                 buckets=LATENCY_BUCKETS, registry=r)
        self.transcripts = Counter("callbridge_transcripts", "Transcripts published",
                                   ["type"], registry=r)
        # Latency the bridge adds per stage, tallied where the work happens, read when scraped.
        self.stages = Stages()
        r.register(self.stages)
        self.loop_lag = Gauge("callbridge_event_loop_lag_seconds", "How late a 100 ms timer "
                              "fired on the event loop, worst of the last second", registry=r)

    def watch(self, collector: Callable[[], Iterator[Any]]) -> None:
        """Add values read at scrape time."""
        self.registry.register(_Callback(collector))

    async def measure_loop_lag(self) -> None:
        """Runs for the application's life: how late the loop runs timers."""
        loop = asyncio.get_running_loop()
        worst, since = 0.0, loop.time()
        while True:
            before = loop.time()
            await asyncio.sleep(0.1)
            worst = max(worst, loop.time() - before - 0.1)
            if loop.time() - since >= 1.0:
                self.loop_lag.set(worst)
                worst, since = 0.0, loop.time()


class _Callback(Collector):
    def __init__(self, produce: Callable[[], Iterator[Any]]) -> None:
        self._produce = produce

    def collect(self) -> Iterator[Any]:
        return self._produce()


def _family(kind: type[CounterMetricFamily] | type[GaugeMetricFamily], name: str,
            documentation: str, labels: list[str],
            values: dict[tuple[str, ...], float]) -> CounterMetricFamily | GaugeMetricFamily:
    family = kind(name, documentation, labels=labels)
    for key, value in values.items():
        family.add_metric(list(key), value)
    return family


def counter(name: str, documentation: str, labels: list[str],
            values: dict[tuple[str, ...], float]) -> CounterMetricFamily | GaugeMetricFamily:
    """A counter whose values are read at scrape time."""
    return _family(CounterMetricFamily, name, documentation, labels, values)


def gauge(name: str, documentation: str, labels: list[str],
          values: dict[tuple[str, ...], float]) -> CounterMetricFamily | GaugeMetricFamily:
    """A gauge whose values are read at scrape time."""
    return _family(GaugeMetricFamily, name, documentation, labels, values)
