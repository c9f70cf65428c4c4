#!/usr/bin/env python3
"""Redis memory of cluster mode's live feeds and event stream, per live call and per event.

Starts a ``redis-server`` (no persistence), the test suite's Telnyx STT emulator with
interim results and a script of sentence-long finals, a webhook receiver, and one
``callbridge serve`` in cluster mode with an admin token (so each call's feed is mirrored to
Redis) and ``cluster.events_stream`` set. Then streams N two-leg Twilio calls in real time;
each leg says ``--utterances`` sentences (a partial every 200 ms of speech, then a final)
and stays silent 6 s after; the live figures are taken 3 s before the calls end, when
every final is out and no call has ended (the output says how many feeds had ended).

Printed: Redis ``used_memory`` before, with the calls live, and after they ended (their feeds
retained for ``live.retain_s``), and ``MEMORY USAGE`` of the feed keys and of the event
stream with their entry counts: bytes per live call (its feed, its identity hash and its
share of the event stream) and bytes per retained event in each stream.

    python bench/redis_memory.py --calls 50 --utterances 8
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import redis.asyncio as redis

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bridge.events import AudioEncoding, Track  # noqa: E402 - after the path is set
from bridge.simulate import CallSpec, build_call, stream_call  # noqa: E402
from tests.support.audio import pcm_program, ulaw  # noqa: E402
from tests.support.receiver import SECRET, WebhookReceiver  # noqa: E402
from tests.support.redis_server import RedisServer  # noqa: E402
from tests.support.telnyx_stt import TelnyxSttEmulator  # noqa: E402

API_KEY = "bench-telnyx-key"
ADMIN = "bench-admin-token-0123456789"
STREAM = "callbridge:events"
SENTENCE = "I would like to check the balance on my account please"


async def start_bridge(env: dict[str, str]
                       ) -> tuple[asyncio.subprocess.Process, int, asyncio.Task[None]]:
    """``callbridge serve`` on a free port: the process, its port, and the task reading (and
    discarding) its log from then on."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bridge", "serve", "--port", "0", env=env, cwd=ROOT,
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE)
    assert process.stderr is not None
    async with asyncio.timeout(30):
        async for raw in process.stderr:
            try:
                line = json.loads(raw)
            except ValueError:
                continue
            if line.get("event") == "listening":
                break
    return process, int(line["port"]), asyncio.create_task(_discard(process))


async def _discard(process: asyncio.subprocess.Process) -> None:
    assert process.stderr is not None
    async for _ in process.stderr:
        pass


async def measure(client: redis.Redis) -> dict[str, Any]:
    feeds = [key async for key in client.scan_iter(match="callbridge:feed:*", count=1000)]
    infos = [key async for key in client.scan_iter(match="callbridge:feed-info:*",
                                                   count=1000)]
    feed_bytes = sum([await client.memory_usage(k, samples=0) or 0 for k in feeds])
    info_bytes = sum([await client.memory_usage(k, samples=0) or 0 for k in infos])
    feed_entries = sum([await client.xlen(k) for k in feeds])
    stream_bytes = await client.memory_usage(STREAM, samples=0) or 0
    stream_entries = await client.xlen(STREAM) if await client.exists(STREAM) else 0
    used = (await client.info("memory"))["used_memory"]
    ended = sum([await client.hget(k, "ended") == b"1" for k in infos])
    sample = await client.xrange(STREAM, count=2000) if stream_entries else []
    body = sum(len(fields[b"body"]) for _, fields in sample) / max(len(sample), 1)
    return {"used_memory": used, "feeds": len(feeds), "ended": ended, "feed_bytes": feed_bytes,
            "info_bytes": info_bytes, "feed_entries": feed_entries,
            "stream_bytes": stream_bytes, "stream_entries": stream_entries,
            "mean_body": body}


