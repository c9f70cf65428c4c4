"""Phrase alerts and sentiment through a real ``callbridge serve``, with scripted finals."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

import pytest

from bridge.events import AudioEncoding, Track
from bridge.simulate import CallSpec
from tests.conftest import BridgeFactory, bridge_environment, run_call
from tests.support.audio import ulaw
from tests.support.receiver import Received, WebhookReceiver
from tests.support.speech import SPEECH
from tests.support.telnyx_stt import TelnyxSttEmulator

pytestmark = pytest.mark.e2e

RULES = r"""
[[alerts]]
name = "cancel"
phrases = ["cancel my account", "close my account"]

[[alerts]]
name = "card"
phrases = ["card number"]

[[alerts]]
name = "digits"  # would match the card's digits, were they not redacted first
patterns = ['\d{4}']

[[alerts]]
name = "thanks"
phrases = ["thanks", "thank you"]
speaker = "caller"
partials = true

[[alerts]]
name = "agent-thanks"
phrases = ["thanks"]
speaker = "agent"
"""
# Three utterances (SPEECH has three bursts): a card number read in digits over the first
# two finals, its security code in the third. Each partial holds 4 more words of its final.
SCRIPT = ["okay I want to Cancel... my, account. my card number is 4111 1111",
          "1111 1111 and the cvv is",
          "737 thanks"]
SECRETS = ("4111", "1111", "737")


def texts_of(data: dict[str, Any]) -> list[str]:
    """The transcript text an event carries: its text, an alert's match, the legs' texts."""
    return [*(data[key] for key in ("text", "matched") if key in data),
            *(leg["text"] for leg in data.get("legs", []))]


def durable(events: list[Received]) -> list[Received]:
    """The call's events that go through the outbox, in the order produced (partials are
    sent beside it and may overtake)."""
    return [e for e in events if e.type != "transcript.partial"]


async def test_alerts_follow_the_transcript_that_triggered_them_once_with_redacted_text(
        bridge_factory: BridgeFactory, stt: TelnyxSttEmulator, receiver: WebhookReceiver,
        tmp_path: Path) -> None:
    stt.script = SCRIPT
    (tmp_path / "alerts.toml").write_text(RULES)
    # A held final waits for the next one however slow a busy machine makes the call (the
    # hold time is wall-clock time): the card is then always redacted whole.
    bridge = await bridge_factory(CALLBRIDGE_CONFIG=str(tmp_path / "alerts.toml"),
                                  CALLBRIDGE_TELNYX_INTERIM_RESULTS="true",
                                  CALLBRIDGE_COMPLIANCE_HOLD_S="10")
    rules = await bridge.wait_for_log("phrase alerts")
    assert rules["rules"] == ["cancel", "card", "digits", "thanks", "agent-thanks"]
    spec = CallSpec("twilio", AudioEncoding.PCMU, {Track.INBOUND: ulaw(SPEECH)},
                    call_id="CA-alerts")
    events = await run_call(bridge, receiver, spec, speed=2, within_s=30)

    finals = [e.data for e in events if e.type == "transcript.final"]
    assert [f["text"] for f in finals] == [
        "okay I want to Cancel... my, account. my card number is [credit_card]",
        "and the cvv is", "[card_security_code] thanks"]
    # By utterance (the thanks of the third may go out first: the first two finals are held
    # while the card number may go on, its partial is not), and by rule within one.
    alerts = sorted((e.data for e in events if e.type == "call.alert"),
                    key=lambda a: a["sequence"])
    assert [(a["rule"], a["sequence"], a["from_partial"], a["matched"]) for a in alerts] == [
        ("cancel", 1, False, "Cancel... my, account"),
        ("card", 1, False, "card number"),
        ("thanks", 3, True, "thanks"),  # a partial said it first: its final does not again
    ]
    first = finals[0]
    for alert in alerts[:2]:
        assert alert["text"] == first["text"]  # the card shows masked
        assert (alert["start_ms"], alert["end_ms"]) == (first["start_ms"], first["end_ms"])
        assert (alert["leg"], alert["speaker"], alert["call_id"]) == (
            "inbound", "caller", "CA-alerts")

    # Where each went out: right behind its final, or before the final of its utterance.
    order = [(e.type, e.data.get("sequence"), e.data.get("rule")) for e in durable(events)]
    at = order.index(("transcript.final", 1, None))
    assert order[at:at + 3] == [("transcript.final", 1, None), ("call.alert", 1, "cancel"),
                                ("call.alert", 1, "card")]
    assert order.index(("call.alert", 3, "thanks")) < order.index(("transcript.final", 3, None))
    assert order[-1][0] == "call.ended"

    # The engine did send the digits; no event's text carries a digit. (Only the texts are
    # read: counters, times and ids hold digits, and "1111" among them by chance.)
    sent = " ".join(str(frame) for s in stt.sessions for frame in s.sent)
    assert all(secret in sent for secret in SECRETS)
    texts = [text for event in events for text in texts_of(event.data)]
    assert len(texts) > len(events)  # every alert has two, call.ended its leg's
    assert [t for t in texts if any(c.isdigit() for c in t)] == []
    summary = await bridge.wait_for_log("call summary", call_id="CA-alerts")
    assert summary["alerts"] == 3


SENTIMENT_SCRIPT = ["this is terrible service and I am angry", "I am calling about my bill",
                    "thank you so much that was great"]


async def test_finals_carry_sentiment_and_call_ended_sums_it_per_speaker(
        bridge_factory: BridgeFactory, stt: TelnyxSttEmulator,
        receiver: WebhookReceiver) -> None:
    stt.script = SENTIMENT_SCRIPT
    bridge = await bridge_factory(CALLBRIDGE_ANALYTICS_SENTIMENT="true")
    await bridge.wait_for_log("sentiment on finals")
    spec = CallSpec("twilio", AudioEncoding.PCMU, {Track.INBOUND: ulaw(SPEECH)},
                    call_id="CA-sentiment")
    events = await run_call(bridge, receiver, spec, speed=2, within_s=30)

    finals = [e.data for e in events if e.type == "transcript.final"]
    assert [f["text"] for f in finals] == SENTIMENT_SCRIPT
    assert [f["sentiment"]["label"] for f in finals] == ["negative", "neutral", "positive"]
    scores = [f["sentiment"]["score"] for f in finals]
    assert scores[0] < -0.5 and scores[1] == 0 and scores[2] > 0.5
    ended = events[-1]
    assert ended.type == "call.ended"
    assert ended.data["sentiment"] == [{
        "leg": "inbound", "speaker": "caller", "finals": 3,
        "mean_score": round(sum(scores) / 3, 3),
        "counts": {"negative": 1, "neutral": 1, "positive": 1}}]
    assert not [e for e in events if e.type == "call.alert"]  # no rules, no alerts


async def start_refused(code: str, env: dict[str, str]) -> tuple[int | None, list[str]]:
    """Run ``code`` (which starts ``callbridge serve``) to its end: status, stderr lines."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", code, env=env, stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    async with asyncio.timeout(30):
        _, err = await process.communicate()
    return process.returncode, err.decode().splitlines()


