"""``serve --workers N``: N serving processes on one host and port, each a cluster member.

The parent binds the port (``--port 0`` picks it here, once), starts each worker as
``callbridge serve --worker K --listen-fd FD`` with its own instance id and outbox file,
prints one ready line once every worker is ready, forwards SIGTERM and SIGINT to them all
(each drains exactly as a single ``serve`` does; a second signal cuts the drain short), and
exits once they all have: status 0 when every worker stopped cleanly.

Sockets: on Linux each worker gets its own socket bound with SO_REUSEPORT, and the kernel
spreads new connections among them by a hash of the addresses. Elsewhere SO_REUSEPORT does
not spread connections (on BSD and macOS the last socket bound takes them all), so the
workers share one inherited socket and whichever is free accepts. The parent holds every
socket for its whole life: the port stays reserved, and a worker restarted after it died
finds its socket again, with the connections that arrived meanwhile waiting in its backlog.

Identity: worker K is ``<cluster.instance_id>-K`` (by default ``<host>-<parent pid>-K``) and
owns the outbox file ``<outbox.path>.K``. A worker restarted with the same K, by this parent
or by the next one with the same ``cluster.instance_id`` (a StatefulSet pod), recovers what
it left.

A worker that exits while the parent is not stopping is restarted with the same K after
1 s, doubling up to 30 s while it keeps dying within a minute, with one log line each time.
A worker that exits before it was ever ready stops the whole start (its own lines said why)
and the parent exits with its status. Each worker watches its standard input, a pipe from
the parent: when the parent dies, even by SIGKILL, the pipe closes and the worker drains as
on SIGTERM, so no worker outlives its parent.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final

import structlog

from bridge.config import (
    INSTANCE_ID,
    MAX_WORKERS,
    Settings,
    SttTarget,
    given_as,
    stt_target,
    uses_telnyx_protocol,
)
from bridge.errors import ConfigError
from bridge.web.serve import bind_listener, ready_line, serve

log = structlog.get_logger("bridge.workers")

RESTART_FIRST_S: Final = 1.0
RESTART_MAX_S: Final = 30.0
STABLE_AFTER_S: Final = 60.0  # a worker that ran this long starts its backoff afresh
READY_PREFIX: Final = "callbridge: ready on "


@dataclass(frozen=True, slots=True)
class Worker:
    """One serving process of ``--workers``: its number (1..N), cluster id and outbox file."""

    number: int
    instance_id: str
    outbox_path: str


def plan_workers(settings: Settings, count: int, setting: str = "server.workers"
                 ) -> tuple[Worker, ...]:
    """The workers of ``serve --workers count`` (``count`` other than 1).

    Raises ``ConfigError`` naming ``setting`` (how the user gave the count) when it is out
    of range, when cluster mode is off (separate processes share calls, admin actions,
    captions and delivery only through Redis), or when the embedded recognizer would be
    started once per worker; naming ``cluster.instance_id`` when an id leaves no room for
    the worker's number.
    """
    if not 1 <= count <= MAX_WORKERS:
        raise ConfigError(setting, f"must be 1-{MAX_WORKERS}")
    if not settings.cluster.enabled:
        raise ConfigError(setting, f"{count} workers need cluster mode, which is off: "
                          "separate processes share live calls, admin actions, captions "
                          "and webhook delivery only through Redis; set CALLBRIDGE_REDIS_URL "
                          "(cluster.redis_url) or cluster.sentinels")
    if uses_telnyx_protocol(settings) and stt_target(settings) is SttTarget.EMBEDDED:
        raise ConfigError(setting, f"{count} workers would start {count} embedded "
                          "recognizers (no TELNYX_API_KEY); run one with `callbridge "
                          "stt-local --port 9100` and set CALLBRIDGE_TELNYX_URL="
                          "ws://127.0.0.1:9100/v2/speech-to-text/transcription, or use a "
                          "speech-to-text service")
    base = settings.cluster.instance()
    workers = tuple(Worker(k, f"{base}-{k}", f"{settings.outbox.path}.{k}")
                    for k in range(1, count + 1))
    if not INSTANCE_ID.match(workers[-1].instance_id):
        raise ConfigError(given_as("cluster", "instance_id"),
                          f"must leave room for the worker's number: {workers[-1].instance_id}"
                          " is longer than 63 characters")
    return workers


def restart_delay(previous_s: float | None, ran_s: float) -> float:
    """How long to wait before restarting a worker that ran for ``ran_s`` seconds, when the
    wait before its last restart was ``previous_s`` (None: it had not been restarted)."""
    if previous_s is None or ran_s >= STABLE_AFTER_S:
        return RESTART_FIRST_S
    return min(previous_s * 2, RESTART_MAX_S)


def reuse_port_spreads() -> bool:
    """Whether SO_REUSEPORT spreads connections among sockets here (Linux 3.9 and later)."""
    return sys.platform.startswith("linux") and hasattr(socket, "SO_REUSEPORT")


def bind_worker_sockets(host: str, port: int, count: int, setting: str = "server.port",
                        host_setting: str = "server.host") -> list[socket.socket]:
    """The workers' sockets, bound and not yet listening: one each with SO_REUSEPORT where
    it spreads connections, else one they share. Raises ``ConfigError`` as
    ``bind_listener`` does, naming ``setting``."""
    # First a plain bind: it fails when anything holds the port, even a process of this
    # user with SO_REUSEPORT that would otherwise silently share the traffic; and port 0
    # is chosen here, once.
    probe = bind_listener(host, port, setting, host_setting)
    if not reuse_port_spreads():
        return [probe]
    chosen = int(probe.getsockname()[1])
    probe.close()
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            sockets.append(bind_listener(host, chosen, setting, host_setting, reuse_port=True))
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets


def worker_command(worker: Worker, fd: int, host: str, config: str | None) -> list[str]:
    """The command line that starts one worker on the inherited socket ``fd``."""
    return [sys.executable, "-m", "bridge", "serve", "--worker", str(worker.number),
            "--listen-fd", str(fd), "--host", host, *(["--config", config] if config else [])]


def worker_environment(worker: Worker, environ: Mapping[str, str]) -> dict[str, str]:
    """The worker's environment: the parent's, with the worker's id and outbox file."""
    return {**environ, "CALLBRIDGE_CLUSTER_INSTANCE_ID": worker.instance_id,
            "CALLBRIDGE_OUTBOX_PATH": worker.outbox_path, "CALLBRIDGE_SERVER_WORKERS": "1"}