async def run(calls: int, utterances: int, partials: bool) -> None:
    program = []
    for n in range(utterances):
        program += [("silence", 600), ("tone", 1500, 400 + 50 * (n % 10))]
    pcm = pcm_program(*program, ("silence", 6000))
    audio = ulaw(pcm)
    seconds = len(pcm) / 16000
    with tempfile.TemporaryDirectory() as tmp:
        async with RedisServer(Path(tmp) / "redis") as server, \
                TelnyxSttEmulator(api_key=API_KEY, script=[SENTENCE] * utterances) as stt, \
                WebhookReceiver() as receiver:
            env = {k: v for k, v in os.environ.items() if not k.startswith("CALLBRIDGE_")}
            env.update({
                "CALLBRIDGE_TELNYX_URL": stt.url, "TELNYX_API_KEY": API_KEY,
                "CALLBRIDGE_TELNYX_INTERIM_RESULTS": "true" if partials else "false",
                "CALLBRIDGE_WEBHOOKS_URLS": receiver.url, "CALLBRIDGE_WEBHOOKS_SECRET": SECRET,
                "CALLBRIDGE_WEBHOOKS_ALLOW_PRIVATE_NETWORKS": "true",
                "CALLBRIDGE_LOGGING_FORMAT": "json", "CALLBRIDGE_LOGGING_LEVEL": "info",
                "CALLBRIDGE_OUTBOX_PATH": str(Path(tmp) / "outbox.db"),
                "CALLBRIDGE_SERVER_ADMIN_TOKEN": ADMIN,
                "CALLBRIDGE_SERVER_MAX_CALLS": str(max(calls, 10)),
                # every call connects from 127.0.0.1 at once
                "CALLBRIDGE_SERVER_MAX_PENDING_STREAMS": str(calls + 10),
                "CALLBRIDGE_SERVER_MAX_PENDING_PER_ADDRESS": str(calls + 10),
                "CALLBRIDGE_LIVE_RETAIN_S": "600",
                "CALLBRIDGE_REDIS_URL": server.url,
                "CALLBRIDGE_CLUSTER_EVENTS_STREAM": STREAM})
            bridge, port, logs = await start_bridge(env)
            client = redis.Redis.from_url(server.url)
            try:
                before = await measure(client)
                specs = [CallSpec("twilio", AudioEncoding.PCMU,
                                  {Track.INBOUND: audio, Track.OUTBOUND: audio},
                                  call_id=f"CA-bench-{n:05d}") for n in range(calls)]
                streams = [asyncio.create_task(stream_call(
                    f"ws://127.0.0.1:{port}/streams/twilio", build_call(spec)))
                    for spec in specs]
                # Measured in the calls' closing silence: every final is out, no call ended
                # (the receiver, in this busy process, may lag behind; Redis does not).
                pending: set[asyncio.Task[Any]] = set(streams)
                timer = asyncio.create_task(asyncio.sleep(seconds - 3))
                pending.add(timer)
                while timer in pending:
                    done, pending = await asyncio.wait(pending,
                                                       return_when=asyncio.FIRST_COMPLETED)
                    for task in done:
                        task.result()  # a call refused or broken ends the run
                live = await measure(client)
                await asyncio.gather(*streams)
                await receiver.wait_for(lambda events: sum(
                    e.type == "call.ended" for e in events) >= calls, within_s=60)
                await asyncio.sleep(1)  # the last batches reach Redis (not a measurement)
                ended = await measure(client)
            finally:
                await client.aclose()
                bridge.terminate()
                await bridge.wait()
                await logs
    report(calls, utterances, seconds, before, live, ended, partials)


def report(calls: int, utterances: int, seconds: float, before: dict[str, Any],
           live: dict[str, Any], ended: dict[str, Any], partials: bool) -> None:
    print(f"calls={calls} legs={calls * 2} utterances/leg={utterances} "
          f"call_s={seconds:.1f} partials={'every 200 ms of speech' if partials else 'off'} "
          f"mean_body={ended['mean_body']:.0f} B")
    for name, m in (("live", live), ("ended", ended)):
        print(f"{name}: used_memory +{(m['used_memory'] - before['used_memory']) / 1024:.0f} KiB"
              f"  feeds={m['feeds']} (ended {m['ended']}) feed_entries={m['feed_entries']} "
              f"feed_bytes={m['feed_bytes']} info_bytes={m['info_bytes']}  "
              f"stream_entries={m['stream_entries']} stream_bytes={m['stream_bytes']}")
    per_call = (live["feed_bytes"] + live["info_bytes"] + live["stream_bytes"]) / calls
    print(f"per live call: {per_call / 1024:.1f} KiB (feed {live['feed_bytes'] / calls / 1024:.1f}"
          f" + identity {live['info_bytes'] / calls:.0f} B + event stream "
          f"{live['stream_bytes'] / calls / 1024:.1f} KiB); used_memory per live call "
          f"{(live['used_memory'] - before['used_memory']) / calls / 1024:.1f} KiB")
    if ended["feed_entries"]:
        print(f"per retained feed event: {ended['feed_bytes'] / ended['feed_entries']:.0f} B")
    if ended["stream_entries"]:
        print(f"per retained event-stream event: "
              f"{ended['stream_bytes'] / ended['stream_entries']:.0f} B")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=50)
    parser.add_argument("--utterances", type=int, default=8)
    parser.add_argument("--no-partials", action="store_true", help="interim results off")
    args = parser.parse_args()
    asyncio.run(run(args.calls, args.utterances, not args.no_partials))


if __name__ == "__main__":
    main()
