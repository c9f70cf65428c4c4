"""``callbridge demo``: a whole call, offline, in one process.

The embedded recognizer, the bridge and a webhook receiver run on 127.0.0.1; the sample
support call (two legs, caller and agent) is streamed through the bridge as a Twilio media
stream by the ``simulate`` client. The receiver verifies each webhook's signature and drives
the captions; the end shows each leg's transcript, its word error rate against the sample's
script, and how delivery went, then one verdict line.

Pace: the two legs take turns, so at ``--speed S`` the recognizer hears about S legs' worth of
speech at once. ``MAX_SPEED`` is what it sustains on a busy two-core machine (see
bench/README.md); partial results are asked for once per ``partial_every_ms`` x S of audio,
so their cost per second of wall time does not grow with the speed. The bridge waits for the
recognizer's last finals (``stt.close_grace_s``) instead of closing after two seconds.
"""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Final, TextIO

from aiohttp import web

from bridge.config import load_settings, override
from bridge.delivery.dispatcher import DurableDispatcher
from bridge.delivery.signing import verify
from bridge.events import AudioEncoding, Track
from bridge.simulate import CallSpec, build_call, stream_call
from bridge.stt.local.protocol import PATH
from bridge.stt.local.server import create_stt_app
from bridge.web.app import create_app
from bridge.web.keys import SINK
from bridge.wer import word_errors

SAMPLE: Final = Path(__file__).with_name("samples") / "support_call"
LEGS: Final = {Track.INBOUND: "caller", Track.OUTBOUND: "agent"}
END_TIMEOUT_S: Final = 90.0
SPEEDS: Final = (1.0, 2.0, 4.0)
MAX_SPEED: Final = max(SPEEDS)
# The recognizer closes the session right after its last final; this only bounds the wait.
LAST_FINALS_WAIT_S: Final = 60.0


@dataclass(frozen=True, slots=True)
class Sample:
    tracks: Mapping[Track, bytes]
    reference: Mapping[str, str]  # speaker -> script text

    @property
    def seconds(self) -> float:
        return max(len(audio) for audio in self.tracks.values()) / 8000


def load_sample(folder: Path = SAMPLE) -> Sample:
    meta = json.loads((folder / "reference.json").read_text())
    tracks = {track: (folder / f"{name}.ulaw").read_bytes() for track, name in LEGS.items()}
    return Sample(tracks, meta["reference"])


class CaptionView:
    """Speaker-labelled captions; on a terminal, partials update in place under the finals."""

    def __init__(self, out: TextIO, live: bool) -> None:
        self.out = out
        self.live = live
        self.partials: dict[str, str] = {}
        self._drawn = 0

    def show(self, event_type: str, data: Mapping[str, Any]) -> None:
        speaker = str(data.get("speaker") or "")
        if event_type == "transcript.partial" and self.live:
            self.partials[speaker] = str(data["text"])
            self._redraw()
        elif event_type == "transcript.final":
            self.partials.pop(speaker, None)
            self._clear()
            seconds = int(data["start_ms"]) / 1000
            self.out.write(f"[{seconds:5.1f}s] {speaker:>6}: {data['text']}\n")
            self._redraw()
        elif event_type == "transcription.error":
            self._clear()
            self.out.write(f"        {speaker:>6}: (transcription failed: "
                           f"{data['error']['message']})\n")
            self._redraw()

    def close(self) -> None:
        self.partials.clear()
        self._clear()

    def _clear(self) -> None:
        if self._drawn:
            self.out.write(f"\x1b[{self._drawn}F\x1b[J")  # up N lines, clear to the end
            self._drawn = 0

    def _redraw(self) -> None:
        if not self.live:
            self.out.flush()
            return
        self._clear()
        for speaker, text in self.partials.items():
            self.out.write(f"\x1b[2m        {speaker:>6}: {text} …\x1b[0m\n")
        self._drawn = len(self.partials)
        self.out.flush()


@dataclass
class DemoReceiver:
    """The webhook receiver: verifies signatures, hands events to the captions."""

    key: bytes
    view: CaptionView
    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    bad_signatures: int = 0
    ended: asyncio.Event = field(default_factory=asyncio.Event)

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        if not verify(self.key, request.headers, body, now=int(time.time())):
            self.bad_signatures += 1
            return web.Response(status=401)
        payload = json.loads(body)
        self.events.append((payload["type"], payload["data"]))
        self.view.show(payload["type"], payload["data"])
        if payload["type"] == "call.ended":
            self.ended.set()
        return web.Response(status=204)


async def _start(app: web.Application) -> tuple[web.AppRunner, int]:
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    return runner, int(runner.addresses[0][1])