class Supervisor:
    """The parent of ``--workers``: starts, restarts and stops the workers.

    ``run`` returns the exit status; it installs SIGTERM and SIGINT handlers for its
    duration. Cancelling ``run`` closes each worker's pipe from the parent, so the workers
    drain and exit by themselves; it does not wait for them.
    """

    def __init__(self, workers: Sequence[Worker], sockets: Sequence[socket.socket], *,
                 host: str, config: str | None) -> None:
        self.workers = tuple(workers)
        # With one shared socket, every worker accepts on it.
        self._fds = {w.number: sockets[min(i, len(sockets) - 1)].fileno()
                     for i, w in enumerate(self.workers)}
        self.host = host
        self.port = int(sockets[0].getsockname()[1])
        self.config = config
        self.stopping = asyncio.Event()
        self.restarts = 0
        self._processes: dict[int, asyncio.subprocess.Process] = {}
        self._ever_ready: set[int] = set()
        self._first_ready = asyncio.Event()
        self._codes: dict[int, int] = {}
        self._failed_start: int | None = None

    def forward(self, sig: int) -> None:
        """A signal to the parent: stop restarting, and pass it on to every worker."""
        if not self.stopping.is_set():
            log.info("stopping workers: each drains its calls", signal=signal.Signals(sig).name,
                     workers=len(self._processes))
        self.stopping.set()
        for process in self._processes.values():
            if process.returncode is None:
                process.send_signal(sig)

    async def run(self) -> int:
        """Run the workers until a signal and their drain, or a failed start."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.forward, sig)
        log.info("workers starting", workers=len(self.workers), port=self.port,
                 reuse_port=reuse_port_spreads(),
                 instances=[w.instance_id for w in self.workers])
        try:
            async with asyncio.TaskGroup() as group:
                # The first worker alone at first: a setting that stops a worker stops it
                # with one line, not one per worker.
                first = group.create_task(self._keep(self.workers[0]))
                ready = asyncio.ensure_future(self._first_ready.wait())
                try:
                    await asyncio.wait([ready, first], return_when=asyncio.FIRST_COMPLETED)
                finally:
                    ready.cancel()
                if self._failed_start is None and not self.stopping.is_set():
                    for worker in self.workers[1:]:
                        group.create_task(self._keep(worker))
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
        if self._failed_start is not None:
            return self._failed_start
        clean = all(code == 0 for code in self._codes.values())
        log.info("workers stopped", exit_codes=dict(sorted(self._codes.items())),
                 restarts=self.restarts)
        return 0 if clean else 1

    async def _keep(self, worker: Worker) -> None:
        """Run one worker, and again after it dies, until stopping."""
        delay: float | None = None
        while True:
            started = time.monotonic()
            code = await self._run_once(worker)
            self._codes[worker.number] = code
            if self.stopping.is_set():
                return
            if worker.number not in self._ever_ready:
                self._failed_start = code if code > 0 else 1
                log.error("worker failed to start; stopping", worker=worker.number,
                          instance=worker.instance_id, exit_code=code)
                self.forward(signal.SIGTERM)
                return
            delay = restart_delay(delay, time.monotonic() - started)
            log.error("worker exited; restarting it", worker=worker.number,
                      instance=worker.instance_id, exit_code=code, restart_in_s=delay)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self.stopping.wait()
            if self.stopping.is_set():
                return
            self.restarts += 1

    async def _run_once(self, worker: Worker) -> int:
        """Start the worker, note when it is ready, and return its exit status."""
        fd = self._fds[worker.number]
        process = await asyncio.create_subprocess_exec(
            *worker_command(worker, fd, self.host, self.config),
            env=worker_environment(worker, os.environ), pass_fds=(fd,),
            # Its own session: a terminal's Ctrl-C reaches the parent alone, which forwards
            # it once (a worker that got it twice would cut its drain short).
            start_new_session=True,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
        self._processes[worker.number] = process
        if self.stopping.is_set():  # a signal came while it was starting
            process.send_signal(signal.SIGTERM)
        assert process.stdout is not None
        assert process.stdin is not None
        try:
            async for raw in process.stdout:
                if raw.decode(errors="replace").startswith(READY_PREFIX):
                    self._ready(worker)
            return await process.wait()
        finally:
            process.stdin.close()

    def _ready(self, worker: Worker) -> None:
        first_time = worker.number not in self._ever_ready
        self._ever_ready.add(worker.number)
        self._first_ready.set()
        if first_time and len(self._ever_ready) == len(self.workers):
            log.info("workers ready", workers=len(self.workers), port=self.port)
            print(ready_line(self.host, self.port, len(self.workers)), file=sys.stdout,
                  flush=True)


async def serve_worker(settings: Settings, listener: socket.socket) -> int:
    """``serve`` as one worker of ``--workers``: also drains, as on SIGTERM, once the pipe
    from the parent on standard input closes (the parent is gone)."""
    loop = asyncio.get_running_loop()
    gone: asyncio.Future[None] = loop.create_future()

    class ParentPipe(asyncio.Protocol):
        def connection_lost(self, exc: Exception | None) -> None:
            if not gone.done():
                gone.set_result(None)

    transport, _ = await loop.connect_read_pipe(ParentPipe, sys.stdin)

    async def drain_when_orphaned() -> None:
        await gone
        log.warning("parent process is gone: draining as on SIGTERM")
        signal.raise_signal(signal.SIGTERM)  # serve's own handler takes it from here

    watcher = asyncio.create_task(drain_when_orphaned(), name="parent watch")
    try:
        return await serve(settings, listener)
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
        transport.close()
