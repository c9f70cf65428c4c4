"""The per-speaker sentiment of a call in ``call.ended``: a call observer.

It reads the ``sentiment`` each published final carries (``analytics.sentiment``), so the
summary and the finals always agree.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from bridge.analytics.sentiment import LegSentiment
from bridge.calls import Call, CallObserver
from bridge.compliance.redact import Redacted
from bridge.events import Track, TranscriptResult


class SentimentSummary(CallObserver):
    """Sums the sentiment of each leg's published finals; adds ``sentiment`` to
    ``call.ended``: one entry per leg, with its speaker."""

    def __init__(self) -> None:
        self._legs: dict[Track, LegSentiment] = {}

    def final(self, track: Track, result: TranscriptResult, redacted: Redacted,
              fields: Mapping[str, Any] | None) -> None:
        if fields is None or "sentiment" not in fields:
            return  # not published (emptied by redaction)
        self._legs.setdefault(track, LegSentiment()).add(fields["sentiment"])

    def ended(self, call: Call) -> Mapping[str, Any]:
        return {"sentiment": [
            {"leg": track.value, "speaker": leg.speaker,
             **self._legs.get(track, LegSentiment()).summary()}
            for track, leg in call.legs.items()]}


def sentiment_summary(call: Call) -> SentimentSummary | None:
    """The observer factory (``bridge.artifacts.service``): on when ``analytics.sentiment``."""
    return SentimentSummary() if call.settings.analytics.sentiment else None
