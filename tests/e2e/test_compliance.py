"""Compliance end to end: redaction everywhere, DTMF going nowhere, pause and resume."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

import pytest

from bridge.events import AudioEncoding, Track
from bridge.simulate import CallSpec, build_call, stream_call
from tests.conftest import BridgeFactory, BridgeProcess, run_call
from tests.support.admin import TOKEN, admin
from tests.support.audio import pcm_program, ulaw
from tests.support.outbox_file import stored_events
from tests.support.receiver import WebhookReceiver
from tests.support.speech import SCRIPT, SPEECH, leaked
from tests.support.telnyx_stt import TelnyxSttEmulator

pytestmark = pytest.mark.e2e


async def test_card_numbers_from_the_engine_reach_no_webhook_outbox_row_or_log(
        bridge_factory: BridgeFactory, stt: TelnyxSttEmulator, receiver: WebhookReceiver,
        tmp_path: Path) -> None:
    stt.script = SCRIPT
    bridge = await bridge_factory(CALLBRIDGE_TELNYX_INTERIM_RESULTS="true",
                                  CALLBRIDGE_OUTBOX_RETENTION_DAYS="1")
    on = await bridge.wait_for_log("bridge-side redaction on")  # the secure default
    assert on["policies"] == ["credit_card", "card_security_code", "card_expiry", "ssn"]
    spec = CallSpec("twilio", AudioEncoding.PCMU, {Track.INBOUND: ulaw(SPEECH)},
                    call_id="CA-pci")
    events = await run_call(bridge, receiver, spec, speed=2, within_s=30)

    # the engine really said the numbers, in partials and finals
    sent = " ".join(json.dumps(frame) for s in stt.sessions for frame in s.sent)
    assert "four one one one" in sent and "seven three seven" in sent
    assert any(e.type == "transcript.partial" for e in events)
    for event in events:
        assert leaked(event.body.decode()) == [], (event.type, event.data.get("text"))
        assert not any(c.isdigit() for c in str(event.data.get("text", "")))
    finals = [e.data for e in events if e.type == "transcript.final"]
    assert [f["text"] for f in finals] == [
        "okay my card number is [credit_card]", "and the cvv is",
        "[card_security_code] thanks"]
    assert [f["sequence"] for f in finals] == [1, 2, 3]
    assert finals[0]["redactions"] == [{"type": "credit_card", "count": 1}]
    [leg] = events[-1].data["legs"]
    assert leg["redaction"]["enabled"] is True
    assert leg["redaction"]["counts"] == {"card_security_code": 1, "credit_card": 1}

    bodies = [body for _, body in stored_events(tmp_path / "outbox.db")]
    assert len(bodies) >= 5  # kept for a day: inspect what was stored
    assert all(leaked(body) == [] for body in bodies)
    assert leaked("\n".join(bridge.raw_stderr)) == []


# A card read in two groups with words between them, the second group in the next final,
# and a harmless time after it. The first utterance is long enough for a partial that ends
# in words after eight digits.
INTERRUPTED_SPEECH = pcm_program(("silence", 200), ("tone", 1200, 800), ("silence", 500),
                                 ("tone", 1200, 600), ("silence", 500), ("tone", 600, 400),
                                 ("silence", 500))
INTERRUPTED_SCRIPT = ["sure five five five five five five five five wait okay",
                      "hold on five five five five four four four four thanks",
                      "see you at ten thirty"]


async def test_a_card_read_with_interruptions_over_finals_reaches_no_webhook_or_outbox_row(
        bridge_factory: BridgeFactory, stt: TelnyxSttEmulator, receiver: WebhookReceiver,
        tmp_path: Path) -> None:
    stt.script = INTERRUPTED_SCRIPT
    bridge = await bridge_factory(CALLBRIDGE_TELNYX_INTERIM_RESULTS="true",
                                  CALLBRIDGE_OUTBOX_RETENTION_DAYS="1")
    spec = CallSpec("twilio", AudioEncoding.PCMU, {Track.INBOUND: ulaw(INTERRUPTED_SPEECH)},
                    call_id="CA-interrupted")
    events = await run_call(bridge, receiver, spec, speed=2, within_s=30)

    secrets = ["five five five five", "four four four four"]
    sent = " ".join(json.dumps(frame) for s in stt.sessions for frame in s.sent)
    assert all(secret in sent for secret in secrets)
    partials = [e.data["text"] for e in events if e.type == "transcript.partial"]
    assert any(text.endswith("[digits]") for text in partials)
    for event in events:
        assert not [s for s in secrets if s in event.body.decode()], event.data.get("text")
    finals = [e.data for e in events if e.type == "transcript.final"]
    assert [f["text"] for f in finals] == ["sure [credit_card]", "thanks",
                                           "see you at ten thirty"]
    [leg] = events[-1].data["legs"]
    assert leg["redaction"]["counts"] == {"credit_card": 1}
    bodies = [body for _, body in stored_events(tmp_path / "outbox.db")]
    assert bodies and not [b for b in bodies if any(s in b for s in secrets)]


async def test_redaction_can_be_turned_off_explicitly(
        bridge_factory: BridgeFactory, stt: TelnyxSttEmulator,
        receiver: WebhookReceiver) -> None:
    stt.script = SCRIPT
    bridge = await bridge_factory(CALLBRIDGE_COMPLIANCE_REDACTION="off")
    await bridge.wait_for_log("bridge-side redaction is OFF: card numbers, security codes and "
                              "SSNs reach webhooks as the engine wrote them")
    spec = CallSpec("twilio", AudioEncoding.PCMU, {Track.INBOUND: ulaw(SPEECH)},
                    call_id="CA-off")
    events = await run_call(bridge, receiver, spec)
    texts = [e.data["text"] for e in events if e.type == "transcript.final"]
    assert texts == SCRIPT


# A card number pressed on the keypad. Runs of six of its digits are checked for: shorter
# runs turn up by chance in timestamps and ports.
KEYS = "4111111111111111"


def dtmf(digit: str, stream_id: str) -> str:
    return json.dumps({"event": "dtmf", "streamSid": stream_id, "sequenceNumber": "9",
                       "dtmf": {"track": "inbound_track", "digit": digit}})


async def call_with_keypresses(bridge: BridgeProcess, call_id: str) -> None:
    spec = CallSpec("twilio", AudioEncoding.PCMU, {Track.INBOUND: ulaw(SPEECH[:16000])},
                    call_id=call_id, stream_id=f"MZ{call_id}")
    messages = build_call(spec)
    stop = messages.pop()
    at = messages[-1][0]
    messages += [(at, dtmf(d, spec.stream_id)) for d in KEYS]
    messages.append(stop)
    await stream_call(bridge.url("/streams/twilio"), messages, speed=0)


@pytest.mark.parametrize("mode", ["drop", "masked"])
async def test_key_presses_reach_no_webhook_log_or_outbox_as_digits(
        bridge_factory: BridgeFactory, receiver: WebhookReceiver, tmp_path: Path,
        mode: str) -> None:
    bridge = await bridge_factory(CALLBRIDGE_COMPLIANCE_DTMF=mode,
                                  CALLBRIDGE_OUTBOX_RETENTION_DAYS="1")
    call_id = f"CA-dtmf-{mode}"
    await call_with_keypresses(bridge, call_id)
    events = await receiver.wait_for(receiver.ended(call_id))
    summary = await bridge.wait_for_log("call summary", call_id=call_id)
    assert summary["dtmf"] == 16  # the bridge did receive every key press

    mine = [e for e in events if e.data["call_id"] == call_id]
    keys = [e for e in mine if e.type == "dtmf"]
    if mode == "drop":
        assert keys == []
    else:
        assert len(keys) == 16 and {e.data["digit"] for e in keys} == {"masked"}
    for event in mine:
        assert not pressed_digits(event.body.decode()), event.type

    log_text = "\n".join(bridge.raw_stderr)
    assert call_id in log_text  # the call was logged: its lines are what is checked
    assert not pressed_digits(log_text)
    assert not set(KEYS) & set(short_strings(bridge.logs))  # no key logged one at a time

    stored = stored_events(tmp_path / "outbox.db")
    kinds = [kind for kind, _ in stored]
    assert "call.ended" in kinds  # kept for a day: what was stored can be inspected
    assert kinds.count("dtmf") == (16 if mode == "masked" else 0)
    for _, body in stored:
        assert not pressed_digits(body)


def short_strings(value: object) -> list[str]:
    """Every string of one or two characters anywhere in a JSON value."""
    if isinstance(value, dict):
        return [s for item in value.values() for s in short_strings(item)]
    if isinstance(value, list):
        return [s for item in value for s in short_strings(item)]
    return [value] if isinstance(value, str) and len(value) <= 2 else []


def pressed_digits(text: str) -> list[str]:
    """Traces of the pressed keys in ``text``: a run of them, or a digit given as a digit."""
    runs = [KEYS[n:n + 6] for n in range(len(KEYS) - 5) if KEYS[n:n + 6] in text]
    named = re.findall(r'"digit"\s*:\s*"(?!masked")[^"]*"', text)
    return runs + named


LONG = pcm_program(("silence", 200), ("tone", 800, 400), ("silence", 600),
                   ("tone", 800, 500), ("silence", 600), ("tone", 800, 700),
                   ("silence", 600))


async def test_pause_and_resume_through_the_admin_api(
        bridge_factory: BridgeFactory, stt: TelnyxSttEmulator,
        receiver: WebhookReceiver) -> None:
    bridge = await bridge_factory(CALLBRIDGE_SERVER_ADMIN_TOKEN=TOKEN)
    spec = CallSpec("twilio", AudioEncoding.PCMU, {Track.INBOUND: ulaw(LONG)},
                    call_id="CA-pause")
    call = asyncio.create_task(stream_call(bridge.url("/streams/twilio"), build_call(spec),
                                           speed=1))
    await receiver.wait_for(lambda events: any(
        e.type == "transcript.final" and e.data["call_id"] == "CA-pause" for e in events))
    assert (await admin(bridge, "pause", "CA-pause", token="wrong-token-0123456789"))[0] == 401
    assert (await admin(bridge, "pause", "CA-nope"))[0] == 404
    status, body = await admin(bridge, "pause", "CA-pause", leg="inbound")
    assert status == 200 and body["paused"] == {"inbound": True}
    await asyncio.sleep(1.0)  # a second of the call goes by, untranscribed
    status, body = await admin(bridge, "resume", "CA-pause")
    assert status == 200 and body["paused"] == {"inbound": False}
    await call
    events = await receiver.wait_for(receiver.ended("CA-pause"))
    mine = [e for e in events if e.data["call_id"] == "CA-pause"]
    kinds = [e.type for e in mine]
    assert kinds.index("transcription.paused") < kinds.index("transcription.resumed")
    # The engine got the audio with one gap, cut at frame edges (a pause cuts the chunk in
    # progress short), and nothing of the gap.
    [session] = stt.sessions
    audio, got = ulaw(LONG), bytes(session.audio)
    gap = len(audio) - len(got)
    assert 4000 <= gap <= 12000  # about a second withheld
    assert gap % 160 == 0
    assert any(got == audio[:start] + audio[start + gap:]
               for start in range(0, len(got) + 1, 160))
    [leg] = mine[-1].data["legs"]
    [interval] = leg["redaction"]["paused"]
    assert 500 <= interval["end_ms"] - interval["start_ms"] <= 1600
    finals = [e.data for e in mine if e.type == "transcript.final"]
    assert finals[-1]["end_ms"] >= 3800  # times after the pause stay on the call's clock


async def test_the_admin_api_is_off_without_a_token(bridge: BridgeProcess) -> None:
    status, body = await admin(bridge, "pause", "CA-any")
    assert status == 404 and "CALLBRIDGE_SERVER_ADMIN_TOKEN" in str(body)


async def test_a_mark_from_the_stream_pauses_and_resumes(
        bridge: BridgeProcess, stt: TelnyxSttEmulator, receiver: WebhookReceiver) -> None:
    spec = CallSpec("twilio", AudioEncoding.PCMU, {Track.INBOUND: ulaw(LONG)},
                    call_id="CA-mark", stream_id="MZmark")
    messages = build_call(spec)
    media = [n for n, (_, text) in enumerate(messages) if '"media"' in text]

    def mark(name: str) -> str:
        return json.dumps({"event": "mark", "streamSid": "MZmark", "sequenceNumber": "1",
                           "mark": {"name": name}})

    messages.insert(media[100], (0, mark("callbridge:resume")))
    messages.insert(media[50], (0, mark("callbridge:pause:inbound")))
    await stream_call(bridge.url("/streams/twilio"), messages, speed=0)
    events = await receiver.wait_for(receiver.ended("CA-mark"))
    kinds = [e.type for e in events if e.data["call_id"] == "CA-mark"]
    assert "transcription.paused" in kinds and "transcription.resumed" in kinds
    assert kinds.index("transcription.paused") < kinds.index("transcription.resumed")
    # The engine got every frame but the 50 sent between the two marks (frames 50-99).
    [session] = stt.sessions
    audio = ulaw(LONG)
    assert bytes(session.audio) == audio[:50 * 160] + audio[100 * 160:]
