"""Starting the bridge as a newcomer would: the ready line, short start-up, clear mistakes."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
from pathlib import Path

import aiohttp
import pytest

from tests.conftest import API_KEY, BridgeFactory, BridgeProcess
from tests.support.audio import ulaw
from tests.support.receiver import WebhookReceiver
from tests.support.speech import CALLER
from tests.support.telnyx_stt import TelnyxSttEmulator

pytestmark = pytest.mark.e2e


def environment(stt: TelnyxSttEmulator, tmp_path: Path, **extra: str) -> dict[str, str]:
    """The environment of a bridge on the emulator, without the caller's own settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CALLBRIDGE_")}
    env.update({"CALLBRIDGE_TELNYX_URL": stt.url, "TELNYX_API_KEY": API_KEY,
                "CALLBRIDGE_OUTBOX_PATH": str(tmp_path / "outbox.db")}, **extra)
    return env


async def callbridge(*args: str, env: dict[str, str], within_s: float = 30
                     ) -> tuple[int, list[str], list[str]]:
    """Run ``callbridge ARGS`` to its end: exit status, stdout lines, stderr lines."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bridge", *args, env=env, stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    async with asyncio.timeout(within_s):
        out, err = await process.communicate()
    assert process.returncode is not None
    return process.returncode, out.decode().splitlines(), err.decode().splitlines()


async def test_serve_prints_one_ready_line_once_it_accepts_calls(
        stt: TelnyxSttEmulator, tmp_path: Path) -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bridge", "serve", "--port", "0",
        env=environment(stt, tmp_path),
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL)
    assert process.stdout is not None
    try:
        async with asyncio.timeout(30):
            line = (await process.stdout.readline()).decode()
        assert line.startswith("callbridge: ready on http://127.0.0.1:"), line
        base = line.split()[3]
        port = int(base.rsplit(":", 1)[1])
        assert f"(media at ws://127.0.0.1:{port}/streams/<provider>;" in line
        async with aiohttp.ClientSession() as session, session.get(f"{base}/healthz") as answer:
            assert answer.status == 200  # ready means ready: no retry needed
    finally:
        process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(30):
            assert await process.wait() == 0
    assert await process.stdout.read() == b""  # one line, no more


async def test_start_up_reads_in_a_few_short_lines(bridge_factory: BridgeFactory) -> None:
    bridge = await bridge_factory(CALLBRIDGE_LOGGING_LEVEL="info")
    start_up = bridge.raw_stderr[:next(n for n, line in enumerate(bridge.logs)
                                      if line["event"] == "listening") + 1]
    assert len(start_up) <= 8
    assert max(len(line) for line in start_up) <= 250, max(start_up, key=len)
    assert bridge.log_events("settings") == []  # the full dump is for debug level


async def test_the_settings_dump_is_there_at_debug_level(bridge: BridgeProcess) -> None:
    [dump] = bridge.log_events("settings")
    assert dump["level"] == "debug" and dump["server.port"] == 0  # what was asked for


@pytest.mark.parametrize("given_as", ["CALLBRIDGE_SERVER_PORT", "--port"])
async def test_a_port_in_use_is_one_line_naming_the_setting(
        stt: TelnyxSttEmulator, tmp_path: Path, given_as: str) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = str(taken.getsockname()[1])
        args = ["serve", "--port", port] if given_as == "--port" else ["serve"]
        extra = {"CALLBRIDGE_SERVER_PORT": port} if given_as == "CALLBRIDGE_SERVER_PORT" else {}
        status, out, err = await callbridge(
            *args, env=environment(stt, tmp_path, **extra))
    assert status == 2 and out == []
    assert err == [f"callbridge: invalid setting {given_as}: 127.0.0.1:{port} is already in "
                   "use by another process; choose another port"]


async def test_a_port_in_use_given_by_the_old_variable_names_that_variable(
        stt: TelnyxSttEmulator, tmp_path: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = str(taken.getsockname()[1])
        status, out, err = await callbridge(
            "serve", env=environment(stt, tmp_path, CALLBRIDGE_PORT=port))
    assert status == 2 and out == []
    assert err == ["callbridge: CALLBRIDGE_PORT is deprecated: use CALLBRIDGE_SERVER_PORT",
                   f"callbridge: invalid setting CALLBRIDGE_PORT: 127.0.0.1:{port} is already "
                   "in use by another process; choose another port"]


@pytest.mark.parametrize("given_as", ["CALLBRIDGE_CONFIG", "--config"])
async def test_a_directory_as_the_settings_file_is_one_line(
        stt: TelnyxSttEmulator, tmp_path: Path, given_as: str) -> None:
    args = ["serve", "--config", str(tmp_path)] if given_as == "--config" else ["serve"]
    extra = {"CALLBRIDGE_CONFIG": str(tmp_path)} if given_as == "CALLBRIDGE_CONFIG" else {}
    status, out, err = await callbridge(*args, env=environment(stt, tmp_path, **extra))
    assert status == 2 and out == []
    assert err == [f"callbridge: invalid setting {given_as}: {tmp_path} is a directory, "
                   "not a settings file"]


async def test_a_socks_proxy_that_cannot_be_spoken_stops_the_start_in_one_line(
        stt: TelnyxSttEmulator, tmp_path: Path) -> None:
    # Without python-socks every session to the engine would fail while it opens, each
    # call's media connection with it: the start stops instead, naming the variable.
    blocked = tmp_path / "without_socks" / "python_socks"
    blocked.mkdir(parents=True)
    (blocked / "__init__.py").write_text("raise ImportError('not installed')\n")
    env = {k: v for k, v in environment(stt, tmp_path).items() if not k.lower().endswith("_proxy")}
    status, out, err = await callbridge("serve", "--port", "0", env={
        **env, "PYTHONPATH": str(blocked.parent), "SOCKS_PROXY": "socks5h://user:pw@127.0.0.1:1"})
    assert status == 2 and out == []
    assert err == ["callbridge: invalid setting SOCKS_PROXY: names a SOCKS proxy for 127.0.0.1, "
                   "and speaking SOCKS needs python-socks: pip install 'python-socks[asyncio]' "
                   "(or list the host in NO_PROXY)"]


async def test_simulate_gives_up_in_one_line_when_no_bridge_answers(
        stt: TelnyxSttEmulator, tmp_path: Path, refused_port: int) -> None:
    audio = tmp_path / "caller.ulaw"
    audio.write_bytes(ulaw(CALLER))
    status, _, err = await callbridge("simulate", f"ws://127.0.0.1:{refused_port}", str(audio),
                                      "--wait", "0.5", env=environment(stt, tmp_path))
    assert status == 1
    assert err == [f"callbridge simulate: no bridge answered http://127.0.0.1:{refused_port}"
                   "/healthz within 0.5 s (is `callbridge serve` running? raise --wait if it "
                   "is still starting)"]


async def test_simulate_waits_for_a_bridge_that_is_still_starting(
        bridge_factory: BridgeFactory, stt: TelnyxSttEmulator, receiver: WebhookReceiver,
        tmp_path: Path) -> None:
    audio = tmp_path / "caller.ulaw"
    audio.write_bytes(ulaw(CALLER))
    # A port that hangs up on every connection, like a bridge not serving yet, until
    # simulate has tried it; then a bridge takes the port over. (Between the two, the port
    # is free for microseconds: the one window this test leaves to chance.)
    tried = asyncio.Event()

    def hang_up(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        tried.set()
        writer.close()

    server = await asyncio.start_server(hang_up, "127.0.0.1", 0)
    port = str(server.sockets[0].getsockname()[1])
    simulate = asyncio.create_task(callbridge(
        "simulate", f"ws://127.0.0.1:{port}", str(audio), "--speed", "4", "--wait", "60",
        "--call-id", "CA-waited", env=environment(stt, tmp_path)))
    async with asyncio.timeout(30):
        await tried.wait()
    server.close()
    await server.wait_closed()
    assert not simulate.done()  # still waiting, not failed
    await bridge_factory(CALLBRIDGE_SERVER_PORT=port)
    status, _, err = await simulate
    assert status == 0, err
    await receiver.wait_for(receiver.ended("CA-waited"))
    finals = [e.data["text"] for e in receiver.of_call("CA-waited")
              if e.type == "transcript.final"]
    assert finals == ["tone 400 hertz", "tone 700 hertz"]
