"""Call artifacts through `callbridge serve`: transcript files on disk and in an S3 protocol
server, redacted as the webhooks were; retention; the admin API's list and downloads."""

from __future__ import annotations

import html
import io
import json
import os
import stat
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import webvtt
from yarl import URL

from bridge.artifacts.store import MANIFEST, LocalStore, Upload, call_folder
from bridge.events import AudioEncoding, Track
from bridge.simulate import CallSpec
from tests.conftest import BridgeFactory, BridgeProcess, run_call
from tests.support.admin import TOKEN, start_call, token_for
from tests.support.audio import ulaw
from tests.support.receiver import WebhookReceiver
from tests.support.s3 import CREDENTIALS, S3Emulator
from tests.support.speech import AGENT_LIVE, CALLER_LIVE, SCRIPT, SPEECH, leaked
from tests.support.telnyx_stt import TelnyxSttEmulator

pytestmark = pytest.mark.e2e

TRANSCRIPTS = ["transcript.json", "transcript.srt", "transcript.txt", "transcript.vtt"]


@pytest.fixture
async def s3() -> AsyncIterator[S3Emulator]:
    async with S3Emulator() as emulator:
        yield emulator


async def get(bridge: BridgeProcess, path: str,
              token: str | None = None) -> tuple[int, bytes, dict[str, str]]:
    """GET on the bridge as the test writes the path (no normalisation): status, body,
    headers. ``token`` goes as a bearer header."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    url = f"http://127.0.0.1:{bridge.port}{path}"
    async with aiohttp.ClientSession() as session, session.get(
            URL(url, encoded=True), headers=headers) as response:
        return response.status, await response.read(), dict(response.headers)


def final_texts(receiver: WebhookReceiver, call_id: str) -> list[str]:
    return [e.data["text"] for e in receiver.of_call(call_id) if e.type == "transcript.final"]


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


async def test_transcript_files_are_kept_0600_and_redacted_exactly_as_the_webhooks(
        bridge_factory: BridgeFactory, stt: TelnyxSttEmulator, receiver: WebhookReceiver,
        tmp_path: Path) -> None:
    stt.script = SCRIPT  # a card number and a security code, spoken
    store = tmp_path / "kept"
    bridge = await bridge_factory(CALLBRIDGE_ARTIFACTS_ENABLED="true",
                                  CALLBRIDGE_ARTIFACTS_DIR=str(store))
    spec = CallSpec("twilio", AudioEncoding.PCMU, {Track.INBOUND: ulaw(SPEECH)},
                    call_id="CA-files", custom_parameters={"queue": "billing"})
    await run_call(bridge, receiver, spec, speed=2, within_s=30)
    stored = await bridge.wait_for_log("call artifacts stored", call_id="CA-files")
    assert sorted(stored["artifacts"]) == TRANSCRIPTS

    folder = store / "CA-files"
    assert sorted(p.name for p in folder.iterdir()) == sorted([*TRANSCRIPTS, MANIFEST])
    assert mode(store) == 0o700 and mode(folder) == 0o700
    assert all(mode(p) == 0o600 for p in folder.iterdir())
    published = final_texts(receiver, "CA-files")
    assert published == ["okay my card number is [credit_card]", "and the cvv is",
                         "[card_security_code] thanks"]
    for path in folder.iterdir():
        text = path.read_text()
        assert leaked(text) == [], path.name
        assert not any(word in text for word in ("four", "seven")), path.name

    document = json.loads((folder / "transcript.json").read_text())
    assert [u["text"] for u in document["utterances"]] == published
    assert {u["speaker"] for u in document["utterances"]} == {"caller"}
    assert document["utterances"][0]["redactions"] == [{"type": "credit_card", "count": 1}]
    assert document["custom_parameters"] == {"queue": "billing"}
    assert document["reason"] == "stopped"
    finals = [e.data for e in receiver.of_call("CA-files") if e.type == "transcript.final"]
    assert [(u["start_ms"], u["end_ms"]) for u in document["utterances"]] == [
        (f["start_ms"], f["end_ms"]) for f in finals]

    captions = webvtt.from_buffer(io.StringIO((folder / "transcript.vtt").read_text())).captions
    assert [html.unescape(c.text) for c in captions] == published
    assert {c.voice for c in captions} == {"Caller"}
    assert (folder / "transcript.txt").read_text().splitlines() == [
        f"Caller: {text}" for text in published]
    assert (folder / "transcript.srt").read_text().count(" --> ") == 3
    assert leaked("\n".join(bridge.raw_stderr)) == []


async def test_without_the_setting_nothing_is_kept_and_there_is_no_listing(
        bridge_factory: BridgeFactory, receiver: WebhookReceiver, tmp_path: Path) -> None:
    bridge = await bridge_factory(CALLBRIDGE_SERVER_ADMIN_TOKEN=TOKEN)
    spec = CallSpec("twilio", AudioEncoding.PCMU, {Track.INBOUND: ulaw(CALLER_LIVE)},
                    call_id="CA-none")
    await run_call(bridge, receiver, spec)
    assert [name for name in listing(tmp_path) if not name.startswith("outbox")] == []
    status, body, _ = await get(bridge, "/calls/CA-none/artifacts", TOKEN)
    assert status == 404 and b"artifacts.enabled" in body
    assert bridge.log_events("call artifacts stored") == []


async def test_the_admin_api_lists_and_serves_them_to_the_admin_and_transcripts_to_viewers(
        bridge_factory: BridgeFactory, receiver: WebhookReceiver, tmp_path: Path) -> None:
    store = tmp_path / "kept"
    bridge = await bridge_factory(CALLBRIDGE_SERVER_ADMIN_TOKEN=TOKEN,
                                  CALLBRIDGE_ARTIFACTS_ENABLED="true",
                                  CALLBRIDGE_ARTIFACTS_DIR=str(store))
    calls = {call_id: start_call(bridge, call_id, {Track.INBOUND: ulaw(CALLER_LIVE),
                                                   Track.OUTBOUND: ulaw(AGENT_LIVE)})
             for call_id in ("CA-admin", "CA-other")}
    tokens = {}
    for call_id in calls:
        await bridge.wait_for_log("call started", call_id=call_id)
        tokens[call_id] = (await token_for(bridge, call_id))["token"]
    for call_id, call in calls.items():
        assert (await call).close_code == 1000
        await bridge.wait_for_log("call artifacts stored", call_id=call_id)
    # What another part of the bridge (the recording) hands the store lands beside them.
    recording = tmp_path / "recording.wav"
    recording.write_bytes(b"RIFF-not-for-viewers")
    manifest = await LocalStore(store).manifest("CA-admin")
    assert manifest is not None
    await LocalStore(store).save("CA-admin", manifest.stream, [
        *(Upload(f.name, f.content_type, store / "CA-admin" / f.name) for f in manifest.files),
        Upload("recording.wav", "audio/wav", recording)])

    status, body, headers = await get(bridge, "/calls/CA-admin/artifacts", TOKEN)
    assert status == 200 and headers["Cache-Control"] == "no-store"
    listing: dict[str, Any] = json.loads(body)
    by_name = {a["name"]: a for a in listing["artifacts"]}
    assert sorted(by_name) == sorted([*TRANSCRIPTS, "recording.wav"])
    assert by_name["transcript.vtt"]["content_type"].startswith("text/vtt")
    for name, entry in by_name.items():
        assert entry["path"] == f"/calls/CA-admin/artifacts/{name}"
        status, content, headers = await get(bridge, entry["path"], TOKEN)
        assert status == 200 and content == (store / "CA-admin" / name).read_bytes()
        assert len(content) == entry["size"]
        assert headers["Content-Disposition"] == f'attachment; filename="{name}"'
        assert headers["X-Content-Type-Options"] == "nosniff"
    assert b"Caller: tone 400 hertz" in (await get(
        bridge, "/calls/CA-admin/artifacts/transcript.txt", TOKEN))[1]
    assert b"Agent: tone 1000 hertz" in (await get(
        bridge, "/calls/CA-admin/artifacts/transcript.txt", TOKEN))[1]

    # the live feed's viewer token of that call: its transcript files, never the recording
    viewer = tokens["CA-admin"]
    status, body, _ = await get(bridge, f"/calls/CA-admin/artifacts?token={viewer}")
    assert status == 200
    assert sorted(a["name"] for a in json.loads(body)["artifacts"]) == TRANSCRIPTS
    for name in TRANSCRIPTS:
        status, content, _ = await get(bridge, f"/calls/CA-admin/artifacts/{name}?token={viewer}")
        assert status == 200 and content == (store / "CA-admin" / name).read_bytes()
    status, content, _ = await get(
        bridge, f"/calls/CA-admin/artifacts/recording.wav?token={viewer}")
    assert status == 403 and b"RIFF" not in content

    # another call's token, no token, a wrong one, an expired one: 401
    expired = "1000000000." + viewer.partition(".")[2]
    for query in (f"?token={tokens['CA-other']}", "", "?token=guess", f"?token={expired}"):
        for path in ("/calls/CA-admin/artifacts", "/calls/CA-admin/artifacts/transcript.txt"):
            assert (await get(bridge, path + query))[0] == 401, (path, query)
    assert (await get(bridge, "/calls/CA-admin/artifacts", "wrong-token-0123456789"))[0] == 401
    assert (await get(bridge, f"/calls/CA-missing/artifacts?token={viewer}"))[0] == 401

    # unknown calls and names, and ways out of the call's folder: 404
    (store / "CA-admin" / "notes.txt").write_text("on disk, but not one of the call's files")
    for path in ("/calls/CA-missing/artifacts", "/calls/CA-missing/artifacts/transcript.txt",
                 "/calls/CA-admin/artifacts/notes.txt", "/calls/CA-admin/artifacts/_manifest.json",
                 "/calls/CA-admin/artifacts/..%2F..%2Foutbox.db",
                 "/calls/CA-admin/artifacts/%2E%2E", "/calls/..%2Fkept%2FCA-admin/artifacts",
                 "/calls/%2E%2E/artifacts/transcript.txt",
                 f"/calls/{call_folder('x/../CA-admin')}/artifacts/transcript.txt",
                 "/calls/CA-admin/artifacts/.transcript.txt.tmp"):
        status, content, _ = await get(bridge, path, TOKEN)
        assert status == 404, path
        assert b"outbox" not in content and b"on disk" not in content


async def test_the_object_store_receives_them_and_any_instance_serves_them(
        bridge_factory: BridgeFactory, receiver: WebhookReceiver, s3: S3Emulator,
        tmp_path: Path) -> None:
    settings = {"CALLBRIDGE_SERVER_ADMIN_TOKEN": TOKEN, "CALLBRIDGE_ARTIFACTS_ENABLED": "true",
                **s3.environment(prefix="calls/")}
    bridge = await bridge_factory(**settings)
    spec = CallSpec("twilio", AudioEncoding.PCMU, {Track.INBOUND: ulaw(CALLER_LIVE)},
                    call_id="CA s3/1")
    await run_call(bridge, receiver, spec)
    await bridge.wait_for_log("call artifacts stored", call_id="CA s3/1")
    objects = await s3.objects()
    folder = "calls/CA%20s3%2F1/"
    assert sorted(objects) == sorted(f"{folder}{name}" for name in [*TRANSCRIPTS, MANIFEST])
    assert objects[f"{folder}transcript.json"]["ContentType"] == "application/json"
    text = await s3.read(f"{folder}transcript.txt")
    assert text.decode().splitlines() == [f"Caller: {t}" for t in final_texts(receiver,
                                                                              "CA s3/1")]
    assert CREDENTIALS["AWS_SECRET_ACCESS_KEY"] not in "\n".join(bridge.raw_stderr)

    # another instance sharing the store, which never saw the call, serves its files
    other = await bridge_factory(CALLBRIDGE_OUTBOX_PATH=str(tmp_path / "other.db"), **settings)
    status, body, _ = await get(other, "/calls/CA%20s3%2F1/artifacts", TOKEN)
    assert status == 200
    assert sorted(a["name"] for a in json.loads(body)["artifacts"]) == TRANSCRIPTS
    status, content, _ = await get(other, "/calls/CA%20s3%2F1/artifacts/transcript.txt", TOKEN)
    assert status == 200 and content == text


async def test_retention_deletes_calls_older_than_the_limit_on_disk(
        bridge_factory: BridgeFactory, tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "kept")
    store.prepare()
    for call_id in ("CA-old", "CA-recent"):
        await store.save(call_id, "", [Upload("transcript.txt", "text/plain", b"x\n")])
    ten_days_ago = time.time() - 10 * 86400
    os.utime(tmp_path / "kept" / "CA-old", (ten_days_ago, ten_days_ago))
    bridge = await bridge_factory(CALLBRIDGE_ARTIFACTS_ENABLED="true",
                                  CALLBRIDGE_ARTIFACTS_DIR=str(tmp_path / "kept"),
                                  CALLBRIDGE_ARTIFACTS_RETENTION_DAYS="7")
    sweep = await bridge.wait_for_log("artifacts retention sweep")
    assert sweep["deleted"] == 1
    assert sorted(p.name for p in (tmp_path / "kept").iterdir()) == ["CA-recent"]


async def test_retention_deletes_objects_older_than_the_limit_in_the_object_store(
        bridge_factory: BridgeFactory, s3: S3Emulator) -> None:
    for call_id in ("CA-old", "CA-recent"):
        for name in ("transcript.txt", MANIFEST):
            await s3.put(f"calls/{call_id}/{name}", b"{}")
    await s3.put("other-app/CA-old.txt", b"not the bridge's")
    for key in ("calls/CA-old/transcript.txt", f"calls/CA-old/{MANIFEST}",
                "other-app/CA-old.txt"):
        s3.age(key, days=10)
    bridge = await bridge_factory(CALLBRIDGE_ARTIFACTS_ENABLED="true",
                                  CALLBRIDGE_ARTIFACTS_RETENTION_DAYS="7",
                                  **s3.environment(prefix="calls/"))
    sweep = await bridge.wait_for_log("artifacts retention sweep")
    assert sweep["deleted"] == 1
    assert sorted(await s3.objects()) == [f"calls/CA-recent/{MANIFEST}",
                                          "calls/CA-recent/transcript.txt",
                                          "other-app/CA-old.txt"]


async def test_a_store_that_fails_costs_one_log_line_and_no_event(
        bridge_factory: BridgeFactory, receiver: WebhookReceiver, s3: S3Emulator,
        refused_port: int) -> None:
    environment = {**s3.environment(), "CALLBRIDGE_ARTIFACTS_ENABLED": "true",
                   "CALLBRIDGE_ARTIFACTS_S3_ENDPOINT_URL": f"http://127.0.0.1:{refused_port}"}
    bridge = await bridge_factory(**environment)
    spec = CallSpec("twilio", AudioEncoding.PCMU, {Track.INBOUND: ulaw(CALLER_LIVE)},
                    call_id="CA-lost")
    events = await run_call(bridge, receiver, spec)
    assert [e.type for e in events][-1] == "call.ended"
    assert final_texts(receiver, "CA-lost") == ["tone 400 hertz", "tone 700 hertz"]
    failed = await bridge.wait_for_log("call artifacts not stored", call_id="CA-lost")
    assert failed["level"] == "warning" and failed["error"]
    await bridge.wait_for_log("call summary")  # the call's own summary still follows
    assert await s3.objects() == {}
    status, metrics, _ = await get(bridge, "/metrics")
    assert status == 200
    assert b'callbridge_call_artifacts_total{outcome="failed"} 1.0' in metrics
    assert b'callbridge_call_artifacts_total{outcome="stored"} 0.0' in metrics


async def test_a_directory_that_cannot_be_used_stops_start_up_naming_the_setting(
        bridge_factory: BridgeFactory, tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(RuntimeError, match=r"artifacts\.dir|CALLBRIDGE_ARTIFACTS_DIR"):
        await bridge_factory(CALLBRIDGE_ARTIFACTS_ENABLED="true",
                             CALLBRIDGE_ARTIFACTS_DIR=str(blocker / "sub"))
