"""Logging, configured once: JSON lines in production, readable lines on a terminal.

Context (``call_id``, ``stream_id``, ``provider``, ``leg``) is bound with contextvars at the
top of each unit of work, so every line about a call carries it without passing it around.
Nothing logs audio, transcript text or secrets: callers log counts and ids only.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Mapping
from typing import Final

import structlog

LEVELS: Final = {"debug": logging.DEBUG, "info": logging.INFO,
                 "warning": logging.WARNING, "error": logging.ERROR}


def configure_logging(level: str = "info", fmt: str = "auto", *,
                      process_fields: Mapping[str, object] | None = None) -> None:
    """Set up structlog for the whole process. ``fmt``: auto, json or console.

    ``process_fields`` go on every line of this process (``worker``: which of the processes
    of ``serve --workers`` wrote it, as they share one stderr).
    """
    console = sys.stderr.isatty() if fmt == "auto" else fmt == "console"
    renderer: structlog.typing.Processor = (
        structlog.dev.ConsoleRenderer(colors=True) if console
        else structlog.processors.JSONRenderer())
    constant = dict(process_fields or {})

    def add_process_fields(logger: object, name: str, event: structlog.typing.EventDict
                           ) -> structlog.typing.EventDict:
        for key, value in constant.items():
            event.setdefault(key, value)
        return event

    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            *([add_process_fields] if constant else []),
            bound_fields,
            structlog.processors.add_log_level,
            # A terminal reads better with the time of day only; JSON keeps the full UTC time.
            structlog.processors.TimeStamper(fmt="%H:%M:%S" if console else "iso",
                                             utc=not console),
            structlog.processors.format_exc_info if not console else _identity,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(LEVELS[level]),
        # One write per line (print makes two: the text, then the newline), so lines from
        # the processes of `serve --workers`, which share stderr, never run into each other.
        logger_factory=structlog.WriteLoggerFactory(sys.stderr),
        cache_logger_on_first_use=True,
    )
    root = logging.getLogger()
    root.handlers = [LibraryLogs()]
    root.setLevel(logging.WARNING)


MAX_FIELD_CHARS: Final = 300
LIBRARY_LINES_PER_S: Final = 5


class LibraryLogs(logging.Handler):
    """What libraries log through ``logging`` (aiohttp's "Error handling request" for a
    malformed request, asyncio's reports) becomes structlog lines like the bridge's own: one
    line each, the message cut short, at most ``LIBRARY_LINES_PER_S`` a second (the rest
    counted in the next line). aiohttp's tracebacks are reduced to the exception's type: a
    peer's malformed request is its fault, and its text is the peer's."""

    def __init__(self) -> None:
        super().__init__()
        self._second = 0
        self._lines = 0
        self.suppressed = 0

    def emit(self, record: logging.LogRecord) -> None:
        now = int(time.monotonic())
        if now != self._second:
            self._second, self._lines = now, 0
        self._lines += 1
        if self._lines > LIBRARY_LINES_PER_S:
            self.suppressed += 1
            return
        fields: dict[str, object] = {"logger": record.name}
        if self.suppressed:
            fields["suppressed_before"], self.suppressed = self.suppressed, 0
        error = record.exc_info[1] if record.exc_info else None
        if error is not None:
            if record.name.startswith("aiohttp"):
                fields["error"] = type(error).__name__
            else:
                fields["exc_info"] = record.exc_info
        structlog.get_logger(record.name).log(record.levelno, record.getMessage()[:MAX_FIELD_CHARS],
                                              **fields)
UNBOUNDED_FIELDS: Final = frozenset({"event", "exception", "exc_info", "stack"})


def bound_fields(logger: object, name: str, event: structlog.typing.EventDict
                 ) -> structlog.typing.EventDict:
    """Cut every text field to ``MAX_FIELD_CHARS``: fields copied from the network (a
    provider's error text, a close reason, an id) cannot make one log line large."""
    for key, value in event.items():
        if isinstance(value, str) and len(value) > MAX_FIELD_CHARS and \
                key not in UNBOUNDED_FIELDS:
            event[key] = f"{value[:MAX_FIELD_CHARS]}... ({len(value)} characters)"
    return event


def _identity(logger: object, name: str, event: structlog.typing.EventDict
              ) -> structlog.typing.EventDict:
    return event
