"""Shared fixtures: emulators, the webhook receiver, and a real ``callbridge serve`` process."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from bridge.simulate import CallSpec, build_call, stream_call
from tests.support.ports import refusing_port
from tests.support.receiver import SECRET, Received, WebhookReceiver
from tests.support.redis_server import RedisServer
from tests.support.telnyx_stt import TelnyxSttEmulator

API_KEY = "test-telnyx-key"


@pytest.fixture
async def stt() -> AsyncIterator[TelnyxSttEmulator]:
    async with TelnyxSttEmulator(api_key=API_KEY) as emulator:
        yield emulator


@pytest.fixture
async def receiver() -> AsyncIterator[WebhookReceiver]:
    async with WebhookReceiver() as hooks:
        yield hooks


@pytest.fixture
async def redis_server(tmp_path: Path) -> AsyncIterator[RedisServer]:
    """A real ``redis-server`` on 127.0.0.1, without persistence, for this test alone."""
    async with RedisServer(tmp_path / "redis") as server:
        yield server


@pytest.fixture
def refused_port() -> Iterator[int]:
    """A local port where connections are refused for the whole test."""
    with refusing_port() as port:
        yield port


@dataclass
class BridgeProcess:
    """A running ``callbridge serve``; ``logs`` holds its JSON log lines as parsed dicts.

    ``port`` is the one the bridge bound, read from its ``listening`` line.
    """

    process: asyncio.subprocess.Process
    port: int
    logs: list[dict[str, Any]] = field(default_factory=list)
    raw_stderr: list[str] = field(default_factory=list)
    changed: asyncio.Condition = field(default_factory=asyncio.Condition)

    def url(self, path: str) -> str:
        return f"ws://127.0.0.1:{self.port}{path}"

    async def http(self, method: str, path: str, token: str | None = None,
                   **query: str) -> tuple[int, str]:
        """One HTTP request to the bridge (with a bearer token if given): status and body."""
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        async with aiohttp.ClientSession() as session, session.request(
                method, f"http://127.0.0.1:{self.port}{path}", headers=headers,
                params=query) as response:
            return response.status, await response.text()

    def log_events(self, event: str) -> list[dict[str, Any]]:
        return [line for line in self.logs if line.get("event") == event]

    async def wait_for_log(self, event: str, within_s: float = 20, occurrence: int = 1,
                           **fields: Any) -> dict[str, Any]:
        """Wait for the ``occurrence``-th log line with this event and these fields."""
        def match() -> list[dict[str, Any]]:
            return [line for line in self.log_events(event)
                    if all(line.get(k) == v for k, v in fields.items())]
        async with asyncio.timeout(within_s), self.changed:
            await self.changed.wait_for(lambda: len(match()) >= occurrence)
        return match()[occurrence - 1]


async def _read_logs(bridge: BridgeProcess, listening: asyncio.Future[None]) -> None:
    assert bridge.process.stderr is not None
    async for raw in bridge.process.stderr:
        text = raw.decode(errors="replace").rstrip("\n")
        bridge.raw_stderr.append(text)
        try:
            line = json.loads(text)
        except ValueError:
            continue
        async with bridge.changed:
            bridge.logs.append(line)
            bridge.changed.notify_all()
        if line.get("event") == "listening" and not listening.done():
            bridge.port = int(line["port"])
            listening.set_result(None)
    if not listening.done():
        listening.set_exception(RuntimeError("bridge exited:\n" + "\n".join(bridge.raw_stderr)))


BridgeFactory = Callable[..., Awaitable[BridgeProcess]]


async def run_call(bridge: BridgeProcess, receiver: WebhookReceiver, spec: CallSpec,
                   path: str | None = None, speed: float = 0,
                   within_s: float = 20) -> list[Received]:
    """Stream one whole call, check it closed normally, and return its webhooks once ended."""
    result = await stream_call(bridge.url(path or f"/streams/{spec.dialect}"),
                               build_call(spec), speed=speed)
    assert result.close_code == 1000
    await receiver.wait_for(receiver.ended(spec.call_id), within_s=within_s)
    return receiver.of_call(spec.call_id)


def bridge_environment(stt: TelnyxSttEmulator, receiver: WebhookReceiver,
                       **extra: str) -> dict[str, str]:
    """A bridge's environment: none of the caller's CALLBRIDGE_ settings, the emulator and the
    receiver wired in, JSON logs at debug; ``extra`` overrides."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CALLBRIDGE_")}
    env.update({
        "CALLBRIDGE_TELNYX_URL": stt.url,
        "TELNYX_API_KEY": API_KEY,
        "CALLBRIDGE_WEBHOOKS_URLS": receiver.url,
        "CALLBRIDGE_WEBHOOKS_SECRET": SECRET,
        "CALLBRIDGE_LOGGING_FORMAT": "json",
        "CALLBRIDGE_LOGGING_LEVEL": "debug",
        "CALLBRIDGE_WEBHOOKS_ALLOW_PRIVATE_NETWORKS": "true",  # the receiver is on 127.0.0.1
        **extra,
    })
    return env


@pytest.fixture
async def bridge_factory(stt: TelnyxSttEmulator, receiver: WebhookReceiver,
                         tmp_path: Path) -> AsyncIterator[BridgeFactory]:
    """Start bridges wired to the emulator and the receiver; extra env overrides per call."""
    started: list[tuple[BridgeProcess, asyncio.Task[None]]] = []

    async def start(**extra_env: str) -> BridgeProcess:
        env = bridge_environment(
            stt, receiver, **{"CALLBRIDGE_OUTBOX_PATH": str(tmp_path / "outbox.db"), **extra_env})
        # Port 0: the bridge binds a free port itself and names it, so no other process can
        # take it between choosing and binding.
        port_option = [] if "CALLBRIDGE_SERVER_PORT" in extra_env else ["--port", "0"]
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bridge", "serve", *port_option, env=env,
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE)
        bridge = BridgeProcess(process, 0)
        listening: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        reader = asyncio.create_task(_read_logs(bridge, listening))
        started.append((bridge, reader))
        async with asyncio.timeout(20):
            await listening
        return bridge

    yield start
    for bridge, reader in started:
        if bridge.process.returncode is None:
            bridge.process.terminate()
            async with asyncio.timeout(20):
                await bridge.process.wait()
        await reader


@pytest.fixture
async def bridge(bridge_factory: BridgeFactory) -> BridgeProcess:
    return await bridge_factory()
