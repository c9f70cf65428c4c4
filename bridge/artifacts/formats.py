"""A call's transcript as files: JSON, WebVTT, SRT and plain text. Pure.

Each function takes the call's utterances as ``TranscriptRecord.conversation()`` gives them
(the event data of every published final, with ``leg`` and ``speaker``, ordered on the call's
clock) and returns the file's bytes (UTF-8). The text is the published text, so the files are
redacted exactly as the webhooks were: nothing here sees what the redactor removed.

WebVTT follows the W3C WebVTT recommendation: cue times ``hh:mm:ss.ttt``, the speaker as a
voice span ``<v Caller>``, and ``&``, ``<`` and ``>`` escaped in cue text (section 4.2.2: a
cue's text may not hold "-->" nor a bare "<" or "&"). SRT has no markup: the speaker leads
the line, as in the plain text.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping, Sequence
from typing import Any, Final

import orjson

# The transcript files every call with artifacts on gets, and their media types.
TRANSCRIPT_FILES: Final[Mapping[str, str]] = {
    "transcript.json": "application/json",
    "transcript.vtt": "text/vtt; charset=utf-8",
    "transcript.srt": "application/x-subrip; charset=utf-8",
    "transcript.txt": "text/plain; charset=utf-8",
}
JSON_FORMAT_VERSION: Final = 1
# The keys of a final's event data that the JSON file keeps for each utterance.
UTTERANCE_KEYS: Final = ("leg", "speaker", "sequence", "start_ms", "end_ms", "text",
                         "confidence", "redactions", "words")

_WHITESPACE: Final = re.compile(r"\s+")

Utterance = Mapping[str, Any]


def transcript_files(utterances: Sequence[Utterance],
                     call: Mapping[str, Any]) -> dict[str, bytes]:
    """Every transcript file of a call, by name (the names of ``TRANSCRIPT_FILES``)."""
    return {
        "transcript.json": transcript_json(utterances, call),
        "transcript.vtt": webvtt(utterances),
        "transcript.srt": srt(utterances),
        "transcript.txt": plain_text(utterances),
    }


def transcript_json(utterances: Sequence[Utterance], call: Mapping[str, Any]) -> bytes:
    """The call's metadata (``call``: ids, provider, custom parameters, how it ended) and
    every utterance with its speaker, leg, times, confidence, redactions, and its words when
    the engine gave them."""
    document = {
        "version": JSON_FORMAT_VERSION,
        **call,
        "utterances": [{key: u[key] for key in UTTERANCE_KEYS if key in u}
                       for u in utterances],
    }
    # orjson: the standard library's encoder with indentation is its slow pure-Python one
    # (about 0.1 ms per final, 6 s for the longest call a record keeps).
    return orjson.dumps(document, option=orjson.OPT_INDENT_2 | orjson.OPT_APPEND_NEWLINE)


def webvtt(utterances: Sequence[Utterance]) -> bytes:
    """A WebVTT file: one cue per utterance, the speaker as its voice."""
    cues = ["WEBVTT", ""]
    for number, utterance in enumerate(utterances, start=1):
        start, end = _span(utterance)
        voice = _escape_vtt(speaker_label(utterance))
        cues += [str(number), f"{vtt_time(start)} --> {vtt_time(end)}",
                 f"<v {voice}>{_escape_vtt(_one_line(utterance))}", ""]
    return "\n".join(cues).encode()


def srt(utterances: Sequence[Utterance]) -> bytes:
    """A SubRip file: numbered blocks, ``hh:mm:ss,ttt`` times, "Speaker: text"."""
    blocks = []
    for number, utterance in enumerate(utterances, start=1):
        start, end = _span(utterance)
        blocks.append(f"{number}\n{srt_time(start)} --> {srt_time(end)}\n"
                      f"{speaker_label(utterance)}: {_one_line(utterance)}\n")
    return "\n".join(blocks).encode()


def plain_text(utterances: Sequence[Utterance]) -> bytes:
    """One "Speaker: text" line per utterance."""
    return "".join(f"{speaker_label(u)}: {_one_line(u)}\n" for u in utterances).encode()


def speaker_label(utterance: Utterance) -> str:
    """The speaker as people read it: "caller" becomes "Caller"; empty names the leg."""
    return _label(str(utterance.get("speaker") or utterance.get("leg") or ""))


@functools.lru_cache(maxsize=64)  # a call has two or three speakers
def _label(name: str) -> str:
    name = _WHITESPACE.sub(" ", name).strip() or "Speaker"
    return name[:1].upper() + name[1:]


def vtt_time(ms: int) -> str:
    """Milliseconds as WebVTT's ``hh:mm:ss.ttt`` (hours grow past two digits if need be)."""
    return _clock(ms, ".")


def srt_time(ms: int) -> str:
    """Milliseconds as SRT's ``hh:mm:ss,ttt``."""
    return _clock(ms, ",")


def _clock(ms: int, separator: str) -> str:
    seconds, millis = divmod(max(0, ms), 1000)
    minutes, seconds = divmod(seconds, 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours:02d}:{minutes:02d}:{seconds:02d}{separator}{millis:03d}"


def _span(utterance: Utterance) -> tuple[int, int]:
    """The utterance's start and end; an end before the start is the start (a cue may not
    end before it begins)."""
    start = max(0, int(utterance.get("start_ms") or 0))
    return start, max(start, int(utterance.get("end_ms") or 0))


def _one_line(utterance: Utterance) -> str:
    """The text on one line: a line break would end a cue or a block early."""
    return _WHITESPACE.sub(" ", str(utterance.get("text", ""))).strip()


def _escape_vtt(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
