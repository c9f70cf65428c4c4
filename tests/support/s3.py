"""An S3 protocol server on 127.0.0.1 for the artifact store's tests: moto's threaded server.

The bridge talks to it over HTTP exactly as to S3 (signed requests, the XML protocol). The
test reads what arrived with its own client, and can age an object (``age``), which no S3
API can: moto keeps its objects in this process, so their ``LastModified`` is set directly.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from types import TracebackType
from typing import TYPE_CHECKING, Any

from aiobotocore.session import get_session
from moto.core.models import DEFAULT_ACCOUNT_ID
from moto.s3.models import s3_backends
from moto.server import ThreadedMotoServer

if TYPE_CHECKING:
    from types_aiobotocore_s3 import S3Client

# Any credentials sign requests the emulator accepts; the bridge reads them from its
# environment as it would real ones.
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "test-access-key", "AWS_SECRET_ACCESS_KEY": "test-secret",
               "AWS_DEFAULT_REGION": "us-east-1"}


class S3Emulator:
    """moto's S3 server on a free port with one fresh bucket; ``async with`` runs it."""

    def __init__(self) -> None:
        self.bucket = f"callbridge-{uuid.uuid4().hex[:12]}"
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self.url = ""

    async def __aenter__(self) -> S3Emulator:
        logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request
        await asyncio.to_thread(self._server.start)
        host, port = self._server.get_host_and_port()
        self.url = f"http://{host}:{port}"
        async with self.client() as client:
            await client.create_bucket(Bucket=self.bucket)
        return self

    async def __aexit__(self, kind: type[BaseException] | None, error: BaseException | None,
                        trace: TracebackType | None) -> None:
        await asyncio.to_thread(self._server.stop)

    def environment(self, prefix: str = "") -> dict[str, str]:
        """The bridge's settings for storing its artifacts here."""
        return {"CALLBRIDGE_ARTIFACTS_STORE": "s3", "CALLBRIDGE_ARTIFACTS_S3_BUCKET": self.bucket,
                "CALLBRIDGE_ARTIFACTS_S3_ENDPOINT_URL": self.url,
                "CALLBRIDGE_ARTIFACTS_S3_PREFIX": prefix, **CREDENTIALS}

    @asynccontextmanager
    async def client(self) -> AsyncIterator[S3Client]:
        async with get_session().create_client(
                "s3", endpoint_url=self.url, region_name=CREDENTIALS["AWS_DEFAULT_REGION"],
                aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
                aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"]) as client:
            yield client

    async def objects(self) -> dict[str, dict[str, Any]]:
        """Every object in the bucket: key -> its listing entry plus ``ContentType``."""
        found: dict[str, dict[str, Any]] = {}
        async with self.client() as client:
            listing = await client.list_objects_v2(Bucket=self.bucket)
            for item in listing.get("Contents", []):
                head = await client.head_object(Bucket=self.bucket, Key=item["Key"])
                found[item["Key"]] = {**item, "ContentType": head["ContentType"]}
        return found

    async def read(self, key: str) -> bytes:
        async with self.client() as client:
            response = await client.get_object(Bucket=self.bucket, Key=key)
            async with response["Body"] as body:
                return await body.read()

    async def put(self, key: str, body: bytes) -> None:
        async with self.client() as client:
            await client.put_object(Bucket=self.bucket, Key=key, Body=body)

    def age(self, key: str, days: float) -> None:
        """Make one object ``days`` older than it is."""
        stored = s3_backends[DEFAULT_ACCOUNT_ID]["global"].buckets[self.bucket].keys[key]
        stored.last_modified -= datetime.timedelta(days=days)
