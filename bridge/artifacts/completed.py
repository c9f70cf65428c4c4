"""The data of ``call.completed``: the whole redacted transcript of a call, once. Pure.

A call's transcript is its published finals as lines (``transcript_line``: leg, speaker,
sequence, times and text, redacted exactly as the webhooks carried them), in the
conversation's order: by start time on the call's clock, then leg, then sequence, so that
the order is the same every time. ``completed_data`` builds the event's data from those lines,
the analytics ``call.ended`` carried and the names of the call's stored files.

The event is bounded: past ``max_bytes`` of transcript JSON it carries the first lines that
fit, ``transcript_truncated: true`` and, when the transcript file was stored, its admin API
path (``transcript_url``). A rebuilt transcript (``rebuilt: true``) is the one the outbox
kept of a call a crash cut off: finals held for redaction at the crash are in it masked.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final
from urllib.parse import quote

# What a line of the transcript says of a final (its event data has more: words,
# confidence, redaction counts; the transcript files carry those).
LINE_FIELDS: Final = ("leg", "speaker", "sequence", "start_ms", "end_ms", "text")
# The fields of call.ended that are the call's own; every other one is an analytic.
ENDED_OWN_FIELDS: Final = frozenset({"reason", "duration_ms", "legs"})
TRANSCRIPT_FILE: Final = "transcript.json"


def transcript_line(fields: Mapping[str, Any]) -> dict[str, Any]:
    """The transcript line of a published final, from its event data (with ``leg`` and
    ``speaker``); a field the data lacks is None."""
    return {name: fields.get(name) for name in LINE_FIELDS}


def in_conversation_order(finals: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The transcript lines of finals of both legs (event data, or lines already), ordered
    by start time, then leg, then sequence."""
    return sorted((transcript_line(final) for final in finals),
                  key=lambda line: (_number(line.get("start_ms")), str(line.get("leg")),
                                    _number(line.get("sequence"))))


def transcript_url(call_id: str) -> str:
    """The admin API path of a call's stored transcript file."""
    return f"/calls/{quote(call_id, safe='')}/artifacts/{TRANSCRIPT_FILE}"


def analytics_of(ended: Mapping[str, Any]) -> dict[str, Any]:
    """What ``call.ended`` carried beyond the call's own fields: the analytics. Its
    ``analytics`` object (talk analytics) is unwrapped, so that each figure is named once."""
    extra = {key: value for key, value in ended.items() if key not in ENDED_OWN_FIELDS}
    nested = extra.get("analytics")
    if isinstance(nested, Mapping):
        del extra["analytics"]
        return {**nested, **extra}
    return extra


def completed_data(finals: Iterable[Mapping[str, Any]], *, call_id: str,
                   ended: Mapping[str, Any], artifacts: Sequence[str] = (),
                   max_bytes: int, dropped: int = 0, rebuilt: bool = False) -> dict[str, Any]:
    """The data of a call's ``call.completed``.

    ``finals`` are the call's published finals in any order, as event data with ``leg``
    and ``speaker`` (or as transcript lines already); ``ended`` the data its
    ``call.ended`` carried (reason, duration, legs and analytics); ``artifacts`` the names
    of the files stored for the call; ``dropped`` finals the record did not keep (the
    transcript is then truncated); ``rebuilt``: the lines come from the outbox after a crash.
    """
    ordered = in_conversation_order(finals)
    kept, size = [], 2  # the list's brackets
    for line in ordered:
        # Each line's compact JSON and its comma, as the event body encodes it.
        size += len(json.dumps(line, separators=(",", ":"), ensure_ascii=False).encode()) + 1
        if size - 1 > max_bytes:
            break
        kept.append(line)
    truncated = len(kept) < len(ordered) or dropped > 0
    names = list(artifacts)
    return {
        "reason": ended.get("reason"),
        "duration_ms": ended.get("duration_ms"),
        "transcript": kept,
        "transcript_lines": len(ordered) + dropped,
        "transcript_truncated": truncated,
        "transcript_url": (transcript_url(call_id) if truncated and TRANSCRIPT_FILE in names
                           else None),
        "analytics": analytics_of(ended),
        "artifacts": names,
        "rebuilt": rebuilt,
    }


def _number(value: object) -> int:
    """A line's number as sorted (a line lacking one sorts first)."""
    return value if isinstance(value, int) and not isinstance(value, bool) else -1
