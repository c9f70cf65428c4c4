"""Latency the bridge adds, per stage: cheap tallies read at scrape time, and the timestamps
that travel in memory beside a result on its way from the engine to a webhook or a viewer.

Stages (the ``stage`` label of ``callbridge_stage_latency_seconds``):

* ``frame_to_upstream``: the frame that completed a chunk was received -> that chunk handed
  to the engine's socket (the ``chunk_ms`` of audio gathered before it is not counted);
* ``redaction_hold``: an engine final received -> released by the redactor (0 for most);
* ``final_to_webhook``: a final released by the redactor -> the first attempt of its webhook
  POST starts (the hold-back above is not counted, nor the receiver's answer time);
* ``result_to_viewer``: an engine result (partial or final) received -> its SSE event written
  to a live viewer.

At a thousand legs there are ten thousand chunks a second, so an observation is a bisect and
two additions into plain lists (``StageTally``), never prometheus_client's ``observe`` with
its lock and label lookup; the registry reads the tallies when scraped. Everything here runs
on the event loop's thread.

Times are ``time.monotonic()``: uvloop's ``loop.time()`` is cached per loop iteration at
millisecond resolution, too coarse for the buckets below 1 ms.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Final

from prometheus_client.core import HistogramMetricFamily
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from bridge.tracing import Tracing

# 0.25 ms to 10 s, fine below 25 ms where the bridge's own work lies.
STAGE_BUCKETS: Final = (0.00025, 0.0005, 0.00075, 0.001, 0.0015, 0.002, 0.003, 0.004, 0.005,
                        0.0075, 0.01, 0.0125, 0.015, 0.02, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                        2.5, 5.0, 10.0)
STAGES: Final = ("frame_to_upstream", "final_to_webhook", "redaction_hold", "result_to_viewer")
# Finals on their way to a webhook whose times are kept; beyond it (receivers down for long)
# the oldest are forgotten and go unmeasured.
MAX_TRACKED: Final = 50_000


class Timing:
    """When one engine result reached each stage (``time.monotonic()`` seconds; None: not
    yet). Made when the result is received and carried beside it, in memory only."""

    __slots__ = ("attempts", "engine_s", "parent", "posted_at", "received_at", "released_at",
                 "status", "stored_at")

    def __init__(self, received_at: float, *, engine_s: float | None = None,
                 parent: object | None = None) -> None:
        self.received_at = received_at
        self.engine_s = engine_s  # audio sent -> final received, when the engine gives times
        self.parent = parent  # the leg's trace span, when tracing is on
        self.released_at: float | None = None  # left the redactor
        self.stored_at: float | None = None  # in the outbox
        self.posted_at: float | None = None  # the webhook's first attempt started
        self.attempts = 0
        self.status: int | None = None


class StageTally:
    """A histogram's bucket counts and sum, in a plain list (the count is their sum, added
    up when read: an observation is a bisect and two additions)."""

    __slots__ = ("counts", "total")

    def __init__(self) -> None:
        self.counts = [0] * (len(STAGE_BUCKETS) + 1)  # the last one: beyond the largest
        self.total = 0.0

    def observe(self, seconds: float, _bisect: Callable[[Sequence[float], float], int]
                = bisect.bisect_left) -> None:
        self.counts[_bisect(STAGE_BUCKETS, seconds)] += 1
        self.total += seconds

    @property
    def count(self) -> int:
        return sum(self.counts)

    def buckets(self) -> list[tuple[str, float]]:
        """Cumulative counts by upper bound, as Prometheus wants them."""
        out: list[tuple[str, float]] = []
        running = 0
        for bound, n in zip((*map(str, STAGE_BUCKETS), "+Inf"), self.counts, strict=True):
            running += n
            out.append((bound, running))
        return out


class Stages(Collector):
    """The stage tallies, the finals on their way to a webhook, and the tracer (None: off).

    Register it with the metrics' registry; ``collect`` sums nothing, it only reads.
    """

    def __init__(self, tracing: Tracing | None = None) -> None:
        self.frame_to_upstream = StageTally()
        self.final_to_webhook = StageTally()
        self.redaction_hold = StageTally()
        self.result_to_viewer = StageTally()
        self.tracing = tracing
        self._finals: dict[str, Timing] = {}  # by webhook-id, until delivered or dead

    def collect(self) -> Iterator[HistogramMetricFamily]:
        family = HistogramMetricFamily(
            "callbridge_stage_latency_seconds", "Latency the bridge adds, per stage (see "
            "docs/operations.md): frame_to_upstream, final_to_webhook (redaction hold-back "
            "excluded), redaction_hold, result_to_viewer", labels=["stage"])
        for stage in STAGES:
            tally: StageTally = getattr(self, stage)
            family.add_metric([stage], tally.buckets(), tally.total)
        yield family

    def describe(self) -> Iterator[HistogramMetricFamily]:
        return self.collect()

    # -- finals between the redactor and the webhook ------------------------------------------

    def track(self, event_id: str, timing: Timing) -> None:
        """A final with ``timing`` was handed to delivery as event ``event_id``."""
        finals = self._finals
        if len(finals) >= MAX_TRACKED:
            del finals[next(iter(finals))]
        finals[event_id] = timing

    def stored(self, event_id: str, now: float) -> None:
        """The event is in the outbox."""
        timing = self._finals.get(event_id)
        if timing is not None and timing.stored_at is None:
            timing.stored_at = now

    def posting(self, event_id: str, now: float) -> None:
        """An attempt at POSTing the event starts; the first one is measured."""
        timing = self._finals.get(event_id)
        if timing is None:
            return
        timing.attempts += 1
        if timing.posted_at is None:
            timing.posted_at = now
            if timing.released_at is not None:
                self.final_to_webhook.observe(now - timing.released_at)

    def forget(self, event_id: str) -> None:
        """The event will not be delivered (no target wants it, or it was not stored)."""
        self._finals.pop(event_id, None)

    def settled(self, event_id: str, now: float, status: int | None) -> None:
        """The event was delivered (or dead-lettered) with ``status``: no longer tracked."""
        timing = self._finals.pop(event_id, None)
        if timing is None:
            return
        timing.status = status
        if self.tracing is not None:
            self.tracing.utterance(timing, now)
