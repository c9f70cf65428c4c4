"""Bandwidth ``<StartStream>``.

Messages are keyed ``eventType`` (``start``, ``media``, ``stop``); ``start.metadata``
carries the ids and the tracks, each with its own ``mediaFormat`` (PCMU at 8 kHz); media
names its ``track`` at the top level and carries no timestamp, so frames are taken in
arrival order. ``streamParams`` are the custom parameters. DTMF is not streamed.
"""

from __future__ import annotations

from typing import Any

from bridge.errors import ProtocolViolation
from bridge.events import AudioFrame, StreamStarted, StreamStopped
from bridge.ingress.base import (
    JsonMediaDialect,
    Step,
    decode_payload,
    get_encoding,
    get_id,
    get_object,
    get_parameters,
    get_sample_rate,
    get_track,
)


class BandwidthDialect(JsonMediaDialect):
    """Sans-I/O parser for Bandwidth media streams."""

    name = "bandwidth"

    def _dispatch(self, message: dict[str, Any]) -> None:
        event = message.get("eventType")
        if event == "media":
            self._advance(Step.MEDIA, event)
            self._events.append(AudioFrame(track=get_track(message.get("track")),
                                           payload=decode_payload(message.get("payload")),
                                           timestamp_ms=None, chunk=None))
        elif event == "start":
            self._advance(Step.START, event)
            self._accept_start(message)
        elif event == "stop":
            self._advance(Step.STOP, event)
            self._events.append(StreamStopped())
        else:
            raise ProtocolViolation(f"unknown eventType {str(event)[:40]!r}")

    def _parse_start(self, message: dict[str, Any]) -> StreamStarted:
        metadata = get_object(message, "metadata")
        tracks = metadata.get("tracks") or [{"name": "inbound"}]
        if not isinstance(tracks, list) or not all(isinstance(t, dict) for t in tracks):
            raise ProtocolViolation("metadata.tracks must be a list of objects")
        media_format = tracks[0].get("mediaFormat") or {}
        if not isinstance(media_format, dict):
            raise ProtocolViolation("mediaFormat must be an object")
        return StreamStarted(
            provider=self.name,
            call_id=get_id(metadata, "callId"),
            stream_id=get_id(metadata, "streamId"),
            encoding=get_encoding(media_format.get("encoding", "audio/PCMU")),
            sample_rate=get_sample_rate(media_format, "sampleRate"),
            tracks=tuple(get_track(t.get("name")) for t in tracks),
            custom_parameters=get_parameters(message.get("streamParams")),
        )
