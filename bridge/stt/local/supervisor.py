"""Run the embedded recognizer as a child process of ``callbridge serve``, and stop it.

The child is ``callbridge stt-local --port 0 --announce --exit-with-parent``: it picks a free
port on 127.0.0.1, prints one JSON line with it on stdout once its workers are warm, and
exits by itself if the bridge dies without stopping it (no orphans, even after SIGKILL). If
the child exits while the bridge runs, it is restarted with backoff and one log line.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sys
from typing import Final

import structlog

from bridge.errors import CallbridgeError
from bridge.stt.local.protocol import PATH

log = structlog.get_logger("bridge.stt.local")

START_TIMEOUT_S: Final = 120.0  # loading the model in every worker takes a few seconds
STOP_TIMEOUT_S: Final = 10.0
MAX_RESTART_DELAY_S: Final = 30.0


class EmbeddedRecognizerError(CallbridgeError):
    """The embedded recognizer could not be started (its one line says why)."""


class EmbeddedRecognizer:
    """The child process and its address. Use ``async with``; ``url`` is current."""

    def __init__(self, *, workers: int = 0, max_sessions: int = 0,
                 model: str | None = None) -> None:
        """``model`` None: the child reads ``local_stt.model`` from its own settings."""
        self._args = [sys.executable, "-m", "bridge", "stt-local", "--port", "0",
                      "--announce", "--exit-with-parent", "--workers", str(workers),
                      "--max-sessions", str(max_sessions)]
        if model is not None:
            self._args += ["--model", model]
        self._process: asyncio.subprocess.Process | None = None
        self._port: int | None = None
        self._stopping = False
        self._monitor: asyncio.Task[None] | None = None
        self.restarts = 0

    @property
    def url(self) -> str:
        if self._port is None:
            raise EmbeddedRecognizerError("the embedded recognizer is not running")
        return f"ws://127.0.0.1:{self._port}{PATH}"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    async def __aenter__(self) -> EmbeddedRecognizer:
        await self._start()
        self._monitor = asyncio.create_task(self._watch(), name="embedded recognizer")
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self._stopping = True
        if self._monitor is not None:
            self._monitor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._monitor
        await self._stop()

    async def _start(self) -> None:
        process = await asyncio.create_subprocess_exec(
            *self._args, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE)
        self._process = process
        assert process.stdout is not None
        try:
            async with asyncio.timeout(START_TIMEOUT_S):
                line = await process.stdout.readline()
            self._port = int(json.loads(line)["port"])
        except (TimeoutError, ValueError, KeyError, TypeError):
            await self._stop()
            raise EmbeddedRecognizerError(
                "the embedded recognizer did not start (see its log lines above)") from None

    async def _stop(self) -> None:
        process = self._process
        if process is None or process.returncode is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            async with asyncio.timeout(STOP_TIMEOUT_S):
                await process.wait()
        except TimeoutError:
            log.warning("embedded recognizer did not stop in time; killing it")
            process.kill()
            await process.wait()

    async def _watch(self) -> None:
        delay = 1.0
        while not self._stopping:
            assert self._process is not None
            code = await self._process.wait()
            if self._stopping:
                return
            self._port = None
            log.error("embedded recognizer exited; restarting it", exit_code=code,
                      restart_in_s=delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, MAX_RESTART_DELAY_S)
            try:
                await self._start()
                self.restarts += 1
            except EmbeddedRecognizerError:
                log.error("embedded recognizer failed to restart")
