"""The S3 artifact store against an S3 protocol server (moto's) on 127.0.0.1."""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bridge.artifacts.store import MANIFEST, PART_BYTES, S3Store, Upload, open_s3_store
from bridge.errors import ArtifactStoreError
from tests.support.s3 import CREDENTIALS, S3Emulator


@pytest.fixture
async def s3() -> AsyncIterator[S3Emulator]:
    async with S3Emulator() as emulator:
        yield emulator


@pytest.fixture
async def store(s3: S3Emulator, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[S3Store]:
    for name, value in CREDENTIALS.items():  # credentials come from the environment only
        monkeypatch.setenv(name, value)
    async with open_s3_store(s3.bucket, "calls/", endpoint_url=s3.url) as opened:
        yield opened


async def test_files_and_manifest_are_stored_under_the_encoded_call_id(
        s3: S3Emulator, store: S3Store, tmp_path: Path) -> None:
    recording = tmp_path / "r.wav"
    recording.write_bytes(b"RIFF" + os.urandom(2 * PART_BYTES + 1000))  # three parts
    await store.save("../CA 1", "stream-9", [
        Upload("transcript.vtt", "text/vtt; charset=utf-8", b"WEBVTT\n"),
        Upload("recording.wav", "audio/wav", recording)])
    objects = await s3.objects()
    assert objects["calls/%2E%2E%2FCA%201/recording.wav"]["Size"] == recording.stat().st_size
    assert sorted(objects) == ["calls/%2E%2E%2FCA%201/_manifest.json",
                               "calls/%2E%2E%2FCA%201/recording.wav",
                               "calls/%2E%2E%2FCA%201/transcript.vtt"]
    assert objects["calls/%2E%2E%2FCA%201/transcript.vtt"]["ContentType"].startswith("text/vtt")
    manifest = await store.manifest("../CA 1")
    assert manifest is not None and manifest.call_id == "../CA 1"
    assert manifest.stream == "stream-9"
    [_, stored] = manifest.files
    assert stored.size == recording.stat().st_size
    read = b"".join([chunk async for chunk in store.open("../CA 1", stored)])
    assert read == recording.read_bytes()
    assert await store.manifest("CA-other") is None


async def test_a_later_stream_replaces_the_earlier_files(s3: S3Emulator,
                                                         store: S3Store) -> None:
    await store.save("CA-1", "a", [Upload("transcript.txt", "text/plain", b"1"),
                                   Upload("recording.wav", "audio/wav", b"RIFF")])
    await store.save("CA-1", "b", [Upload("transcript.txt", "text/plain", b"2")])
    assert sorted(await s3.objects()) == [f"calls/CA-1/{MANIFEST}", "calls/CA-1/transcript.txt"]
    assert await s3.read("calls/CA-1/transcript.txt") == b"2"


async def test_the_sweep_deletes_objects_older_than_the_limit_and_nothing_else(
        s3: S3Emulator, store: S3Store) -> None:
    for call_id in ("old", "new"):
        await store.save(call_id, "", [Upload("transcript.txt", "text/plain", b"x")])
    await s3.put("elsewhere/keep.txt", b"not ours")
    for key in ("calls/old/transcript.txt", f"calls/old/{MANIFEST}", "elsewhere/keep.txt"):
        s3.age(key, days=10)
    assert await store.sweep(before=time.time() - 86400) == 1
    assert sorted(await s3.objects()) == ["calls/new/_manifest.json",
                                          "calls/new/transcript.txt", "elsewhere/keep.txt"]


async def test_a_missing_bucket_is_a_store_error(s3: S3Emulator,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    async with open_s3_store("no-such-bucket-here", "", endpoint_url=s3.url) as missing:
        with pytest.raises(ArtifactStoreError):
            await missing.save("CA-1", "", [Upload("transcript.txt", "text/plain", b"x")])
