"""The Telnyx STT protocol subset the embedded recognizer speaks: query checks and frames.

Pure functions. Query parameters are checked in the order Telnyx checks them, with its
error codes: engine (40007), format known (40001), format supported here (40002),
sample rate present (40003), a positive integer (40004), valid for the format (40005).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from bridge.config import TELNYX_ENGINES
from bridge.errors import InvalidNumber
from bridge.numbers import read_int

PATH: Final = "/v2/speech-to-text/transcription"
KNOWN_FORMATS: Final = ("mp3", "wav", "webm", "ogg", "flac", "ogg_opus", "webm_opus",
                        "webm-opus", "ogg-opus", "linear16", "linear32", "mulaw", "alaw",
                        "opus", "amr_nb", "amr-nb", "amr_wb", "amr-wb", "g729", "speex")
# What this recognizer decodes, and at which rates.
RATES: Final[Mapping[str, tuple[int, ...]]] = {
    "mulaw": (8000,), "alaw": (8000,), "linear16": (8000, 16000, 24000)}
# Not a Telnyx code: Telnyx documents no concurrency error for STT. Closed with 1013.
TOO_MANY_SESSIONS: Final = "42900"
# Not a Telnyx code either: the session sent speech much faster than it could be recognised.
FELL_BEHIND: Final = "42901"


@dataclass(frozen=True, slots=True)
class QueryError:
    code: str
    title: str
    detail: str
    parameter: str


@dataclass(frozen=True, slots=True)
class SessionParams:
    input_format: str
    sample_rate: int
    interim_results: bool
    endpointing_ms: int | None  # None: the server's default; 0: endpointing off


def check_query(query: Mapping[str, str]) -> SessionParams | QueryError:
    """Validate a session's query string like Telnyx does."""
    engine = query.get("transcription_engine", "Deepgram")
    if engine not in TELNYX_ENGINES:
        return QueryError("40007", "Invalid transcription engine",
                          f"Engine {engine[:40]!r} is not supported", "transcription_engine")
    fmt = query.get("input_format", "mp3")
    if fmt not in KNOWN_FORMATS:
        return QueryError("40001", "Invalid input format",
                          f"Supported formats: {', '.join(KNOWN_FORMATS)}", "input_format")
    if fmt not in RATES:
        return QueryError("40002", "Unsupported format",
                          f"Format {fmt!r} is not supported by the embedded recognizer "
                          f"(mulaw, alaw, linear16)", "input_format")
    raw_rate = query.get("sample_rate")
    if raw_rate is None:
        return QueryError("40003", "Sample rate required",
                          f"sample_rate is required for {fmt!r}", "sample_rate")
    try:
        rate = read_int(raw_rate, field="sample_rate", low=1, high=192_000)
    except InvalidNumber:
        return QueryError("40004", "Invalid sample rate",
                          "sample_rate must be a positive integer", "sample_rate")
    if rate not in RATES[fmt]:
        allowed = " or ".join(str(r) for r in RATES[fmt])
        return QueryError("40005", "Invalid sample rate for format",
                          f"{fmt} requires sample_rate {allowed}", "sample_rate")
    endpointing = query.get("endpointing")
    endpointing_ms: int | None = None
    if endpointing == "false":
        endpointing_ms = 0
    elif endpointing is not None:
        try:
            endpointing_ms = read_int(endpointing, field="endpointing", low=0, high=60_000)
        except InvalidNumber:
            return QueryError("40008", "Invalid endpointing",
                              "endpointing must be milliseconds or false", "endpointing")
    return SessionParams(fmt, rate, query.get("interim_results") == "true", endpointing_ms)


def error_frame(error: QueryError) -> str:
    """The documented error shape: an ``errors`` array, code as a string."""
    return json.dumps({"errors": [{"code": error.code, "title": error.title,
                                   "detail": error.detail,
                                   "source": {"parameter": error.parameter}}]})


def transcript_frame(text: str, *, is_final: bool, confidence: float, start_ms: int,
                     end_ms: int) -> str:
    """A transcript frame in the documented shape, plus segment times in seconds."""
    frame: dict[str, object] = {"transcript": text, "is_final": is_final,
                                "speech_final": is_final,
                                "confidence": confidence if is_final else 0.0}
    frame["start_time"] = round(start_ms / 1000, 3)
    frame["duration"] = round((end_ms - start_ms) / 1000, 3)
    return json.dumps(frame)
