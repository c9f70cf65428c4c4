#!/usr/bin/env python3
"""Load a bridge with N two-leg calls in real time and print what it cost.

Starts three processes besides this one: the chosen engine's emulator in sink mode
(``--engine telnyx|deepgram|assemblyai``; it takes the audio, measures how late each message
arrives against the audio's own clock, and can send a final per N seconds of audio in that
engine's message shape, see ``tests/support/sink.py``), a webhook receiver, and the bridge
under test, configured for that engine: ``callbridge serve`` or ``bench/forwarder.py`` (a
per-frame forwarder written the way sample bridges are; Telnyx only). This process then
streams N Twilio calls, both tracks on each, at real-time pace.

The generator stays cheap: messages come from the simulate client's ``build_call`` once,
are framed and masked as WebSocket client frames once, and are shared by every call (only
the ``start`` message differs). Each 20 ms slot of a call is one write of pre-built bytes.
Calls start in 50 groups spread over ``--ramp-s`` seconds, at different phases of the 20 ms
cycle; one task per group.

Printed per run: legs; the bridge's CPU seconds per leg-second of audio (from
``/proc/<pid>/stat``, over the streaming time); its peak RSS and RSS per leg above its idle
size; upstream lag p50/p99/max (from the sink: how far each leg's upstream bytes fell
behind the audio clock after its first chunk); the share of the streamed audio that reached
the sink; the finals the sink sent; the bridge's event-loop lag; chunks dropped;
calls completed; how late the generator itself was; and the webhook latency of finals
p50/p99: from the moment the bridge made the final's event (the body's ``timestamp``, just
after the engine's final arrived) to the receiver having the POST. Then the latency the
bridge adds per stage, p50/p99 estimated from the buckets of its
``callbridge_stage_latency_seconds`` histogram (linear within a bucket; "n/a" for a stage
the bridge does not measure): ``frame_to_upstream``, ``final_to_webhook``,
``redaction_hold``, and ``result_to_viewer``, which needs ``--viewers N``: N live-feed
viewers (Server-Sent Events, as the captions page reads them) on the first N calls.

``--profile`` runs ``py-spy record`` on the bridge through the middle of the time when every
call streams (without pausing it) and prints the shares of its samples, self and inclusive,
per function and per file.

``--redis`` runs the bridge in cluster mode against a ``redis-server`` started here (AOF on,
``everysec``, pinned beside the generator): every event is also copied to Redis, and the
run reports how far the copy was behind at the end.

With ``--workers N`` the bridge is ``callbridge serve --workers N`` in cluster mode, with a
``redis-server`` of its own (no persistence) started here; CPU and memory are then summed
over the parent and its workers, and the metrics over the workers. Nothing is pinned to a
core then (``--no-pin`` does the same for one process, for a like-for-like comparison): the
workers, the generator and the sink share the machine.

    python bench/load.py --calls 500 --seconds 30
    python bench/load.py --calls 500 --seconds 30 --redis
    python bench/load.py --calls 150 --bridge forwarder
    python bench/load.py --calls 200 --seconds 20 --engine deepgram --viewers 10
    python bench/load.py --calls 200 --seconds 20 --engine assemblyai --profile
    python bench/load.py --calls 600 --seconds 20 --workers 2
    python bench/load.py --calls 600 --seconds 20 --no-pin --cluster   # one process, same
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import datetime
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bridge.events import AudioEncoding, Track  # noqa: E402 - after the path is set
from bridge.simulate import CallSpec, build_call  # noqa: E402

SAMPLE = ROOT / "bridge" / "samples" / "support_call"
API_KEY = "bench-stt-key"
# Opens every live feed (--viewers) of a bridge that lives for one run.
ADMIN_TOKEN = "bench-admin-token-0123456789"  # noqa: S105 - a throwaway bench token
# Each engine's emulator in sink mode, the path it serves, and how the bridge is pointed at
# it (the variables the end-to-end tests set).
ENGINES: dict[str, tuple[str, str, dict[str, str]]] = {
    "telnyx": ("tests.support.telnyx_stt", "/v2/speech-to-text/transcription",
               {"CALLBRIDGE_TELNYX_URL": "URL", "TELNYX_API_KEY": API_KEY}),
    "deepgram": ("tests.support.deepgram", "/v1/listen",
                 {"CALLBRIDGE_STT_ENGINE": "deepgram", "CALLBRIDGE_DEEPGRAM_URL": "URL",
                  "DEEPGRAM_API_KEY": API_KEY}),
    "assemblyai": ("tests.support.assemblyai", "/v3/ws",
                   {"CALLBRIDGE_STT_ENGINE": "assemblyai", "CALLBRIDGE_ASSEMBLYAI_URL": "URL",
                    "ASSEMBLYAI_API_KEY": API_KEY}),
}
KEY_VARIABLES = ("TELNYX_API_KEY", "DEEPGRAM_API_KEY", "ASSEMBLYAI_API_KEY")
STAGE_METRIC = "callbridge_stage_latency_seconds"
STAGES = ("frame_to_upstream", "final_to_webhook", "redaction_hold", "result_to_viewer")
SECRET = "whsec_" + base64.b64encode(b"callbridge-bench-secret-32-bytes").decode()
SLOT_MS = 20
GROUPS = 50
MASK = b"\x37\xfa\x21\x3d"
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- WebSocket client frames, built once ------------------------------------------------------

def client_frame(payload: bytes, opcode: int = 0x1) -> bytes:
    """One masked client frame (RFC 6455 section 5.2). One fixed key serves every frame: a
    load generator has no cache-poisoning proxy to defeat."""
    n = len(payload)
    if n < 126:
        header = bytes([0x80 | opcode, 0x80 | n])
    elif n < 65536:
        header = bytes([0x80 | opcode, 0x80 | 126]) + n.to_bytes(2, "big")
    else:
        header = bytes([0x80 | opcode, 0x80 | 127]) + n.to_bytes(8, "big")
    key = (MASK * (n // 4 + 1))[:n]
    masked = (int.from_bytes(payload, "big") ^ int.from_bytes(key, "big")).to_bytes(n, "big")
    return header + MASK + masked


@dataclass
class Script:
    """A call as pre-built bytes: the head (connected, start), one write per 20 ms slot, the
    tail (stop, then a close frame)."""

    head_before_start: bytes
    start_template: str
    slots: list[bytes]
    tail: bytes

    def head(self, call_id: str) -> bytes:
        return self.head_before_start + client_frame(
            self.start_template.replace("CALL_ID_HERE", call_id).encode())


def build_script(seconds: float) -> Script:
    caller = (SAMPLE / "caller.ulaw").read_bytes()
    agent = (SAMPLE / "agent.ulaw").read_bytes()
    size = int(seconds * 8000)
    caller = (caller * (size // len(caller) + 1))[:size]
    agent = (agent * (size // len(agent) + 1))[:size]
    spec = CallSpec("twilio", AudioEncoding.PCMU, {Track.INBOUND: caller,
                                                   Track.OUTBOUND: agent},
                    call_id="CALL_ID_HERE", stream_id="MZbench")
    messages = build_call(spec)
    connected, start = messages[0][1], messages[1][1]
    by_slot: dict[int, list[bytes]] = {}
    for at_s, text in messages[2:-1]:
        by_slot.setdefault(round(at_s * 1000) // SLOT_MS, []).append(client_frame(text.encode()))
    slots = [b"".join(by_slot.get(n, [])) for n in range(max(by_slot) + 1)]
    close = client_frame((1000).to_bytes(2, "big"), opcode=0x8)
    return Script(client_frame(connected.encode()), start, slots,
                  client_frame(messages[-1][1].encode()) + close)


# -- one call's connection -----------------------------------------------------------------------

@dataclass
class Connection:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    close_code: int | None = None
    closed: asyncio.Event = field(default_factory=asyncio.Event)


async def connect(host: str, port: int, path: str) -> Connection:
    reader, writer = await asyncio.open_connection(host, port)
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write((f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
                  f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                  "Sec-WebSocket-Version: 13\r\n\r\n").encode())
    answer = await reader.readuntil(b"\r\n\r\n")
    if not answer.startswith(b"HTTP/1.1 101"):
        raise RuntimeError(f"handshake refused: {answer.splitlines()[0].decode()}")
    return Connection(reader, writer)


async def read_frames(conn: Connection) -> None:
    """Answer pings, note the close code; everything else the bridge says is ignored."""
    try:
        while True:
            head = await conn.reader.readexactly(2)
            opcode, n = head[0] & 0x0F, head[1] & 0x7F
            if n == 126:
                n = int.from_bytes(await conn.reader.readexactly(2), "big")
            elif n == 127:
                n = int.from_bytes(await conn.reader.readexactly(8), "big")
            payload = await conn.reader.readexactly(n)
            if opcode == 0x9:
                conn.writer.write(client_frame(payload, opcode=0xA))
            elif opcode == 0x8:
                conn.close_code = int.from_bytes(payload[:2], "big") if n >= 2 else 1005
                break
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        conn.closed.set()
        conn.writer.close()


# -- measuring the bridge ------------------------------------------------------------------------

def family(pid: int) -> list[int]:
    """The process and its children (the workers of ``serve --workers``)."""
    children = Path(f"/proc/{pid}/task/{pid}/children")
    return [pid, *(int(c) for c in children.read_text().split())] if children.exists() \
        else [pid]


def cpu_seconds(pid: int) -> float:
    """User and system CPU of the process and its children."""
    total = 0.0
    for member in family(pid):
        fields = Path(f"/proc/{member}/stat").read_text().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime
    return total


def rss_bytes(pid: int) -> int:
    return sum(int(Path(f"/proc/{member}/statm").read_text().split()[1]) * PAGE
               for member in family(pid))


def peak_rss_bytes(pid: int) -> int:
    total = 0
    for member in family(pid):
        for line in Path(f"/proc/{member}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                total += int(line.split()[1]) * 1024
    return total


async def scrape_text(session: aiohttp.ClientSession, url: str) -> str:
    async with session.get(url) as response:
        return await response.text()


def totals(text: str) -> dict[str, float]:
    """Sums of each metric family of a /metrics text (labels summed over)."""
    found: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[sample.name] = found.get(sample.name, 0.0) + sample.value
    return found


async def scrape(session: aiohttp.ClientSession, url: str) -> dict[str, float]:
    """Sums of each metric family of the bridge's /metrics (labels summed over)."""
    return totals(await scrape_text(session, url))


