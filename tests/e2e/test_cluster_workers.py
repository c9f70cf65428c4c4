"""``callbridge serve --workers 2``: two serving processes on one port, sharing a real Redis."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from bridge.events import AudioEncoding, Track
from bridge.simulate import CallSpec, build_call, stream_call
from tests.conftest import BridgeProcess, _read_logs, bridge_environment
from tests.e2e.test_cluster import _cluster_env
from tests.support.audio import pcm_program, ulaw
from tests.support.receiver import WebhookReceiver
from tests.support.redis_server import RedisServer
from tests.support.telnyx_stt import TelnyxSttEmulator

WORKERS = ("w-1", "w-2")  # CALLBRIDGE_CLUSTER_INSTANCE_ID=w, two workers


class Workers(BridgeProcess):
    """The parent of ``serve --workers``; ``logs`` holds every worker's lines and its own."""

    ready_line: str = ""
    logs_read: asyncio.Task[None]  # ends once every process holding stderr has exited


WorkersFactory = Callable[..., Awaitable[Workers]]


@pytest.fixture
async def workers_factory(stt: TelnyxSttEmulator, receiver: WebhookReceiver,
                          redis_server: RedisServer, tmp_path: Path
                          ) -> AsyncIterator[WorkersFactory]:
    """Start ``serve --workers 2 --port 0`` in cluster mode; returns once the parent has
    printed its one ready line."""
    started: list[tuple[Workers, asyncio.Task[None]]] = []

    async def start(**extra: str) -> Workers:
        env = bridge_environment(stt, receiver, **_cluster_env(redis_server, tmp_path, "w"),
                                 **extra)
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bridge", "serve", "--workers", "2", "--port", "0", env=env,
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE)
        parent = Workers(process, 0)
        listening: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        reader = parent.logs_read = asyncio.create_task(_read_logs(parent, listening))
        started.append((parent, reader))
        assert process.stdout is not None
        async with asyncio.timeout(30):
            parent.ready_line = (await process.stdout.readline()).decode()
            await listening
        return parent

    yield start
    for parent, reader in started:
        if parent.process.returncode is None:
            parent.process.terminate()
            async with asyncio.timeout(30):
                await parent.process.wait()
        await reader


async def _instances_answering(parent: Workers, attempts: int = 200) -> set[str]:
    """The instance ids that answer /readyz, each request on a new connection, until both
    workers have (the kernel picks a worker per connection by a hash of its addresses)."""
    seen: set[str] = set()
    for _ in range(attempts):
        status, body = await parent.http("GET", "/readyz")
        assert status == 200, body
        seen.add(json.loads(body)["instance"])
        if seen >= set(WORKERS):
            break
    return seen


async def test_two_workers_serve_one_port_each_a_cluster_member(
        workers_factory: WorkersFactory, redis_server: RedisServer, tmp_path: Path) -> None:
    parent = await workers_factory()
    assert parent.ready_line.startswith(
        f"callbridge: ready on http://127.0.0.1:{parent.port} with 2 workers ")
    assert await _instances_answering(parent) == set(WORKERS)
    listening = parent.log_events("listening")
    assert sorted((line["worker"], line["port"]) for line in listening) == [
        (1, parent.port), (2, parent.port)]
    # Each worker owns its outbox file, and is a member of the cluster in Redis.
    assert _files(tmp_path, "w.db.*") == ["w.db.1", "w.db.2"]
    members = (await redis_server.command("ZRANGE", "callbridge:instances", "0", "-1")).split()
    assert sorted(members) == list(WORKERS)


async def test_sigterm_to_the_parent_drains_the_calls_of_both_workers(
        workers_factory: WorkersFactory, receiver: WebhookReceiver) -> None:
    parent = await workers_factory(CALLBRIDGE_SERVER_DRAIN_S="0.5")
    long_call = pcm_program(("silence", 200), ("tone", 600, 400), ("silence", 500),
                            ("tone", 400, 700), ("silence", 15000))
    calls: dict[str, asyncio.Task[object]] = {}
    holders: dict[int, str] = {}
    # Calls until each worker holds one: which worker takes a connection is the kernel's
    # choice, so a few calls may land on the same one first.
    for n in range(1, 31):
        call_id = f"CA-workers-{n}"
        calls[call_id] = asyncio.create_task(stream_call(
            parent.url("/streams/twilio"),
            build_call(CallSpec("twilio", AudioEncoding.PCMU, {Track.INBOUND: ulaw(long_call)},
                                call_id=call_id)), speed=1))
        started = await parent.wait_for_log("call started", call_id=call_id)
        holders.setdefault(started["worker"], call_id)
        if len(holders) == 2:
            break
    assert sorted(holders) == [1, 2]
    await receiver.wait_for(lambda events: all(
        sum(e.type == "transcript.final" and e.data["call_id"] == call_id for e in events) >= 2
        for call_id in calls), within_s=30)

    parent.process.send_signal(signal.SIGTERM)
    async with asyncio.timeout(40):
        assert await parent.process.wait() == 0
    # The workers' own ready lines went to the parent: its stdout had one line in all.
    assert parent.process.stdout is not None
    assert await parent.process.stdout.read() == b""
    await asyncio.gather(*calls.values(), return_exceptions=True)
    for call_id in calls:
        events = receiver.of_call(call_id)
        assert [e.data["text"] for e in events if e.type == "transcript.final"] == [
            "tone 400 hertz", "tone 700 hertz"]
        assert [e.type for e in events[-2:]] == ["call.ended", "call.completed"]
        assert events[-2].data["reason"] == "shutdown"
    assert sorted(line["worker"] for line in parent.log_events("stopped")) == [1, 2]
    assert len(parent.log_events("stopping workers: each drains its calls")) == 1
    assert parent.log_events("workers stopped")[0]["exit_codes"] == {"1": 0, "2": 0}


