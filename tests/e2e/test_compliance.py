"""Compliance end to end: redaction everywhere, DTMF going nowhere, pause and resume."""

from __future__ import annotations

import asyncio
import base64
import json
import sqlite3
from pathlib import Path

import pytest

from bridge.events import AudioEncoding, Track
from bridge.simulate import CallSpec, build_call, stream_call
from tests.conftest import BridgeFactory, BridgeProcess, run_call
from tests.support.audio import pcm_program, ulaw
from tests.support.receiver import WebhookReceiver
from tests.support.telnyx_stt import TelnyxSttEmulator

pytestmark = pytest.mark.e2e

# Three utterances: the card number is spoken over the first two finals, the security code
# is announced at the end of the second and said in the third.
SPEECH = pcm_program(("silence", 200), ("tone", 1200, 400), ("silence", 500),
                     ("tone", 1200, 500), ("silence", 500), ("tone", 600, 600),
                     ("silence", 500))
SCRIPT = ["okay my card number is four one one one",
          "one one one one one one one one one one one one and the cvv is",
          "seven three seven thanks"]
# What must appear nowhere. (Digits alone would match ids and timestamps by chance: the
# engine speaks the numbers as words here, and texts are also checked for any digit.)
SECRETS = ["four one one one", "one one one one", "seven three seven"]
TOKEN = "admin-token-for-tests-0123456789"


def leaked(text: str) -> list[str]:
    return [s for s in SECRETS if s in text]