async def scrape_workers(base: str, workers: int) -> list[str]:
    """Each worker's /metrics text: /readyz, then /metrics on the same kept-alive connection,
    names the worker that answered; new connections until every worker has."""
    found: dict[str, str] = {}
    for _ in range(50 * workers):
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1)) as session:
            async with session.get(f"{base}/readyz") as response:
                instance = str(json.loads(await response.text()).get("instance", "one"))
            if instance not in found:
                found[instance] = await scrape_text(session, f"{base}/metrics")
        if len(found) == workers:
            break
    return list(found.values())


def stage_buckets(texts: Sequence[str]) -> dict[str, dict[float, float]]:
    """The stage latency histogram's cumulative bucket counts per stage, summed over the
    workers' /metrics texts: {stage: {upper bound in seconds: count}}."""
    stages: dict[str, dict[float, float]] = {}
    for text in texts:
        for family in text_string_to_metric_families(text):
            if family.name != STAGE_METRIC:
                continue
            for sample in family.samples:
                if not sample.name.endswith("_bucket"):
                    continue
                buckets = stages.setdefault(sample.labels.get("stage", "?"), {})
                bound = float(sample.labels["le"])
                buckets[bound] = buckets.get(bound, 0.0) + sample.value
    return stages


def bucket_quantile(q: float, buckets: dict[float, float]) -> float | None:
    """The q-quantile from cumulative buckets, interpolated linearly within its bucket (as
    Prometheus's histogram_quantile does); in the +Inf bucket, the highest finite bound."""
    bounds = sorted(buckets)
    total = buckets[bounds[-1]] if bounds else 0.0
    if not total:
        return None
    rank = q * total
    lower, below = 0.0, 0.0
    for bound in bounds:
        count = buckets[bound]
        if count >= rank:
            if bound == float("inf"):
                return lower
            if count == below:
                return bound
            return lower + (bound - lower) * (rank - below) / (count - below)
        lower, below = bound, count
    return lower


