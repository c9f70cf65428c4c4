"""Where a call's artifacts are kept: a local folder, or an S3-compatible object store.

Each call has one folder (local) or key prefix (S3), named by ``call_folder`` from its call
key: call ids come from the network, so the name is an encoding of the id that can never be
a path step (``..``), hold a separator or exceed a file name's length. In it: the artifact
files, and ``_manifest.json`` (the call id, the live-feed stream whose viewer tokens open
its transcript files, when it was stored, each file's name, media type and size), written
last: a call's artifacts are listed only once all of them are stored. A later stream that
announces the same call id replaces the earlier one's files.

``LocalStore`` writes each file atomically (a temporary file in the same folder, flushed,
then renamed over the name), files 0600 and folders 0700; its blocking file work runs in a
thread, never on the event loop. ``S3Store`` talks to the store through aiobotocore;
credentials come from the environment only (``AWS_ACCESS_KEY_ID`` and
``AWS_SECRET_ACCESS_KEY``, or a role the environment names, as any AWS SDK reads them).

Retention (``sweep``) deletes the calls stored before a point in time: by the folder's
modification time locally, by each object's ``LastModified`` in S3. ``retention_sweeps`` runs
it at start and then periodically.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import re
import secrets
import shutil
import time
from collections.abc import AsyncGenerator, AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Final, Protocol

import structlog

from bridge.config import Settings, given_as
from bridge.errors import ArtifactStoreError, ConfigError

if TYPE_CHECKING:
    from types_aiobotocore_s3 import S3Client
    from types_aiobotocore_s3.type_defs import CompletedPartTypeDef

log = structlog.get_logger("bridge.artifacts")

MANIFEST: Final = "_manifest.json"
# Artifact names: a lower-case stem and extension ("transcript.vtt", "recording.wav"). Never
# a path step, never the manifest (which starts with "_").
ARTIFACT_NAME: Final = re.compile(r"^[a-z0-9][a-z0-9_-]{0,40}\.[a-z0-9]{1,8}$")
# A media type as a download's Content-Type carries it: read back from a shared store, it
# is checked before it reaches a header.
CONTENT_TYPE: Final = re.compile(r"^[a-z0-9][a-z0-9!#$&^_.+-]{0,63}/[a-z0-9][a-z0-9!#$&^_.+-]{0,63}"
                                 r"(; ?[a-z0-9_-]{1,20}=[a-z0-9_.-]{1,40})?$", re.IGNORECASE)
MAX_MANIFEST_BYTES: Final = 64 * 1024
MAX_FILES: Final = 32  # artifacts per call
CHUNK_BYTES: Final = 256 * 1024  # reads and downloads go in pieces of this size
# S3 multipart uploads: parts of 8 MiB (S3 wants at least 5 MiB but the last, and at most
# 10,000 parts: 78 GiB, far beyond any call's recording).
PART_BYTES: Final = 8 * 1024 * 1024
# Encoded call ids longer than this are named by their hash: file names have 255 bytes.
MAX_FOLDER_NAME: Final = 180
_KEPT_AS_IS: Final = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")


def call_folder(call_key: str) -> str:
    """The folder (or key prefix) of a call: its id with every byte outside ``A-Za-z0-9_-``
    written as ``%XX``, or, when that is long, ``~`` and its SHA-256 (``~`` is always
    encoded, so the two forms never meet). Never empty, ``.``, ``..`` or a path."""
    raw = call_key.encode("utf-8", "surrogatepass")
    encoded = "".join(chr(b) if b in _KEPT_AS_IS else f"%{b:02X}" for b in raw)
    if not encoded or len(encoded) > MAX_FOLDER_NAME:
        return "~" + hashlib.sha256(raw).hexdigest()
    return encoded


def is_artifact_name(name: str) -> bool:
    return ARTIFACT_NAME.fullmatch(name) is not None


def is_content_type(value: str) -> bool:
    return CONTENT_TYPE.fullmatch(value) is not None


@dataclass(frozen=True, slots=True)
class Upload:
    """One file to store: its bytes, or a file on disk (read, not removed)."""

    name: str
    content_type: str
    body: bytes | Path


@dataclass(frozen=True, slots=True)
class StoredFile:
    name: str
    content_type: str
    size: int


@dataclass(frozen=True, slots=True)
class CallArtifacts:
    """A call's manifest: what is stored for it, and whose viewer tokens open its
    transcript files (``stream``: the live feed's stream id, or "" when there was none)."""

    call_id: str
    stream: str
    stored_at: str  # ISO 8601, UTC
    files: tuple[StoredFile, ...]

    def find(self, name: str) -> StoredFile | None:
        return next((f for f in self.files if f.name == name), None)

    def encode(self) -> bytes:
        return json.dumps({
            "call_id": self.call_id, "stream": self.stream, "stored_at": self.stored_at,
            "files": [{"name": f.name, "content_type": f.content_type, "size": f.size}
                      for f in self.files]}).encode()

    @classmethod
    def decode(cls, data: bytes) -> CallArtifacts | None:
        """A manifest read back; None for anything that is not one (a shared store is
        written by other instances and other tools: it is read as untrusted)."""
        if len(data) > MAX_MANIFEST_BYTES:
            return None
        try:
            raw = json.loads(data)
            files = tuple(StoredFile(f["name"], f["content_type"], f["size"])
                          for f in raw["files"][:MAX_FILES])
            manifest = cls(raw["call_id"], raw["stream"], raw["stored_at"], files)
        except (ValueError, KeyError, TypeError, IndexError):
            return None
        fields_ok = all(isinstance(v, str) for v in
                        (manifest.call_id, manifest.stream, manifest.stored_at))
        files_ok = all(isinstance(f.name, str) and is_artifact_name(f.name)
                       and isinstance(f.content_type, str) and is_content_type(f.content_type)
                       and type(f.size) is int and f.size >= 0 for f in files)
        return manifest if fields_ok and files_ok else None


class ArtifactStore(Protocol):
    """Where artifacts go; see the module docstring. Errors are ``ArtifactStoreError``."""

    description: str  # for logs: "local /var/lib/callbridge/artifacts", "s3 bucket/prefix"

    async def save(self, call_key: str, stream: str, uploads: Sequence[Upload]) -> None:
        """Store a call's files, then its manifest (replacing any earlier ones)."""

    async def manifest(self, call_key: str) -> CallArtifacts | None:
        """What is stored for a call; None when nothing is (or not all of it yet)."""

    def open(self, call_key: str, file: StoredFile) -> AsyncGenerator[bytes, None]:
        """One stored file's bytes, in pieces (raises ``ArtifactStoreError`` if it went)."""

    async def sweep(self, before: float) -> int:
        """Delete every call stored before ``before`` (Unix seconds): how many went."""


def manifest_for(call_key: str, stream: str, uploads: Sequence[Upload],
                 sizes: Sequence[int]) -> CallArtifacts:
    stored_at = datetime.now(UTC).isoformat(timespec="seconds")
    return CallArtifacts(call_key, stream, stored_at, tuple(
        StoredFile(u.name, u.content_type, size) for u, size in zip(uploads, sizes, strict=True)))


def _check_uploads(uploads: Sequence[Upload]) -> None:
    names = [u.name for u in uploads]
    bad = [n for n in names if not is_artifact_name(n)]
    if bad or len(set(names)) != len(names) or len(names) > MAX_FILES:
        raise ArtifactStoreError("artifact names must be unique, at most "
                                 f"{MAX_FILES}, and plain lower-case file names")
    if not all(is_content_type(u.content_type) for u in uploads):
        raise ArtifactStoreError("an artifact's media type is not one (type/subtype)")


class LocalStore:
    """Artifacts in a folder on this machine; see the module docstring."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.description = f"local {root}"

    def prepare(self) -> None:
        """Create the folder (0700) if need be; raises ``OSError`` if it cannot be used."""
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        probe = self.root / f".probe-{secrets.token_hex(4)}"
        probe.touch(mode=0o600)
        probe.unlink()

    async def save(self, call_key: str, stream: str, uploads: Sequence[Upload]) -> None:
        _check_uploads(uploads)
        try:
            await asyncio.to_thread(self._save, call_key, stream, uploads)
        except OSError as exc:
            raise ArtifactStoreError(f"cannot write to {self.root}: {exc.strerror}") from exc

    def _save(self, call_key: str, stream: str, uploads: Sequence[Upload]) -> None:
        folder = self.root / call_folder(call_key)
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        sizes = [_write_atomically(folder / u.name, u.body) for u in uploads]
        manifest = manifest_for(call_key, stream, uploads, sizes)
        _write_atomically(folder / MANIFEST, manifest.encode())
        kept = {MANIFEST, *(u.name for u in uploads)}
        for entry in folder.iterdir():  # an earlier stream's files under the same call id
            if entry.name not in kept and not entry.name.startswith("."):
                entry.unlink(missing_ok=True)

    async def manifest(self, call_key: str) -> CallArtifacts | None:
        path = self.root / call_folder(call_key) / MANIFEST
        try:
            data = await asyncio.to_thread(_read_bounded, path, MAX_MANIFEST_BYTES + 1)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise ArtifactStoreError(f"cannot read {self.root}: {exc.strerror}") from exc
        return CallArtifacts.decode(data)

    async def open(self, call_key: str, file: StoredFile) -> AsyncGenerator[bytes, None]:
        path = self.root / call_folder(call_key) / file.name
        try:
            handle = await asyncio.to_thread(path.open, "rb")
        except OSError as exc:
            raise ArtifactStoreError(f"cannot read {file.name}: {exc.strerror}") from exc
        try:
            while chunk := await asyncio.to_thread(handle.read, CHUNK_BYTES):
                yield chunk
        finally:
            handle.close()

    async def sweep(self, before: float) -> int:
        return await asyncio.to_thread(self._sweep, before)

    def _sweep(self, before: float) -> int:
        deleted = 0
        with os.scandir(self.root) as entries:
            for entry in entries:
                if entry.name.startswith(".") or not entry.is_dir(follow_symlinks=False):
                    continue
                if entry.stat(follow_symlinks=False).st_mtime < before:
                    shutil.rmtree(entry.path, ignore_errors=True)
                    deleted += 1
        return deleted


def _write_atomically(path: Path, body: bytes | Path) -> int:
    """Write ``body`` to ``path`` through a temporary file renamed over it: a reader sees
    the old file or the whole new one, never a part. Returns the size written."""
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    size = 0
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(descriptor, "wb") as out:
            if isinstance(body, bytes):
                out.write(body)
                size = len(body)
            else:
                with body.open("rb") as source:
                    while chunk := source.read(CHUNK_BYTES):
                        out.write(chunk)
                        size += len(chunk)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            temporary.unlink()
        raise
    return size


def _read_bounded(path: Path, limit: int) -> bytes:
    with path.open("rb") as handle:
        return handle.read(limit)


class S3Store:
    """Artifacts in an S3 bucket (or an S3-compatible store); see the module docstring.

    Built around an open aiobotocore client (``open_s3_store``). Keys are
    ``<prefix><call folder>/<name>``.
    """

    def __init__(self, client: S3Client, bucket: str, prefix: str) -> None:
        self._client = client
        self._bucket = bucket
        self._prefix = prefix
        self.description = f"s3 {bucket}/{prefix}"

    def _key(self, call_key: str, name: str) -> str:
        return f"{self._prefix}{call_folder(call_key)}/{name}"

    async def save(self, call_key: str, stream: str, uploads: Sequence[Upload]) -> None:
        _check_uploads(uploads)
        sizes = []
        with _s3_errors("writing to"):
            for upload in uploads:
                key = self._key(call_key, upload.name)
                if isinstance(upload.body, bytes):
                    await self._client.put_object(Bucket=self._bucket, Key=key,
                                                  Body=upload.body,
                                                  ContentType=upload.content_type)
                    sizes.append(len(upload.body))
                else:
                    sizes.append(await self._put_file(key, upload.body, upload.content_type))
            manifest = manifest_for(call_key, stream, uploads, sizes)
            await self._client.put_object(
                Bucket=self._bucket, Key=self._key(call_key, MANIFEST), Body=manifest.encode(),
                ContentType="application/json")
            kept = {MANIFEST, *(u.name for u in uploads)}
            folder = f"{self._prefix}{call_folder(call_key)}/"
            stale = [key for key, _ in await self._objects(folder)
                     if key.rpartition("/")[2] not in kept]
            await self._delete(stale)

    async def _put_file(self, key: str, path: Path, content_type: str) -> int:
        """Upload a file in parts of ``PART_BYTES``, each read in a thread: memory stays
        bounded whatever the file's size (a recording), and the event loop never reads
        disk. A file of one part goes in one request. Returns the size sent."""
        with await asyncio.to_thread(path.open, "rb") as source:
            part = await asyncio.to_thread(source.read, PART_BYTES)
            if len(part) < PART_BYTES:
                await self._client.put_object(Bucket=self._bucket, Key=key, Body=part,
                                              ContentType=content_type)
                return len(part)
            upload = await self._client.create_multipart_upload(
                Bucket=self._bucket, Key=key, ContentType=content_type)
            upload_id = upload["UploadId"]
            try:
                parts: list[CompletedPartTypeDef] = []
                size = 0
                while part:
                    sent = await self._client.upload_part(
                        Bucket=self._bucket, Key=key, UploadId=upload_id,
                        PartNumber=len(parts) + 1, Body=part)
                    parts.append({"ETag": sent["ETag"], "PartNumber": len(parts) + 1})
                    size += len(part)
                    part = await asyncio.to_thread(source.read, PART_BYTES)
                await self._client.complete_multipart_upload(
                    Bucket=self._bucket, Key=key, UploadId=upload_id,
                    MultipartUpload={"Parts": parts})
            except BaseException:
                with contextlib.suppress(Exception):  # the upload's parts are billed: drop them
                    await self._client.abort_multipart_upload(
                        Bucket=self._bucket, Key=key, UploadId=upload_id)
                raise
            return size

    async def manifest(self, call_key: str) -> CallArtifacts | None:
        with _s3_errors("reading from"):
            try:
                response = await self._client.get_object(
                    Bucket=self._bucket, Key=self._key(call_key, MANIFEST))
            except self._client.exceptions.NoSuchKey:
                return None
            async with response["Body"] as body:
                data = await body.read(MAX_MANIFEST_BYTES + 1)
        return CallArtifacts.decode(data)

    async def open(self, call_key: str, file: StoredFile) -> AsyncGenerator[bytes, None]:
        with _s3_errors("reading from"):
            response = await self._client.get_object(
                Bucket=self._bucket, Key=self._key(call_key, file.name))
            async with response["Body"] as body:
                while chunk := await body.read(CHUNK_BYTES):
                    yield chunk

    async def sweep(self, before: float) -> int:
        with _s3_errors("sweeping"):
            old = [key for key, modified in await self._objects(self._prefix)
                   if modified < before]
            await self._delete(old)
        return len({key.rpartition("/")[0] for key in old})

    async def _objects(self, prefix: str) -> list[tuple[str, float]]:
        """Every object under ``prefix`` in the layout above, with its time (Unix seconds)."""
        found = []
        paginator = self._client.get_paginator("list_objects_v2")
        async for page in paginator.paginate(Bucket=self._bucket, Prefix=prefix):
            for item in page.get("Contents", []):
                key = item["Key"]
                folder, _, name = key[len(self._prefix):].rpartition("/")
                if folder and "/" not in folder and (name == MANIFEST or is_artifact_name(name)):
                    found.append((key, item["LastModified"].timestamp()))
        return found

    async def _delete(self, keys: Sequence[str]) -> None:
        for start in range(0, len(keys), 1000):  # DeleteObjects takes 1000 keys at most
            batch = keys[start:start + 1000]
            await self._client.delete_objects(Bucket=self._bucket, Delete={
                "Objects": [{"Key": key} for key in batch], "Quiet": True})


@contextlib.contextmanager
def _s3_errors(doing: str) -> Iterator[None]:
    """botocore's and the network's errors as ``ArtifactStoreError`` (their messages name
    the operation and the store's code, never a credential)."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        yield
    except (BotoCoreError, ClientError, OSError) as exc:
        raise ArtifactStoreError(f"{doing} the object store: {exc}") from exc


@contextlib.asynccontextmanager
async def open_s3_store(bucket: str, prefix: str, *, endpoint_url: str = "",
                        region: str = "", timeout_s: float = 30) -> AsyncIterator[S3Store]:
    """An ``S3Store`` with its client, closed on exit. Needs the ``s3`` extra."""
    try:
        from aiobotocore.config import AioConfig
        from aiobotocore.session import get_session
    except ImportError as exc:
        raise ConfigError(given_as("artifacts", "store"), "s3 needs the s3 extra: "
                          "pip install 'callbridge[s3]'") from exc
    config = AioConfig(connect_timeout=min(timeout_s, 10), read_timeout=timeout_s,
                       retries={"max_attempts": 3, "mode": "standard"})
    session = get_session()
    async with session.create_client(
            "s3", endpoint_url=endpoint_url or None,
            region_name=region or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1",
            config=config) as client:
        yield S3Store(client, bucket, prefix)


async def retention_sweeps(store: ArtifactStore, *, retention_days: float,
                           every_s: float) -> None:
    """Delete calls older than ``retention_days``, now and every ``every_s``, logging one
    line per sweep; a failed sweep is logged and tried again next time. Runs until
    cancelled (a sweep cut short leaves some of the old calls for the next one)."""
    while True:
        before = time.time() - retention_days * 86400
        try:
            deleted = await store.sweep(before)
        except (ArtifactStoreError, OSError) as exc:
            log.warning("artifacts retention sweep failed", store=store.description,
                        error=str(exc))
        else:
            log.info("artifacts retention sweep", store=store.description, deleted=deleted,
                     retention_days=retention_days)
        await asyncio.sleep(every_s)


@contextlib.asynccontextmanager
async def open_artifact_store(settings: Settings) -> AsyncIterator[ArtifactStore]:
    """The store ``[artifacts]`` names, open for the process's life. A local folder that
    cannot be made or written is a ``ConfigError`` naming ``artifacts.dir``."""
    artifacts = settings.artifacts
    if artifacts.store == "s3":
        async with open_s3_store(artifacts.s3_bucket, artifacts.s3_prefix,
                                 endpoint_url=artifacts.s3_endpoint_url,
                                 region=artifacts.s3_region,
                                 timeout_s=artifacts.store_timeout_s) as s3:
            yield s3
        return
    yield await asyncio.to_thread(prepare_local_store, settings)


def prepare_local_store(settings: Settings) -> LocalStore:
    """The local store ``[artifacts]`` names, its folder made and checked: one that cannot
    be used is a ``ConfigError`` naming ``artifacts.dir`` (``serve`` checks it at start)."""
    local = LocalStore(settings.artifacts.local_dir(settings.outbox.path))
    try:
        local.prepare()
    except OSError as exc:
        raise ConfigError(given_as("artifacts", "dir"),
                          f"{local.root} cannot be used for artifacts: {exc.strerror}") from exc
    return local