async def test_card_numbers_from_the_engine_reach_no_webhook_outbox_row_or_log(
        bridge_factory: BridgeFactory, stt: TelnyxSttEmulator, receiver: WebhookReceiver,
        tmp_path: Path) -> None:
    stt.script = SCRIPT
    bridge = await bridge_factory(CALLBRIDGE_STT_INTERIM_RESULTS="true",
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

    with sqlite3.connect(tmp_path / "outbox.db") as db:
        bodies = [row[0].decode() for row in db.execute("SELECT body FROM events")]
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
    bridge = await bridge_factory(CALLBRIDGE_STT_INTERIM_RESULTS="true",
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
    with sqlite3.connect(tmp_path / "outbox.db") as db:
        bodies = [row[0].decode() for row in db.execute("SELECT body FROM events")]
    assert bodies and not [b for b in bodies if any(s in b for s in secrets)]


async def test_redaction_can_be_turned_off_explicitly(
        bridge_factory: BridgeFactory, stt: TelnyxSttEmulator,
        receiver: WebhookReceiver) -> None:
    stt.script = SCRIPT
    bridge = await bridge_factory(CALLBRIDGE_REDACTION="off")
    await bridge.wait_for_log("bridge-side redaction is OFF: card numbers, security codes and "
                              "SSNs reach webhooks as the engine wrote them")
    spec = CallSpec("twilio", AudioEncoding.PCMU, {Track.INBOUND: ulaw(SPEECH)},
                    call_id="CA-off")
    events = await run_call(bridge, receiver, spec)
    texts = [e.data["text"] for e in events if e.type == "transcript.final"]
    assert texts == SCRIPT


def dtmf(digit: str, stream_id: str) -> str:
    return json.dumps({"event": "dtmf", "streamSid": stream_id, "sequenceNumber": "9",
                       "dtmf": {"track": "inbound_track", "digit": digit}})


async def call_with_keypresses(bridge: BridgeProcess, call_id: str) -> None:
    spec = CallSpec("twilio", AudioEncoding.PCMU, {Track.INBOUND: ulaw(SPEECH[:16000])},
                    call_id=call_id, stream_id=f"MZ{call_id}")
    messages = build_call(spec)
    stop = messages.pop()
    at = messages[-1][0]
    messages += [(at, dtmf(d, spec.stream_id)) for d in "4111111111111111"]
    messages.append(stop)
    await stream_call(bridge.url("/streams/twilio"), messages, speed=0)


@pytest.mark.parametrize("mode", ["drop", "masked"])
async def test_key_presses_reach_no_webhook_log_or_outbox_as_digits(
        bridge_factory: BridgeFactory, receiver: WebhookReceiver, mode: str) -> None:
    bridge = await bridge_factory(CALLBRIDGE_DTMF=mode)
    await call_with_keypresses(bridge, f"CA-dtmf-{mode}")
    events = await receiver.wait_for(receiver.ended(f"CA-dtmf-{mode}"))
    mine = [e for e in events if e.data["call_id"] == f"CA-dtmf-{mode}"]
    keys = [e for e in mine if e.type == "dtmf"]
    if mode == "drop":
        assert keys == []
    else:
        assert len(keys) == 16 and {e.data["digit"] for e in keys} == {"masked"}
    for event in mine:
        assert "4111" not in event.body.decode()
    assert not any("digit" in line for line in bridge.logs)
    summary = await bridge.wait_for_log("call summary", call_id=f"CA-dtmf-{mode}")
    assert summary["dtmf"] == 16


async def admin(bridge: BridgeProcess, action: str, call_id: str, token: str = TOKEN,
                **query: str) -> tuple[int, dict[str, object] | str]:
    status, body = await bridge.http("POST", f"/calls/{call_id}/{action}", token, **query)
    try:
        return status, json.loads(body)
    except ValueError:
        return status, body


LONG = pcm_program(("silence", 200), ("tone", 800, 400), ("silence", 600),
                   ("tone", 800, 500), ("silence", 600), ("tone", 800, 700),
                   ("silence", 600))


async def test_pause_and_resume_through_the_admin_api(
        bridge_factory: BridgeFactory, stt: TelnyxSttEmulator,
        receiver: WebhookReceiver) -> None:
    bridge = await bridge_factory(CALLBRIDGE_ADMIN_TOKEN=TOKEN)
    spec = CallSpec("twilio", AudioEncoding.PCMU, {Track.INBOUND: ulaw(LONG)},
                    call_id="CA-pause")
    call = asyncio.create_task(stream_call(bridge.url("/streams/twilio"), build_call(spec),
                                           speed=1))
    await receiver.wait_for(lambda events: any(
        e.type == "transcript.final" and e.data["call_id"] == "CA-pause" for e in events))
    assert (await admin(bridge, "pause", "CA-pause", token="wrong-token-0123456789"))[0] == 401
    assert (await admin(bridge, "pause", "CA-nope"))[0] == 404
    status, body = await admin(bridge, "pause", "CA-pause", leg="inbound")
    assert status == 200 and body["paused"] == {"inbound": True}  # type: ignore[index]
    await asyncio.sleep(1.0)  # a second of the call goes by, untranscribed
    status, body = await admin(bridge, "resume", "CA-pause")
    assert status == 200 and body["paused"] == {"inbound": False}  # type: ignore[index]
    await call
    events = await receiver.wait_for(receiver.ended("CA-pause"))
    mine = [e for e in events if e.data["call_id"] == "CA-pause"]
    kinds = [e.type for e in mine]
    assert kinds.index("transcription.paused") < kinds.index("transcription.resumed")
    # The engine got the audio with one gap, on chunk boundaries, and nothing of the gap.
    [session] = stt.sessions
    audio, got = ulaw(LONG), bytes(session.audio)
    start = next(n for n in range(len(got)) if got[n] != audio[n])
    start -= start % 800
    gap = len(audio) - len(got)
    assert 4000 <= gap <= 12000  # about a second withheld
    assert got == audio[:start] + audio[start + gap:]
    [leg] = mine[-1].data["legs"]
    [interval] = leg["redaction"]["paused"]
    assert 500 <= interval["end_ms"] - interval["start_ms"] <= 1600
    finals = [e.data for e in mine if e.type == "transcript.final"]
    assert finals[-1]["end_ms"] >= 3800  # times after the pause stay on the call's clock


async def test_the_admin_api_is_off_without_a_token(bridge: BridgeProcess) -> None:
    status, body = await admin(bridge, "pause", "CA-any")
    assert status == 404 and "CALLBRIDGE_ADMIN_TOKEN" in str(body)


async def test_a_mark_from_the_stream_pauses_and_resumes(
        bridge: BridgeProcess, stt: TelnyxSttEmulator, receiver: WebhookReceiver) -> None:
    spec = CallSpec("twilio", AudioEncoding.PCMU, {Track.INBOUND: ulaw(LONG)},
                    call_id="CA-mark", stream_id="MZmark")
    messages = build_call(spec)
    media = [n for n, (_, text) in enumerate(messages) if '"media"' in text]
    mark = lambda name: json.dumps({"event": "mark", "streamSid": "MZmark",  # noqa: E731
                                    "sequenceNumber": "1", "mark": {"name": name}})
    messages.insert(media[100], (0, mark("callbridge:resume")))
    messages.insert(media[50], (0, mark("callbridge:pause:inbound")))
    await stream_call(bridge.url("/streams/twilio"), messages, speed=0)
    events = await receiver.wait_for(receiver.ended("CA-mark"))
    kinds = [e.type for e in events if e.data["call_id"] == "CA-mark"]
    assert "transcription.paused" in kinds and "transcription.resumed" in kinds
    [session] = stt.sessions
    assert len(session.audio) == len(ulaw(LONG)) - 50 * 160
    assert base64  # the frames above carry base64 payloads built by the simulate client
