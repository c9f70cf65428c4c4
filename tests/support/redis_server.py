"""A real ``redis-server`` (and ``redis-sentinel``) on 127.0.0.1 for the tests.

Debian's ``redis-server`` and ``redis-sentinel`` packages; ``scripts/test.sh`` installs them
when missing, and sets ``CALLBRIDGE_TEST_SKIP_REDIS`` to its reason when it cannot. Each
server runs in its own directory with persistence that the test chooses, on a port it
bound itself (``--port 0`` is not offered by Redis, so a free port is found and retried).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
from pathlib import Path
from typing import Self

import pytest

from tests.support.ports import free_port

READY_WITHIN_S = 20.0


def redis_binary(name: str = "redis-server") -> str:
    """The path of a Redis program; skips (with the test command's reason) or fails."""
    reason = os.environ.get("CALLBRIDGE_TEST_SKIP_REDIS")
    if reason:
        pytest.skip(f"Redis tests skipped: {reason}")
    found = shutil.which(name) or next(
        (p for p in (f"/usr/bin/{name}", f"/usr/sbin/{name}") if os.access(p, os.X_OK)), None)
    if found is None:
        pytest.fail(f"{name} is not installed: scripts/test.sh installs Debian's redis-server "
                    "and redis-sentinel")
    return found


class RedisServer:
    """One ``redis-server`` process; ``restart`` keeps its port and data directory."""

    def __init__(self, directory: Path, *, appendonly: bool = False,
                 replica_of: RedisServer | None = None, port: int | None = None) -> None:
        self.directory = directory
        self.directory.mkdir(parents=True, exist_ok=True)
        self.appendonly = appendonly
        self.replica_of = replica_of
        self.port = port or free_port()
        self.process: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def _arguments(self) -> list[str]:
        arguments = ["--port", str(self.port), "--bind", "127.0.0.1", "--dir",
                     str(self.directory), "--save", "", "--daemonize", "no",
                     "--appendonly", "yes" if self.appendonly else "no",
                     "--appendfsync", "everysec", "--protected-mode", "no",
                     "--logfile", str(self.directory / "redis.log")]
        if self.replica_of is not None:
            arguments += ["--replicaof", "127.0.0.1", str(self.replica_of.port)]
        return arguments

    async def start(self) -> Self:
        """Start on its port; the first start moves to another port if its was taken."""
        first = self.process is None
        for attempt in range(5):
            self.process = await asyncio.create_subprocess_exec(
                redis_binary(), *self._arguments(), stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
            try:
                await wait_for_port(self.port, self.process)
                return self
            except ServerExited:
                if not first or attempt == 4:
                    raise
                self.port = free_port()
        return self

    async def stop(self) -> None:
        """SIGTERM, as an orderly shutdown (with AOF on, the data is kept)."""
        await self._signal(signal.SIGTERM)

    async def kill(self) -> None:
        """SIGKILL: the machine's Redis is gone at once."""
        await self._signal(signal.SIGKILL)

    def freeze(self) -> None:
        """SIGSTOP: Redis stalls (accepts connections, answers nothing) until ``thaw``."""
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)

    async def _signal(self, sig: signal.Signals) -> None:
        if self.process is None or self.process.returncode is not None:
            return
        self.process.send_signal(sig)
        async with asyncio.timeout(READY_WITHIN_S):
            await self.process.wait()

    async def restart(self) -> None:
        await self.stop()
        await self.start()

    async def command(self, *arguments: str) -> str:
        """One ``redis-cli`` command's output, for a test's own checks."""
        cli = redis_binary("redis-cli")
        process = await asyncio.create_subprocess_exec(
            cli, "-p", str(self.port), *arguments, stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await process.communicate()
        assert process.returncode == 0, err.decode()
        return out.decode().strip()

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(self, *exc_info: object) -> None:
        if self.process is not None and self.process.returncode is None:
            self.thaw()  # a frozen process ignores SIGKILL's exit until it runs again
        await self.kill()


class RedisSentinel:
    """One ``redis-sentinel`` watching a primary under the name ``primary``."""

    def __init__(self, directory: Path, primary: RedisServer, *, name: str = "primary",
                 quorum: int = 1) -> None:
        self.directory = directory
        self.directory.mkdir(parents=True, exist_ok=True)
        self.primary = primary
        self.name = name
        self.quorum = quorum
        self.port = free_port()
        self.process: asyncio.subprocess.Process | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start(self) -> Self:
        config = self.directory / "sentinel.conf"
        config.write_text(
            f"port {self.port}\nbind 127.0.0.1\nprotected-mode no\ndir {self.directory}\n"
            f"sentinel monitor {self.name} 127.0.0.1 {self.primary.port} {self.quorum}\n"
            f"sentinel down-after-milliseconds {self.name} 1000\n"
            f"sentinel failover-timeout {self.name} 5000\n"
            f"sentinel parallel-syncs {self.name} 1\n")
        self.process = await asyncio.create_subprocess_exec(
            redis_binary("redis-sentinel"), str(config), stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
        await wait_for_port(self.port, self.process)
        return self

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(self, *exc_info: object) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.kill()
            await self.process.wait()


class ServerExited(RuntimeError):
    """The server's process ended before it answered (its port may have been taken)."""


async def wait_for_port(port: int, process: asyncio.subprocess.Process) -> None:
    """Until the server answers PING on ``port``; fails if its process exits first."""
    async with asyncio.timeout(READY_WITHIN_S):
        while True:
            if process.returncode is not None:
                raise ServerExited(f"redis exited with status {process.returncode}")
            with contextlib.suppress(OSError):
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(b"PING\r\n")
                await writer.drain()
                line = await reader.readline()
                writer.close()
                await writer.wait_closed()
                if line.startswith((b"+PONG", b"-NOAUTH")):
                    return
            await asyncio.sleep(0.05)
