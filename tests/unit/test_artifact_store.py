"""The local artifact store on real files: names from hostile call ids, modes, atomic writes,
manifests read as untrusted, retention by the folder's time."""

from __future__ import annotations

import json
import os
import stat
import time
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge.artifacts.store import (
    MANIFEST,
    CallArtifacts,
    LocalStore,
    StoredFile,
    Upload,
    call_folder,
    is_artifact_name,
)
from bridge.config import load_settings
from bridge.errors import ArtifactStoreError, ConfigError


@given(st.text(min_size=1, max_size=400))
def test_a_call_folder_is_one_safe_name_whatever_the_call_id(call_id: str) -> None:
    folder = call_folder(call_id)
    assert folder not in ("", ".", "..")
    assert "/" not in folder and "\\" not in folder and "\x00" not in folder
    assert len(folder.encode()) <= 200
    assert all(c.isascii() and (c.isalnum() or c in "%_-~") for c in folder)


@pytest.mark.parametrize("call_id", ["..", ".", "../../etc", "a/b", "~x", "%41", "A"])
def test_call_folders_of_different_ids_differ(call_id: str) -> None:
    others = {"..", ".", "../../etc", "a/b", "~x", "%41", "A"} - {call_id}
    assert all(call_folder(call_id) != call_folder(other) for other in others)
    assert call_folder("CA0123-abc_9") == "CA0123-abc_9"  # ordinary ids stay readable
    assert call_folder("../x") == "%2E%2E%2Fx"


@pytest.mark.parametrize("name", ["../x.txt", "_manifest.json", ".hidden.txt", "a/b.txt",
                                  "Transcript.json", "transcript", "x.toolongextension", ""])
def test_artifact_names_are_plain_lower_case_file_names(name: str) -> None:
    assert not is_artifact_name(name)
    assert is_artifact_name("transcript.vtt") and is_artifact_name("recording.wav")


@pytest.mark.parametrize("data", [
    b"", b"not json", b"[]", b'{"call_id": "x"}',
    json.dumps({"call_id": "x", "stream": "", "stored_at": "t",
                "files": [{"name": "../../etc/passwd", "content_type": "x", "size": 1}]}).encode(),
    json.dumps({"call_id": "x", "stream": "", "stored_at": "t",
                "files": [{"name": "a.txt", "content_type": "x", "size": -1}]}).encode(),
    json.dumps({"call_id": 5, "stream": "", "stored_at": "t", "files": []}).encode(),
    json.dumps({"call_id": "x", "stream": "", "stored_at": "t", "files": [
        {"name": "a.txt", "content_type": "text/plain\r\nSet-Cookie: a=b", "size": 1}]}).encode(),
    json.dumps({"call_id": "x", "stream": "", "stored_at": "t", "files": "a.txt"}).encode(),
    b"{" + b" " * 70_000 + b"}",
])
def test_a_manifest_that_is_not_one_reads_as_none(data: bytes) -> None:
    assert CallArtifacts.decode(data) is None


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


async def test_files_are_written_0600_in_0700_folders_with_a_manifest(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "artifacts")
    store.prepare()
    source = tmp_path / "recording-source.wav"
    source.write_bytes(b"RIFF" + bytes(300_000))
    await store.save("../evil", "stream-1", [Upload("transcript.txt", "text/plain", b"hi\n"),
                                             Upload("recording.wav", "audio/wav", source)])
    folder = tmp_path / "artifacts" / "%2E%2E%2Fevil"
    assert sorted(p.name for p in folder.iterdir()) == [MANIFEST, "recording.wav",
                                                        "transcript.txt"]
    assert mode(tmp_path / "artifacts") == 0o700 and mode(folder) == 0o700
    assert all(mode(p) == 0o600 for p in folder.iterdir())
    assert not (tmp_path / "evil").exists()
    manifest = await store.manifest("../evil")
    assert manifest is not None and manifest.stream == "stream-1"
    assert manifest.files == (StoredFile("transcript.txt", "text/plain", 3),
                              StoredFile("recording.wav", "audio/wav", 300_004))
    read = b"".join([chunk async for chunk in store.open("../evil", manifest.files[1])])
    assert read == source.read_bytes()
    assert source.exists()  # the store reads a file, it does not take it


