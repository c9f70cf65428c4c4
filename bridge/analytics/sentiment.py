"""Sentiment of an utterance, from VADER's lexicon model (the ``sentiment`` extra). Pure.

VADER (vaderSentiment) scores English text with a lexicon and rules that ship inside its
package: nothing is downloaded, and a final takes tens of microseconds. The score is VADER's
``compound`` score, from -1 (most negative) to 1 (most positive); the label uses the
thresholds VADER's authors recommend (at least 0.05 positive, at most -0.05 negative,
neutral between). It reads the redacted text, as published.

``SentimentTally`` sums one call's scores per leg for ``call.ended``.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any, Final

from bridge.errors import ConfigError

LABELS: Final = ("negative", "neutral", "positive")
POSITIVE_FROM: Final = 0.05  # VADER's recommended threshold on the compound score
NEGATIVE_TO: Final = -0.05
# Longer text is scored on its beginning only (about a minute of speech), so a final's cost
# stays small: VADER's rule for "but" costs the square of the text's length, and 10,000
# characters of "great but not bad" take a third of a second of the event loop (1,000: 5 ms).
MAX_TEXT_CHARS: Final = 1_000


def label_for(score: float) -> str:
    """The label of a compound score."""
    if score >= POSITIVE_FROM:
        return "positive"
    return "negative" if score <= NEGATIVE_TO else "neutral"


class SentimentScorer:
    """Scores texts; build it once per process (``shared_scorer``): it loads the lexicon."""

    def __init__(self) -> None:
        try:
            from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer
        except ImportError:
            raise ConfigError("analytics.sentiment", "needs the sentiment extra, which is not "
                              "installed: pip install 'callbridge[sentiment]'") from None
        self._analyzer = SentimentIntensityAnalyzer()

    def score(self, text: str) -> dict[str, Any]:
        """``{"label", "score"}`` of one text (the score rounded to 3 places)."""
        compound = float(self._analyzer.polarity_scores(text[:MAX_TEXT_CHARS])["compound"])
        return {"label": label_for(compound), "score": round(compound, 3)}

    def fields(self, text: str) -> dict[str, Any]:
        """What a final's event data gets: ``{"sentiment": {"label", "score"}}``."""
        return {"sentiment": self.score(text)}


@functools.cache
def shared_scorer() -> SentimentScorer:
    """The process's one scorer (the lexicon is loaded on the first use)."""
    return SentimentScorer()


@dataclass
class LegSentiment:
    """One leg's scores so far."""

    finals: int = 0
    total: float = 0.0
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(LABELS, 0))

    def add(self, sentiment: dict[str, Any]) -> None:
        self.finals += 1
        self.total += float(sentiment["score"])
        self.counts[str(sentiment["label"])] += 1

    def summary(self) -> dict[str, Any]:
        """Mean score (None without a final) and the finals by label."""
        mean = round(self.total / self.finals, 3) if self.finals else None
        return {"finals": self.finals, "mean_score": mean, "counts": dict(self.counts)}