async def run_demo(*, speed: float = 1.0, model: str = "whisper-tiny.en",
                   out: TextIO = sys.stdout, live: bool | None = None) -> int:
    """Run the demo call; returns 0 when every leg was transcribed and every event delivered.

    ``speed`` must be in (0, ``MAX_SPEED``]. Raises ``ConfigError`` when the model's weights
    are refused; the servers it started are stopped whatever happens.
    """
    sample = load_sample()
    view = CaptionView(out, out.isatty() if live is None else live)
    key = secrets.token_bytes(32)
    secret = "whsec_" + base64.b64encode(key).decode()
    receiver = DemoReceiver(key, view)
    hooks = web.Application()
    hooks.router.add_post("/hooks", receiver.handle)
    runners: list[web.AppRunner] = []
    workdir = tempfile.TemporaryDirectory(prefix="callbridge-demo-")
    try:
        base = load_settings(environ={})
        local = replace(base.local_stt, model=model, partial_every_ms=min(
            int(base.local_stt.partial_every_ms * max(speed, 1.0)), 10000))
        recognizer_runner, stt_port = await _start(create_stt_app(local))
        runners.append(recognizer_runner)
        hooks_runner, hooks_port = await _start(hooks)
        runners.append(hooks_runner)
        settings = load_settings(environ={
            "CALLBRIDGE_TELNYX_URL": f"ws://127.0.0.1:{stt_port}{PATH}",
            "CALLBRIDGE_TELNYX_INTERIM_RESULTS": "true",
            "CALLBRIDGE_WEBHOOKS_URLS": f"http://127.0.0.1:{hooks_port}/hooks",
            "CALLBRIDGE_WEBHOOKS_SECRET": secret,
            # the demo's receiver is on this machine: allow loopback webhooks for it
            "CALLBRIDGE_WEBHOOKS_ALLOW_PRIVATE_NETWORKS": "true",
            "CALLBRIDGE_OUTBOX_PATH": str(Path(workdir.name) / "outbox.db"),
        })
        settings = override(settings, "stt", close_grace_s=LAST_FINALS_WAIT_S)
        bridge = create_app(settings)
        bridge_runner, bridge_port = await _start(bridge)
        runners.append(bridge_runner)
        spec = CallSpec("twilio", AudioEncoding.PCMU, sample.tracks, call_id="CAdemo0001",
                        custom_parameters={"demo": "support_call"})
        out.write(f"callbridge demo: a {sample.seconds:.0f} s support call, caller and agent, "
                  f"streamed at {speed:g}x through the bridge to the embedded recognizer "
                  f"({model})\n\n")
        out.flush()
        started = time.monotonic()
        await stream_call(f"ws://127.0.0.1:{bridge_port}/streams/twilio", build_call(spec),
                          speed=speed)
        async with asyncio.timeout(END_TIMEOUT_S):
            await receiver.ended.wait()
        elapsed = time.monotonic() - started
        view.close()
        dispatcher = bridge[SINK]
    finally:
        for runner in reversed(runners):  # the bridge first: its webhooks drain
            await runner.cleanup()
        workdir.cleanup()
    return _report(out, sample, receiver, dispatcher, elapsed, model)


def _report(out: TextIO, sample: Sample, receiver: DemoReceiver, dispatcher: object,
            elapsed: float, model: str) -> int:
    ended = next(data for kind, data in receiver.events if kind == "call.ended")
    out.write(f"\ncall ended after {elapsed:.1f} s ({ended['reason']})\n")
    problems: list[str] = []
    rates: list[str] = []
    all_errors = all_words = 0
    for leg in ended["legs"]:
        reference = sample.reference[leg["speaker"]]
        errors, count = word_errors(reference, leg["text"])
        all_errors += errors
        all_words += count
        rates.append(f"{leg['speaker']} {errors / max(count, 1):.0%}")
        out.write(f"\n{leg['speaker']} ({leg['leg']} leg), {leg['transcripts']} finals:\n"
                  f"  heard:     {leg['text']}\n  reference: {reference}\n")
        if leg["upstream"] != "ok":
            problems.append(f"the {leg['speaker']} leg's recognizer session ended "
                            f"{leg['upstream']}")
        elif not leg["transcripts"]:
            problems.append(f"nothing was recognised on the {leg['speaker']} leg")
    whole = all_errors / max(all_words, 1)
    out.write(f"\nword error rate (numbers and contractions normalised): {', '.join(rates)}, "
              f"whole call {whole:.0%} ({all_errors} errors in {all_words} words)\n")
    counts: dict[str, int] = {}
    for kind, _ in receiver.events:
        counts[kind] = counts.get(kind, 0) + 1
    out.write("webhooks received (signatures verified): "
              + ", ".join(f"{n} {kind}" for kind, n in sorted(counts.items())) + "\n")
    if isinstance(dispatcher, DurableDispatcher):
        stats = dispatcher.stats
        out.write(f"delivery through the outbox: {stats.delivered} delivered, {stats.retried} "
                  f"retried, {stats.dead} dead-lettered; partials: {stats.partials_sent} sent, "
                  f"{stats.partials_dropped} dropped\n")
        if stats.dead or stats.outbox_rejected:
            problems.append(f"{stats.dead + stats.outbox_rejected} webhooks were not delivered")
    if receiver.bad_signatures:
        problems.append(f"{receiver.bad_signatures} webhooks had a bad signature")
    if counts.get("transcription.error"):
        problems.append("the recognizer reported an error")
    out.write(f"\nThe embedded recognizer ({model}) on synthetic speech: a development "
              "default, not a production engine.\n")
    if problems:
        out.write(f"verdict: FAIL - {'; '.join(problems)}\n")
    else:
        out.write(f"verdict: OK - both legs transcribed, whole-call word error rate "
                  f"{whole:.0%}, every webhook delivered and verified\n")
    out.flush()
    return 1 if problems else 0
