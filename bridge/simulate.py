"""A media-stream client: plays audio files to a bridge as a Twilio or Telnyx stream would.

Message building is pure (``build_call``): every message of the call is made up front with
its send time, so that pacing costs nothing per frame. ``stream_call`` sends them over one
WebSocket at real-time pace (or ``speed`` times faster). The demo and the load generator use
the same two pieces.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
import uuid
import wave
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import aiohttp

from bridge.codecs import g711
from bridge.codecs.resample import resample, to_mono_16bit
from bridge.errors import CallbridgeError
from bridge.events import AudioEncoding, Track

FRAME_MS: Final = 20
RAW_EXTENSIONS: Final[Mapping[str, AudioEncoding | None]] = {
    ".ulaw": AudioEncoding.PCMU, ".mulaw": AudioEncoding.PCMU, ".pcmu": AudioEncoding.PCMU,
    ".alaw": AudioEncoding.PCMA, ".pcma": AudioEncoding.PCMA,
    ".raw": None, ".g711": None,  # raw G.711 already in the stream's codec
}
DIALECTS: Final = ("twilio", "telnyx")


def load_audio(path: Path, encoding: AudioEncoding) -> bytes:
    """Read a WAV file (any rate, 8-32 bit, mono or stereo) or raw G.711 as ``encoding`` bytes."""
    suffix = path.suffix.lower()
    if suffix == ".wav":
        with wave.open(str(path), "rb") as wav:
            if wav.getcomptype() != "NONE":
                raise ValueError(f"{path}: only uncompressed PCM WAV files are supported")
            pcm = to_mono_16bit(wav.readframes(wav.getnframes()),
                                sample_width=wav.getsampwidth(), channels=wav.getnchannels())
            rate = wav.getframerate()
        return g711.encode(encoding, resample(pcm, rate_in=rate, rate_out=g711.SAMPLE_RATE))
    if suffix not in RAW_EXTENSIONS:
        raise ValueError(f"{path}: expected .wav or raw G.711 ({', '.join(RAW_EXTENSIONS)})")
    data = path.read_bytes()
    source = RAW_EXTENSIONS[suffix] or encoding
    if source is encoding:
        return data
    return g711.encode(encoding, g711.decode(source, data))


@dataclass(frozen=True, slots=True)
class CallSpec:
    """What to stream: one or two tracks of G.711 audio and the call's identity."""

    dialect: str
    encoding: AudioEncoding
    tracks: Mapping[Track, bytes]
    call_id: str = field(default_factory=lambda: f"CA{uuid.uuid4().hex}")
    stream_id: str = field(default_factory=lambda: f"MZ{uuid.uuid4().hex}")
    custom_parameters: Mapping[str, str] = field(default_factory=dict)
    first_timestamp_ms: int = 0