SERVE = "from bridge.cli import main; raise SystemExit(main(['serve', '--port', '0']))"


async def test_sentiment_on_without_the_extra_refuses_to_start_with_one_line(
        stt: TelnyxSttEmulator, receiver: WebhookReceiver) -> None:
    env = bridge_environment(stt, receiver, CALLBRIDGE_ANALYTICS_SENTIMENT="true")
    # The package made unimportable, as on an install without the extra.
    status, err = await start_refused(f"import sys; sys.modules['vaderSentiment'] = None; "
                                      f"{SERVE}", env)
    assert status == 2
    assert err == ["callbridge: invalid setting CALLBRIDGE_ANALYTICS_SENTIMENT: needs the "
                   "sentiment extra, which is not installed: pip install "
                   "'callbridge[sentiment]'"]


async def test_a_bad_alert_pattern_refuses_to_start_naming_its_entry(
        stt: TelnyxSttEmulator, receiver: WebhookReceiver, tmp_path: Path) -> None:
    (tmp_path / "alerts.toml").write_text(
        RULES + "\n[[alerts]]\nname = 'broken'\npatterns = ['refund', 'charge(back']\n")
    env = bridge_environment(stt, receiver, CALLBRIDGE_CONFIG=str(tmp_path / "alerts.toml"))
    status, err = await start_refused(SERVE, env)
    assert status == 2
    assert len(err) == 1 and err[0].startswith(
        "callbridge: invalid setting alerts[5].patterns[1]: not a valid regular expression: "
        "missing ), unterminated subpattern"), err
