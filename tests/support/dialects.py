"""Message builders for the dialects the simulate client does not speak, from the reference.

Each returns (seconds, text or bytes) pairs like ``bridge.simulate.build_call``.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping

from bridge.codecs.pcm import swap_l16

Message = tuple[float, str | bytes]


def _frames(audio: bytes, frame_bytes: int) -> list[bytes]:
    return [audio[n:n + frame_bytes] for n in range(0, len(audio), frame_bytes)]


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def plivo(tracks: Mapping[str, bytes], *, encoding: str, rate: int, call_id: str) -> list[Message]:
    frame = (rate // 1000) * 20 * (2 if "l16" in encoding else 1)
    out: list[Message] = [(0.0, json.dumps({
        "event": "start", "sequenceNumber": 1,
        "start": {"callId": call_id, "streamId": "st-1", "accountId": "MA1",
                  "tracks": list(tracks), "mediaFormat": {"encoding": encoding,
                                                          "sampleRate": rate}},
        "extra_headers": "tenant=acme;agent=7"}))]
    seq = 1
    for track, audio in tracks.items():
        for n, payload in enumerate(_frames(audio, frame)):
            seq += 1
            out.append((n * 0.02, json.dumps({
                "event": "media", "sequenceNumber": seq, "streamId": "st-1",
                "media": {"track": track, "timestamp": str(1705312200000 + n * 20),
                          "chunk": n + 1, "payload": _b64(payload)},
                "extra_headers": "tenant=acme;agent=7"})))
    return sorted(out, key=lambda m: m[0])


def signalwire_l16(tracks: Mapping[str, bytes], *, rate: int, call_id: str) -> list[Message]:
    """Twilio's messages with ``mediaFormat.encoding`` ``L16@<rate>h``, samples big-endian."""
    frame = rate // 1000 * 40
    out: list[Message] = [
        (0.0, json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"})),
        (0.0, json.dumps({"event": "start", "sequenceNumber": "1", "streamSid": "MZsw",
                          "start": {"streamSid": "MZsw", "callSid": call_id,
                                    "tracks": list(tracks),
                                    "mediaFormat": {"encoding": f"L16@{rate}h",
                                                    "channels": 1}}}))]
    for track, audio in tracks.items():
        for n, payload in enumerate(_frames(audio, frame)):
            out.append((n * 0.02, json.dumps({
                "event": "media", "sequenceNumber": str(n + 2), "streamSid": "MZsw",
                "media": {"track": track, "chunk": str(n + 1), "timestamp": str(n * 20),
                          "payload": _b64(swap_l16(payload))}})))
    return sorted(out, key=lambda m: m[0])


def exotel(audio: bytes, *, rate: int, call_id: str) -> list[Message]:
    frame = rate // 1000 * 2 * 100  # Exotel sends about every 100 ms
    out: list[Message] = [
        (0.0, json.dumps({"event": "connected"})),
        (0.0, json.dumps({"event": "start", "sequence_number": "1", "stream_sid": "ex-1",
                          "start": {"stream_sid": "ex-1", "call_sid": call_id,
                                    "account_sid": "acc", "from": "+1", "to": "+2",
                                    "custom_parameters": {"lang": "en"},
                                    "media_format": {"encoding": "audio/x-raw",
                                                     "sample_rate": str(rate),
                                                     "bit_rate": "16"}}}))]
    for n, payload in enumerate(_frames(audio, frame)):
        out.append((n * 0.1, json.dumps({
            "event": "media", "sequence_number": str(n + 2), "stream_sid": "ex-1",
            "media": {"chunk": str(n + 1), "timestamp": str(n * 100),
                      "payload": _b64(payload)}})))
    out.append((out[-1][0] + 0.1, json.dumps({"event": "stop", "sequence_number": "999",
                                              "stream_sid": "ex-1", "stop": {}})))
    return out


def bandwidth(tracks: Mapping[str, bytes], *, call_id: str) -> list[Message]:
    out: list[Message] = [(0.0, json.dumps({
        "eventType": "start",
        "metadata": {"accountId": "9900000", "callId": call_id, "streamId": "s-bw",
                     "tracks": [{"name": t, "mediaFormat": {"encoding": "audio/PCMU",
                                                            "sampleRate": 8000}}
                                for t in tracks]},
        "streamParams": {"queue": "billing"}}))]
    for track, audio in tracks.items():
        for n, payload in enumerate(_frames(audio, 160)):
            out.append((n * 0.02, json.dumps({"eventType": "media", "track": track,
                                              "payload": _b64(payload)})))
    out = sorted(out, key=lambda m: m[0])
    out.append((out[-1][0] + 0.02, json.dumps({"eventType": "stop",
                                               "metadata": {"callId": call_id}})))
    return out


def binary(metadata: str, audio: bytes, *, rate: int, channels: int) -> list[Message]:
    """A metadata text frame, then 20 ms binary frames (interleaved when stereo)."""
    frame = rate // 1000 * 20 * 2 * channels
    return [(0.0, metadata)] + [(n * 0.02, payload)
                                for n, payload in enumerate(_frames(audio, frame))]


def telnyx_packets(tracks: Mapping[str, list[bytes]], *, codec: str, rate: int,
                   call_id: str) -> list[Message]:
    """Telnyx media carrying one compressed packet (20 ms) per message."""
    out: list[Message] = [
        (0.0, json.dumps({"event": "connected", "version": "1.0.0"})),
        (0.0, json.dumps({"event": "start", "sequence_number": "1", "stream_id": "tx-1",
                          "start": {"call_control_id": call_id,
                                    "media_format": {"encoding": codec, "sample_rate": rate,
                                                     "channels": 1}}}))]
    for track, packets in tracks.items():
        for n, payload in enumerate(packets):
            out.append((n * 0.02, json.dumps({
                "event": "media", "sequence_number": str(n + 2), "stream_id": "tx-1",
                "media": {"track": track, "chunk": str(n + 1), "timestamp": str(n * 20),
                          "payload": _b64(payload)}})))
    out = sorted(out, key=lambda m: m[0])
    out.append((out[-1][0] + 0.02, json.dumps({"event": "stop", "sequence_number": "9999",
                                               "stream_id": "tx-1", "stop": {}})))
    return out
