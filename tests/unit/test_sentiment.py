"""Sentiment of finals: VADER's scores and labels, per-leg sums, and the optional extra."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

from bridge.analytics.sentiment import LegSentiment, SentimentScorer, label_for, shared_scorer
from bridge.compliance.redact import policy_for
from bridge.config import ComplianceSettings, load_settings
from bridge.errors import ConfigError
from bridge.events import EventType, TranscriptResult
from bridge.legs.transcripts import LegTranscripts

LOCAL = {"CALLBRIDGE_TELNYX_URL": "ws://127.0.0.1:9/v2/speech-to-text/transcription"}


@pytest.mark.parametrize(("score", "label"), [
    (-1.0, "negative"), (-0.05, "negative"), (-0.0499, "neutral"), (0.0, "neutral"),
    (0.0499, "neutral"), (0.05, "positive"), (1.0, "positive"),
])
def test_labels_follow_vaders_thresholds_on_the_compound_score(score: float,
                                                                 label: str) -> None:
    assert label_for(score) == label


@pytest.mark.parametrize(("text", "label"), [
    ("this is terrible, I am really angry with your service", "negative"),
    ("thank you so much, that was great help", "positive"),
    ("I am calling about my bill", "neutral"),
])
def test_the_lexicon_model_scores_what_a_caller_says(text: str, label: str) -> None:
    sentiment = shared_scorer().score(text)
    assert sentiment["label"] == label
    assert -1 <= sentiment["score"] <= 1
    assert sentiment["score"] == round(sentiment["score"], 3)


def test_a_long_final_is_scored_on_its_first_thousand_characters() -> None:
    # What follows may be hostile: a long run of "but" clauses costs VADER the square of its
    # length, on the event loop every call shares.
    calm = ("I am calling about my bill " * 40)[:1000]
    assert shared_scorer().score(calm)["label"] == "neutral"
    assert shared_scorer().score(calm + " terrible awful but not bad " * 300) == \
        shared_scorer().score(calm)


def test_one_scorer_serves_the_whole_process() -> None:
    assert shared_scorer() is shared_scorer()


def test_a_legs_summary_is_its_mean_score_and_its_finals_by_label() -> None:
    leg = LegSentiment()
    assert leg.summary() == {"finals": 0, "mean_score": None,
                             "counts": {"negative": 0, "neutral": 0, "positive": 0}}
    for score in (0.5, -0.8, 0.0, 0.6):
        leg.add({"label": label_for(score), "score": score})
    assert leg.summary() == {"finals": 4, "mean_score": 0.075,
                             "counts": {"negative": 1, "neutral": 1, "positive": 2}}


async def test_each_published_final_carries_the_sentiment_of_its_redacted_text() -> None:
    scorer = SentimentScorer()
    published: list[tuple[EventType, dict[str, Any]]] = []
    transcripts = LegTranscripts(policy_for(ComplianceSettings()), hold_s=2.0,
                                 publish=lambda kind, fields, _: published.append((kind, fields)),
                                 hold=lambda _: None, annotate=scorer.fields)
    transcripts.result(TranscriptResult("this is awful", False, None, 0, 500))
    transcripts.result(TranscriptResult("this is awful service", True, 0.9, 0, 900))
    transcripts.result(TranscriptResult("great, my card is 4111 1111 1111 1111 thanks", True,
                                        0.9, 1000, 3000))
    transcripts.flush()
    partial, *finals = published
    assert partial[0] is EventType.TRANSCRIPT_PARTIAL and "sentiment" not in partial[1]
    assert [f["text"] for _, f in finals] == ["this is awful service",
                                              "great, my card is [credit_card] thanks"]
    assert finals[0][1]["sentiment"]["label"] == "negative"
    for _, fields in finals:
        assert fields["sentiment"] == scorer.score(fields["text"])


def test_sentiment_is_off_by_default_and_on_with_the_extra_installed(tmp_path: Path) -> None:
    assert load_settings(environ=LOCAL).analytics.sentiment is False
    path = tmp_path / "c.toml"
    path.write_text("[analytics]\nsentiment = true\n")
    assert load_settings(path, environ=LOCAL).analytics.sentiment is True


def test_sentiment_without_the_extra_stops_start_up_naming_the_setting(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "vaderSentiment", None)  # as if not installed
    with pytest.raises(ConfigError) as caught:
        load_settings(environ={**LOCAL, "CALLBRIDGE_ANALYTICS_SENTIMENT": "true"})
    assert caught.value.setting == "CALLBRIDGE_ANALYTICS_SENTIMENT"
    assert "pip install 'callbridge[sentiment]'" in caught.value.problem
    assert load_settings(environ=LOCAL).analytics.sentiment is False  # off: nothing needed