def build_call(spec: CallSpec, *, frame_ms: int = FRAME_MS) -> list[tuple[float, str]]:
    """Every message of the call as (seconds from start, JSON text), in sending order."""
    if spec.dialect not in DIALECTS:
        raise ValueError(f"dialect must be one of {DIALECTS}")
    twilio = spec.dialect == "twilio"
    frame_bytes = frame_ms * g711.BYTES_PER_MS
    messages: list[tuple[float, str]] = []
    sequence = 0

    def add(at_s: float, message: dict[str, object]) -> None:
        nonlocal sequence
        sequence += 1
        if message["event"] != "connected":
            message["sequenceNumber" if twilio else "sequence_number"] = str(sequence)
            message["streamSid" if twilio else "stream_id"] = spec.stream_id
        messages.append((at_s, json.dumps(message, separators=(",", ":"))))

    tracks = [t.value for t in spec.tracks]
    if twilio:
        add(0.0, {"event": "connected", "protocol": "Call", "version": "1.0.0"})
        add(0.0, {"event": "start", "start": {
            "streamSid": spec.stream_id, "accountSid": "AC" + "0" * 32, "callSid": spec.call_id,
            "tracks": tracks, "customParameters": dict(spec.custom_parameters),
            "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}}})
    else:
        add(0.0, {"event": "connected", "version": "1.0.0"})
        add(0.0, {"event": "start", "start": {
            "call_control_id": spec.call_id, "call_session_id": str(uuid.uuid4()),
            "tracks": tracks, "custom_parameters": dict(spec.custom_parameters),
            "media_format": {"encoding": spec.encoding.name, "sample_rate": 8000,
                             "channels": 1}}})
    frames: list[tuple[int, int, Track, bytes]] = []
    for order, (track, audio) in enumerate(spec.tracks.items()):
        for offset in range(0, len(audio), frame_bytes):
            at_ms = offset // g711.BYTES_PER_MS
            frames.append((at_ms, order, track, audio[offset:offset + frame_bytes]))
    frames.sort(key=lambda f: (f[0], f[1]))
    for chunk, (at_ms, _order, track, payload) in enumerate(frames, start=1):
        add(at_ms / 1000, {"event": "media", "media": {
            "track": track.value, "chunk": str(chunk),
            "timestamp": str(spec.first_timestamp_ms + at_ms),
            "payload": base64.b64encode(payload).decode("ascii")}})
    end_s = messages[-1][0] + frame_ms / 1000
    add(end_s, {"event": "stop", "stop": {"callSid" if twilio else "call_control_id":
                                          spec.call_id}})
    return messages


@dataclass(slots=True)
class StreamResult:
    messages_sent: int = 0
    close_code: int | None = None
    lag_max_s: float = 0.0  # how far behind schedule the sender fell


async def stream_call(url: str, messages: Sequence[tuple[float, str | bytes]], *,
                      speed: float = 1.0, session: aiohttp.ClientSession | None = None,
                      headers: Mapping[str, str] | None = None,
                      protocols: Sequence[str] = ()) -> StreamResult:
    """Send the messages over one WebSocket, paced by their times divided by ``speed``.

    ``speed`` 0 sends as fast as the socket takes them. Returns once the stream is sent and
    the bridge has closed the connection (or after the last message, closing it ourselves).
    Cancelling closes the socket.
    """
    own_session = session is None
    client = session or aiohttp.ClientSession()
    result = StreamResult()
    try:
        async with client.ws_connect(url, headers=headers, autoping=True, protocols=protocols,
                                     max_msg_size=1024 * 1024) as ws:
            start = time.monotonic()
            for at_s, text in messages:
                if speed > 0:
                    due = start + at_s / speed
                    delay = due - time.monotonic()
                    if delay > 0:
                        await asyncio.sleep(delay)
                    else:
                        result.lag_max_s = max(result.lag_max_s, -delay)
                if ws.closed:
                    break
                try:
                    if isinstance(text, bytes):
                        await ws.send_bytes(text)  # the binary dialects' audio
                    else:
                        await ws.send_str(text)
                except (aiohttp.ClientConnectionResetError, ConnectionResetError):
                    break  # the bridge ended the stream (its close arrives below)
                result.messages_sent += 1
            await ws.close()
            result.close_code = ws.close_code
    finally:
        if own_session:
            await client.close()
    return result


class BridgeNotReady(CallbridgeError):
    """No bridge answered ``/healthz`` at the URL within the wait."""

    def __init__(self, url: str, waited_s: float) -> None:
        super().__init__(url, waited_s)
        self.url = url
        self.waited_s = waited_s

    def __str__(self) -> str:
        return (f"no bridge answered {self.url} within {self.waited_s:g} s "
                "(is `callbridge serve` running? raise --wait if it is still starting)")


async def wait_for_bridge(url: str, within_s: float, *, poll_s: float = 0.25) -> None:
    """Return once the bridge behind the media ``url`` answers ``GET /healthz`` with 200.

    Polls, because another process's start-up sends no event. ``within_s`` 0 checks once.
    Raises ``BridgeNotReady`` when the time runs out. Cancelling leaves nothing open.
    """
    health = health_url(url)
    deadline = time.monotonic() + within_s
    timeout = aiohttp.ClientTimeout(total=max(1.0, min(within_s, 5.0)))
    async with aiohttp.ClientSession(timeout=timeout) as session:
        while True:
            try:
                async with session.get(health) as response:
                    if response.status == 200:
                        return
            except (aiohttp.ClientError, TimeoutError):
                pass  # not listening yet, or still starting: try again until the deadline
            if time.monotonic() + poll_s > deadline:
                raise BridgeNotReady(health, within_s)
            await asyncio.sleep(poll_s)


def health_url(url: str) -> str:
    """The ``/healthz`` URL of the bridge serving the media URL ``url``."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in ("ws", "wss"):
        raise ValueError(f"expected a ws:// or wss:// URL, got {url!r}")
    host = rest.split("/", 1)[0]
    return f"{'https' if scheme == 'wss' else 'http'}://{host}/healthz"


def stream_url(base: str, dialect: str) -> str:
    """A bridge URL: used as given when it has a path, else ``/streams/<dialect>`` is added."""
    scheme, sep, rest = base.partition("://")
    if not sep:
        raise ValueError(f"expected a ws:// or wss:// URL, got {base!r}")
    host, _, path = rest.partition("/")
    if path:
        return base
    return f"{scheme}://{host}/streams/{dialect}"