def _files(directory: Path, pattern: str) -> list[str]:
    """The names of the files matching ``pattern``, SQLite's side files left out."""
    return sorted(p.name for p in directory.glob(pattern)
                  if not p.name.endswith(("-wal", "-shm", "-journal")))


def _children(pid: int) -> list[int]:
    """The process ids of ``pid``'s children (Linux)."""
    return [int(child) for child in
            Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def _running(pid: int) -> bool:
    """Whether the process runs: it exists and is not a zombie waiting to be reaped."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
async def test_a_worker_that_dies_comes_back_with_the_same_identity(
        workers_factory: WorkersFactory) -> None:
    parent = await workers_factory()
    worker_pids = _children(parent.process.pid)
    assert len(worker_pids) == 2
    os.kill(worker_pids[0], signal.SIGKILL)

    restarting = await parent.wait_for_log("worker exited; restarting it")
    assert restarting["exit_code"] == -signal.SIGKILL and restarting["restart_in_s"] == 1.0
    worker = restarting["worker"]
    await parent.wait_for_log("listening", occurrence=2, worker=worker)
    assert await _instances_answering(parent) == set(WORKERS)
    assert len(_children(parent.process.pid)) == 2


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
async def test_workers_do_not_outlive_a_killed_parent(workers_factory: WorkersFactory) -> None:
    parent = await workers_factory()
    worker_pids = _children(parent.process.pid)
    parent.process.kill()
    await parent.wait_for_log("parent process is gone: draining as on SIGTERM", occurrence=2)
    # Both workers hold the parent's stderr; its end means both have exited.
    async with asyncio.timeout(30):
        await parent.logs_read
    assert sorted(line["worker"] for line in parent.log_events("stopped")) == [1, 2]
    # A process closes its files before the kernel finishes its exit: wait out that moment.
    async with asyncio.timeout(10):
        while [pid for pid in worker_pids if _running(pid)]:  # noqa: ASYNC110 - not our child: no event tells of its exit
            await asyncio.sleep(0.05)


async def test_more_than_one_worker_without_redis_is_refused_in_one_line(
        stt: TelnyxSttEmulator, receiver: WebhookReceiver, tmp_path: Path) -> None:
    env = bridge_environment(stt, receiver, CALLBRIDGE_OUTBOX_PATH=str(tmp_path / "o.db"))
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bridge", "serve", "--workers", "2", "--port", "0", env=env,
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    async with asyncio.timeout(30):
        out, err = await process.communicate()
    assert process.returncode == 2
    assert out == b""
    [line] = err.decode().splitlines()
    assert line.startswith("callbridge: invalid setting --workers: 2 workers need cluster "
                           "mode, which is off")
    assert "CALLBRIDGE_REDIS_URL" in line and "cluster.redis_url" in line
    assert _files(tmp_path, "o.db*") == []


async def test_a_worker_that_cannot_start_stops_the_start_with_its_one_line(
        stt: TelnyxSttEmulator, receiver: WebhookReceiver, redis_server: RedisServer,
        tmp_path: Path) -> None:
    env = bridge_environment(stt, receiver, **_cluster_env(redis_server, tmp_path, "w"),
                       CALLBRIDGE_SERVER_REQUIRE_INGRESS_AUTH="true")
    process = await asyncio.create_subprocess_exec(
        # A non-loopback address with open media endpoints: the first worker refuses.
        sys.executable, "-m", "bridge", "serve", "--workers", "2", "--port", "0",
        "--host", "0.0.0.0", env=env,  # noqa: S104 - never listens: refused before serving
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    async with asyncio.timeout(30):
        out, err = await process.communicate()
    assert process.returncode == 2
    assert out == b""
    lines = err.decode().splitlines()
    refusals = [line for line in lines if "server.require_ingress_auth is on" in line]
    assert len(refusals) == 1  # the second worker was never started
    failed = [json.loads(line) for line in lines if '"worker failed to start' in line]
    assert [(f["worker"], f["exit_code"]) for f in failed] == [(1, 2)]