async def test_a_later_stream_under_the_same_id_replaces_the_files(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    await store.save("CA-1", "first", [Upload("transcript.txt", "text/plain", b"one"),
                                       Upload("recording.wav", "audio/wav", b"RIFF")])
    await store.save("CA-1", "second", [Upload("transcript.txt", "text/plain", b"two")])
    assert sorted(p.name for p in (tmp_path / "CA-1").iterdir()) == [MANIFEST, "transcript.txt"]
    manifest = await store.manifest("CA-1")
    assert manifest is not None and manifest.stream == "second"
    assert (tmp_path / "CA-1" / "transcript.txt").read_bytes() == b"two"
    assert await store.manifest("CA-2") is None


async def test_unsafe_or_repeated_names_are_refused_before_anything_is_written(
        tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    for uploads in ([Upload("../x.txt", "text/plain", b"")],
                    [Upload("a.txt", "text/plain", b""), Upload("a.txt", "text/plain", b"")],
                    [Upload(MANIFEST, "application/json", b"{}")],
                    [Upload("a.txt", "text/plain\nX-Evil: 1", b"")]):
        with pytest.raises(ArtifactStoreError):
            await store.save("CA-1", "", uploads)
    assert listing(tmp_path) == []


async def test_a_write_that_fails_leaves_no_partial_file_and_says_so(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    missing = tmp_path / "gone.wav"
    with pytest.raises(ArtifactStoreError):
        await store.save("CA-1", "", [Upload("transcript.txt", "text/plain", b"x"),
                                      Upload("recording.wav", "audio/wav", missing)])
    assert await store.manifest("CA-1") is None  # nothing listed
    assert [p.name for p in (tmp_path / "CA-1").iterdir()] == ["transcript.txt"]


async def test_the_sweep_deletes_calls_whose_folder_is_older_than_the_limit(
        tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    for call_id in ("old", "new"):
        await store.save(call_id, "", [Upload("transcript.txt", "text/plain", b"x")])
    week_ago = time.time() - 7 * 86400
    os.utime(tmp_path / "old", (week_ago, week_ago))
    (tmp_path / "unrelated.txt").write_text("kept: not a call folder")
    assert await store.sweep(time.time() - 86400) == 1
    assert listing(tmp_path) == ["new", "unrelated.txt"]
    assert await store.manifest("old") is None and await store.manifest("new") is not None


@pytest.mark.parametrize(("environ", "setting"), [
    ({"CALLBRIDGE_ARTIFACTS_STORE": "ftp"}, "CALLBRIDGE_ARTIFACTS_STORE"),
    ({"CALLBRIDGE_ARTIFACTS_STORE": "s3"}, "artifacts.s3_bucket"),
    ({"CALLBRIDGE_ARTIFACTS_STORE": "s3", "CALLBRIDGE_ARTIFACTS_S3_BUCKET": "Bad_Bucket"},
     "CALLBRIDGE_ARTIFACTS_S3_BUCKET"),
    ({"CALLBRIDGE_ARTIFACTS_STORE": "s3", "CALLBRIDGE_ARTIFACTS_S3_BUCKET": "bucket\n"},
     "CALLBRIDGE_ARTIFACTS_S3_BUCKET"),
    ({"CALLBRIDGE_ARTIFACTS_S3_REGION": "eu-west-1\n"}, "CALLBRIDGE_ARTIFACTS_S3_REGION"),
    ({"CALLBRIDGE_ARTIFACTS_S3_PREFIX": "../up"}, "CALLBRIDGE_ARTIFACTS_S3_PREFIX"),
    ({"CALLBRIDGE_ARTIFACTS_S3_ENDPOINT_URL": "s3.example"},
     "CALLBRIDGE_ARTIFACTS_S3_ENDPOINT_URL"),
    ({"CALLBRIDGE_ARTIFACTS_RETENTION_DAYS": "-1"}, "CALLBRIDGE_ARTIFACTS_RETENTION_DAYS"),
    ({"CALLBRIDGE_ARTIFACTS_RETENTION_CHECK_S": "1"}, "CALLBRIDGE_ARTIFACTS_RETENTION_CHECK_S"),
])
def test_a_wrong_artifacts_setting_is_refused_by_its_name(environ: dict[str, str],
                                                          setting: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(environ={"TELNYX_API_KEY": "k", **environ})
    assert caught.value.setting == setting


def test_the_local_folder_defaults_to_beside_the_outbox() -> None:
    settings = load_settings(environ={"TELNYX_API_KEY": "k",
                                      "CALLBRIDGE_OUTBOX_PATH": "/var/lib/cb/outbox.db"})
    assert not settings.artifacts.enabled
    assert settings.artifacts.local_dir(settings.outbox.path) == Path(
        "/var/lib/cb/callbridge-artifacts")