def stage_latencies(texts: Sequence[str]) -> dict[str, Any]:
    """p50/p99 (ms) and the count of each agreed stage, or "n/a" where the bridge has none."""
    stages = stage_buckets(texts)
    report: dict[str, Any] = {}
    for stage in STAGES:
        buckets = stages.get(stage)
        count = max(buckets.values(), default=0.0) if buckets else 0.0
        if not count:
            report[stage] = "n/a"
            continue
        p50, p99 = bucket_quantile(0.5, buckets), bucket_quantile(0.99, buckets)
        report[stage] = {"n": int(count),
                         "p50": round(p50 * 1000, 2) if p50 is not None else None,
                         "p99": round(p99 * 1000, 2) if p99 is not None else None}
    return report


# -- the run -----------------------------------------------------------------------------------

@dataclass
class Processes:
    bridge: subprocess.Popen[bytes]
    sink: subprocess.Popen[bytes]
    bridge_port: int
    sink_port: int
    redis: subprocess.Popen[bytes] | None = None


def start_redis(workdir: Path) -> tuple[subprocess.Popen[bytes], str]:
    """A ``redis-server`` with AOF (``everysec``), as production would run it."""
    port = free_port()
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("--redis needs redis-server (Debian's redis-server package)")
    redis = subprocess.Popen(  # noqa: S603 - Debian's redis-server, fixed arguments
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(workdir),
         "--save", "", "--appendonly", "yes", "--appendfsync", "everysec",
         "--daemonize", "no", "--logfile", str(workdir / "redis.log")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return redis, f"redis://127.0.0.1:{port}/0"
        except OSError:
            time.sleep(0.05)
    redis.kill()
    raise RuntimeError("redis-server did not start (apt-get install redis-server)")


def start_processes(kind: str, calls: int, final_every_s: float, chunk_ms: int,
                    receiver_url: str, workdir: Path, event_loop: str, workers: int = 1,
                    cluster: bool = False, pin: bool = True,
                    talk_analytics: bool = True, engine: str = "telnyx",
                    live_feed: bool = False) -> Processes:
    sink_port, bridge_port = free_port(), free_port()
    redis = None
    module, path, engine_env = ENGINES[engine]
    sink = subprocess.Popen(  # noqa: S603 - our own interpreter and module, fixed arguments
        [sys.executable, "-m", module, "--sink", "--port", str(sink_port),
         "--api-key", API_KEY, "--final-every-s", str(final_every_s)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert sink.stdout is not None
    sink.stdout.readline()  # it says where it listens once it does
    stt_url = f"ws://127.0.0.1:{sink_port}{path}"
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("CALLBRIDGE_") and k not in KEY_VARIABLES}
    if kind == "callbridge":
        env.update({name: stt_url if value == "URL" else value
                    for name, value in engine_env.items()})
        if live_feed:  # the admin token turns every call's live feed on
            env["CALLBRIDGE_SERVER_ADMIN_TOKEN"] = ADMIN_TOKEN
        env.update({
            "CALLBRIDGE_SERVER_PORT": str(bridge_port), "CALLBRIDGE_WEBHOOKS_URLS": receiver_url,
            "CALLBRIDGE_WEBHOOKS_SECRET": SECRET,
            "CALLBRIDGE_WEBHOOKS_ALLOW_PRIVATE_NETWORKS": "true",
            "CALLBRIDGE_OUTBOX_PATH": str(workdir / "outbox.db"),
            "CALLBRIDGE_LOGGING_FORMAT": "json", "CALLBRIDGE_LOGGING_LEVEL": "warning",
            "CALLBRIDGE_AUDIO_CHUNK_MS": str(chunk_ms),
            "CALLBRIDGE_SERVER_MAX_CALLS": str(calls + 10),
            # Every call comes from this one address and all connect before any starts, as
            # behind a load balancer: no cap per address, and room for all of them waiting.
            "CALLBRIDGE_SERVER_MAX_PENDING_PER_ADDRESS": "0",
            "CALLBRIDGE_SERVER_MAX_PENDING_STREAMS": str(calls + 10),
        })
        env["CALLBRIDGE_SERVER_EVENT_LOOP"] = event_loop
        env["CALLBRIDGE_ANALYTICS_TALK"] = "true" if talk_analytics else "false"
        command = [sys.executable, "-m", "bridge", "serve", "--workers", str(workers)]
        if cluster or workers > 1:
            redis, env["CALLBRIDGE_REDIS_URL"] = start_redis(workdir)
            env["CALLBRIDGE_CLUSTER_INSTANCE_ID"] = "bench"
    else:
        command = [sys.executable, str(ROOT / "bench" / "forwarder.py"), "--port",
                   str(bridge_port), "--stt-url", stt_url, "--api-key", API_KEY]
    log = (workdir / "bridge.log").open("wb")
    bridge = subprocess.Popen(command, cwd=ROOT, env=env,  # noqa: S603 - fixed commands
                              stdout=log, stderr=log)
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) >= 2 and pin and workers == 1:
        # The bridge gets a core of its own; the generator and the sink share the rest, so
        # they neither steal its time nor blur its figures.
        os.sched_setaffinity(bridge.pid, cpus[:1])
        os.sched_setaffinity(sink.pid, cpus[1:])
        os.sched_setaffinity(0, cpus[1:])
        if cluster:
            os.sched_setaffinity(redis.pid, cpus[1:])
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", bridge_port), timeout=0.2):
                break
        except OSError:
            time.sleep(0.1)
    else:
        raise RuntimeError(f"the bridge did not start; see {workdir / 'bridge.log'}")
    while workers > 1 and b"ready on" not in (workdir / "bridge.log").read_bytes():
        if time.monotonic() > deadline:  # every worker listens once the parent says ready
            raise RuntimeError(f"the workers did not start; see {workdir / 'bridge.log'}")
        time.sleep(0.1)
    return Processes(bridge, sink, bridge_port, sink_port, redis)


async def receiver(final_latencies: list[float]) -> tuple[web.AppRunner, str]:
    """A webhook receiver that takes everything (its cost is not the bridge's), noting how
    long after its event was made each final arrived."""
    async def take(request: web.Request) -> web.Response:
        body = await request.read()
        arrived = time.time()
        event = json.loads(body)
        if event.get("type") == "transcript.final":
            made = datetime.datetime.fromisoformat(event["timestamp"].replace("Z", "+00:00"))
            final_latencies.append(arrived - made.timestamp())
        return web.Response(status=204)
    app = web.Application()
    app.router.add_post("/hook", take)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner, f"http://127.0.0.1:{port}/hook"


@dataclass
class Viewers:
    """What the live viewers saw."""

    opened: int = 0
    finals: int = 0
    events: int = 0


async def view(session: aiohttp.ClientSession, base: str, call_id: str,
               seen: Viewers) -> None:
    """One live viewer of one call, as the captions page is: its Server-Sent Events until
    the feed ends (after ``call.ended``). The call is looked for until it has started."""
    url = f"{base}/calls/{call_id}/events"
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    for _ in range(200):
        async with session.get(url, headers=headers) as response:
            if response.status == 404:  # its start message is not handled yet
                await asyncio.sleep(0.05)
                continue
            response.raise_for_status()
            seen.opened += 1
            async for line in response.content:
                if line.startswith(b"event: "):
                    seen.events += 1
                    seen.finals += line.startswith(b"event: transcript.final")
            return
    raise RuntimeError(f"the live feed of {call_id} never opened")


# -- where the time goes ---------------------------------------------------------------------

# Frames every sample of a thread passes through: in the inclusive tables they would only say
# 100 %. Their self time stays counted (a leaf in Runner.run is the event loop's own C code).
ENTRY_FILES = frozenset({"<frozen runpy>", "bridge/__main__.py", "bridge/cli.py",
                         "asyncio/runners.py", "threading.py"})
FRAME = re.compile(r"^(?P<function>.*) \((?P<file>[^()]*?)(?::\d+)?\)$")


def short_file(path: str) -> str:
    """A frame's file without the machine's prefixes: ``bridge/calls.py``,
    ``aiohttp/web_ws.py``, ``asyncio/events.py``."""
    for marker in ("site-packages/", "dist-packages/"):
        if marker in path:
            return path.split(marker, 1)[1]
    if path.startswith(str(ROOT) + "/"):
        return path[len(str(ROOT)) + 1:]
    match = re.search(r"/python3\.\d+/(.*)$", path)
    return match.group(1) if match else path


def summarise_profile(raw: str, top: int) -> str:
    """py-spy's raw (collapsed) stacks as tables of self and inclusive shares of the samples,
    per function (with its file), per file and per package; inclusive counts a sample once
    per key and leaves out the entry frames every sample has."""
    total = 0
    self_fn: dict[str, int] = {}
    incl_fn: dict[str, int] = {}
    self_file: dict[str, int] = {}
    incl_file: dict[str, int] = {}
    self_package: dict[str, int] = {}
    for line in raw.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        keys: list[tuple[str, str]] = []
        for frame in stack.split(";"):
            match = FRAME.match(frame)
            if match is None:
                continue  # the process or thread name py-spy puts first
            file = short_file(match["file"])
            keys.append((f"{match['function']} ({file})", file))
        if not keys:
            continue
        leaf_fn, leaf_file = keys[-1]
        self_fn[leaf_fn] = self_fn.get(leaf_fn, 0) + count
        self_file[leaf_file] = self_file.get(leaf_file, 0) + count
        package = leaf_file.split("/", 1)[0] if "/" in leaf_file else leaf_file
        self_package[package] = self_package.get(package, 0) + count
        inner = [(fn, file) for fn, file in keys if file not in ENTRY_FILES]
        for key in {fn for fn, _ in inner}:
            incl_fn[key] = incl_fn.get(key, 0) + count
        for key in {file for _, file in inner}:
            incl_file[key] = incl_file.get(key, 0) + count
    if not total:
        return "py-spy recorded no samples"

    def table(title: str, shares: dict[str, int]) -> list[str]:
        ranked = sorted(shares.items(), key=lambda item: -item[1])[:top]
        return [title, *(f"  {100 * n / total:5.1f} %  {key}" for key, n in ranked)]
    return "\n".join([
        f"py-spy: {total} samples of the bridge's busy threads (a Python frame's self time "
        "includes the C it calls: uvloop's loop under Runner.run, a thread pool's C calls "
        "under _worker)",
        *table("self, per function:", self_fn), *table("inclusive, per function:", incl_fn),
        *table("self, per file:", self_file), *table("inclusive, per file:", incl_file),
        *table("self, per package:", self_package)])


def py_spy() -> str:
    """The py-spy beside this interpreter (the dev extras install it), else on the PATH."""
    beside = Path(sys.executable).parent / "py-spy"
    found = str(beside) if beside.exists() else shutil.which("py-spy")
    if found is None:
        raise RuntimeError("--profile needs py-spy (pip install py-spy)")
    return found


async def profile(pid: int, start: float, duration_s: int, output: Path) -> str:
    """``py-spy record`` on the bridge from ``start`` (loop time) for ``duration_s``,
    without pausing it (``--nonblocking``); the raw stacks' text."""
    loop = asyncio.get_running_loop()
    await asyncio.sleep(max(0.0, start - loop.time()))
    recorder = await asyncio.create_subprocess_exec(
        py_spy(), "record", "--pid", str(pid), "--duration", str(duration_s), "--rate", "100",
        "--nonblocking", "--format", "raw", "--output", str(output),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    _, errors = await recorder.communicate()
    if recorder.returncode != 0:
        raise RuntimeError(f"py-spy failed: {errors.decode(errors='replace')[-300:]}")
    return await asyncio.to_thread(output.read_text)


async def stream(conns: Sequence[Connection], script: Script, start: float,
                 lateness: list[float]) -> None:
    """Write each slot to this group's connections when it is due."""
    loop = asyncio.get_running_loop()
    for n, slot in enumerate(script.slots):
        due = start + n * SLOT_MS / 1000
        delay = due - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        else:
            lateness.append(-delay)
        for conn in conns:
            if not conn.closed.is_set():
                conn.writer.write(slot)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    script = build_script(args.seconds)
    legs = args.calls * 2
    final_latencies: list[float] = []
    runner, hook_url = await receiver(final_latencies)
    with tempfile.TemporaryDirectory(prefix="callbridge-load-") as tmp:
        procs = start_processes(args.bridge, args.calls, args.final_every_s, args.chunk_ms,
                                hook_url, Path(tmp), args.event_loop, args.workers,
                                args.cluster, not args.no_pin,
                                talk_analytics=not args.no_talk_analytics,
                                engine=args.engine, live_feed=args.viewers > 0)
        pid = procs.bridge.pid
        base = f"http://127.0.0.1:{procs.bridge_port}"
        metrics_url = f"{base}/metrics"
        http = aiohttp.ClientSession()
        viewers: list[asyncio.Task[None]] = []
        profiler: asyncio.Task[str] | None = None
        try:
            await asyncio.sleep(1.0)
            idle_rss = rss_bytes(pid)
            conns = [await connect("127.0.0.1", procs.bridge_port, "/streams/twilio")
                     for _ in range(args.calls)]
            readers = [asyncio.create_task(read_frames(c)) for c in conns]
            for n, conn in enumerate(conns):
                conn.writer.write(script.head(f"CAbench{n:05d}"))
            seen = Viewers()
            viewers = [asyncio.create_task(view(http, base, f"CAbench{n:05d}", seen))
                       for n in range(min(args.viewers, args.calls))]
            loop = asyncio.get_running_loop()
            t0 = loop.time() + 0.5
            if args.profile:
                # The middle of the time when every call streams: after the ramp, before the
                # first calls end.
                steady_s = args.seconds - args.ramp_s
                profiler = asyncio.create_task(profile(
                    pid, t0 + args.ramp_s + 0.1 * steady_s, max(1, int(0.8 * steady_s)),
                    Path(tmp) / "profile.txt"))
            cpu0, wall0 = cpu_seconds(pid), time.monotonic()
            helpers0 = cpu_seconds(procs.sink.pid) + time.process_time()
            lateness: list[float] = []
            # Calls start in GROUPS groups spread over the ramp, each at its own phase of
            # the 20 ms cycle, as calls do not begin together.
            groups = min(GROUPS, args.calls)
            senders = [asyncio.create_task(stream(
                conns[g::groups], script,
                t0 + g * args.ramp_s / groups + (g % SLOT_MS) / 1000, lateness))
                for g in range(groups)]
            rss_peak, loop_lags = 0, []
            while not all(s.done() for s in senders):
                await asyncio.sleep(1.0)
                rss_peak = max(rss_peak, rss_bytes(pid))
                if args.bridge == "callbridge" and args.workers == 1:
                    loop_lags.append((await scrape(http, metrics_url)).get(
                        "callbridge_event_loop_lag_seconds", 0.0))
                elif args.bridge == "callbridge":  # the most lagging worker's
                    loop_lags.append(max(totals(m).get("callbridge_event_loop_lag_seconds", 0.0)
                                         for m in await scrape_workers(base, args.workers)))
            await asyncio.gather(*senders)
            cpu1, wall1 = cpu_seconds(pid), time.monotonic()
            helpers1 = cpu_seconds(procs.sink.pid) + time.process_time()
            rss_peak = max(rss_peak, peak_rss_bytes(pid))
            for conn in conns:
                conn.writer.write(script.tail)
            async with asyncio.timeout(120):
                await asyncio.gather(*readers)
                await asyncio.gather(*viewers)  # each feed ends after its call.ended
                profile_raw = await profiler if profiler is not None else ""
            after: dict[str, float] = {}
            stages: dict[str, Any] = dict.fromkeys(STAGES, "n/a")
            if args.bridge == "callbridge":
                await asyncio.sleep(1.0)
                texts = await scrape_workers(base, args.workers)
                stages = stage_latencies(texts)
                for worker in texts:
                    for name, value in totals(worker).items():
                        after[name] = after.get(name, 0.0) + value
            async with http.get(f"http://127.0.0.1:{procs.sink_port}/stats") as response:
                sink = json.loads(await response.text())
        finally:
            for task in (*viewers, *([profiler] if profiler is not None else [])):
                task.cancel()
            await asyncio.gather(*viewers, *([profiler] if profiler is not None else []),
                                 return_exceptions=True)
            await http.close()
            procs.bridge.terminate()
            procs.bridge.wait(timeout=60)
            procs.sink.terminate()
            procs.sink.wait(timeout=10)
            if procs.redis is not None:
                procs.redis.terminate()
                procs.redis.wait(timeout=10)
            await runner.cleanup()
    audio_s = len(script.slots) * SLOT_MS / 1000
    cpu = cpu1 - cpu0
    completed = sum(c.close_code == 1000 for c in conns)
    finals = sorted(final_latencies)
    result: dict[str, Any] = {
        "bridge": args.bridge + (f" ({args.event_loop} loop, {args.engine} engine)"
                                 if args.bridge == "callbridge" else "")
        + (f", {args.workers} workers" if args.workers > 1 else "")
        + (", cluster mode" if args.cluster or args.workers > 1 else "")
        + ("" if not args.no_pin and args.workers == 1 else ", not pinned"),
        "legs": legs,
        "audio_s_per_leg": audio_s,
        "streaming_wall_s": round(wall1 - wall0, 1),
        "bridge_cpu_s": round(cpu, 2),
        "cpu_ms_per_leg_second": round(cpu * 1000 / (legs * audio_s), 3),
        "bridge_cpu_share": round(cpu / (wall1 - wall0), 2),
        "peak_rss_mib": round(rss_peak / 2**20, 1),
        "idle_rss_mib": round(idle_rss / 2**20, 1),
        "rss_kib_per_leg": round((rss_peak - idle_rss) / 1024 / legs, 1),
        "upstream_lag_ms": sink["lag_ms"],
        "upstream_sessions": sink["sessions"],
        # Of the audio streamed, the share the sink received (µ-law, 8,000 bytes a second; a
        # little above 1 where an engine pads its last message).
        "audio_reached_engine": round(sink["bytes"] / (legs * audio_s * 8000), 4),
        "engine_finals_sent": sink.get("finals"),
        "event_loop_lag_ms": {
            "median": round(statistics.median(loop_lags) * 1000, 1) if loop_lags else None,
            "max": round(max(loop_lags) * 1000, 1) if loop_lags else None},
        "chunks_dropped": int(after.get("callbridge_chunks_dropped_total", 0)),
        "webhook_latency_of_finals_ms": {
            "finals": len(finals),
            "p50": round(finals[len(finals) // 2] * 1000, 1) if finals else None,
            "p99": round(finals[int(0.99 * len(finals))] * 1000, 1) if finals else None,
            "max": round(finals[-1] * 1000, 1) if finals else None},
        "stage_latency_ms": stages,
        "live_viewers": {"opened": seen.opened, "events": seen.events, "finals": seen.finals}
        if args.viewers else None,
        "redis_copy": {
            "events_copied": int(after.get("callbridge_cluster_outbox_mirrored_total", 0)),
            "backlog_at_end": int(after.get("callbridge_cluster_outbox_backlog", 0)),
        } if args.cluster or args.workers > 1 else None,
        "calls_completed": f"{completed}/{args.calls}",
        # The generator, the receiver and the sink share the other core: near 1.0 they,
        # not the bridge, set the lag.
        "generator_and_sink_cpu_share": round((helpers1 - helpers0) / (wall1 - wall0), 2),
        "generator_late_ms": {
            "p99": round(sorted(lateness)[int(0.99 * len(lateness))] * 1000, 1)
            if lateness else 0.0,
            "max": round(max(lateness, default=0.0) * 1000, 1)},
    }
    if args.profile:
        result["profile"] = summarise_profile(profile_raw, args.profile_top)
    return result


def build_parser() -> argparse.ArgumentParser:
    """The options of one run (``bench/capacity.py`` builds its steps' options from it)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=100, help="two-leg calls at once")
    parser.add_argument("--seconds", type=float, default=30.0, help="audio per call")
    parser.add_argument("--bridge", choices=("callbridge", "forwarder"), default="callbridge")
    parser.add_argument("--chunk-ms", type=int, default=100, help="callbridge's audio.chunk_ms")
    parser.add_argument("--final-every-s", type=float, default=5.0,
                        help="the sink sends a final per this much audio per leg (0: never)")
    parser.add_argument("--ramp-s", type=float, default=5.0,
                        help="calls start spread over this many seconds")
    parser.add_argument("--event-loop", choices=("auto", "asyncio", "uvloop"), default="auto",
                        help="callbridge's server.event_loop")
    parser.add_argument("--workers", type=int, default=1,
                        help="callbridge serve --workers N (cluster mode, a redis-server here)")
    parser.add_argument("--cluster", "--redis", action="store_true",
                        help="cluster mode with one process too (a redis-server here, AOF on)")
    parser.add_argument("--no-pin", action="store_true",
                        help="do not give the bridge a core of its own (as with --workers)")
    parser.add_argument("--no-talk-analytics", action="store_true",
                        help="callbridge's analytics.talk = false (on by default)")
    parser.add_argument("--engine", choices=tuple(ENGINES), default="telnyx",
                        help="callbridge's stt.engine, against that engine's emulator in sink "
                        "mode (the forwarder speaks Telnyx only)")
    parser.add_argument("--viewers", type=int, default=0,
                        help="open a live-feed viewer (SSE) on each of the first N calls; sets "
                        "the admin token, which turns every call's live feed on")
    parser.add_argument("--profile", action="store_true",
                        help="py-spy record the bridge through the middle of the run and print "
                        "where the time goes")
    parser.add_argument("--profile-top", type=int, default=20,
                        help="rows per table of the --profile summary")
    parser.add_argument("--json", action="store_true", help="print one JSON line")
    return parser


def check(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuse combinations a run cannot honour, before anything starts."""
    if args.bridge == "forwarder" and (args.engine != "telnyx" or args.viewers):
        parser.error("the forwarder speaks Telnyx only and has no live feed")
    if args.profile and args.seconds - args.ramp_s < 2:
        parser.error("--profile needs --seconds at least --ramp-s + 2 (every call streaming)")
    if args.profile and args.workers > 1:
        parser.error("--profile records one process: leave --workers at 1")


def main() -> None:
    parser = build_parser()
    args = parser.parse_args()
    check(parser, args)
    result = asyncio.run(run(args))
    if args.json:
        print(json.dumps(result))
        return
    summary = result.pop("profile", None)
    for key, value in result.items():
        print(f"{key:>24}: {value}")
    if summary is not None:
        print(summary)


if __name__ == "__main__":
    main()
