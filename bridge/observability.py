"""Logging, configured once: JSON lines in production, readable lines on a terminal.

Context (``call_id``, ``stream_id``, ``provider``, ``leg``) is bound with contextvars at the
top of each unit of work, so every line about a call carries it without passing it around.
Nothing logs audio, transcript text or secrets: callers log counts and ids only.
"""

from __future__ import annotations

import logging
import sys
from typing import Final

import structlog

LEVELS: Final = {"debug": logging.DEBUG, "info": logging.INFO,
                 "warning": logging.WARNING, "error": logging.ERROR}


def configure_logging(level: str = "info", fmt: str = "auto") -> None:
    """Set up structlog for the whole process. ``fmt``: auto, json or console."""
    console = sys.stderr.isatty() if fmt == "auto" else fmt == "console"
    renderer: structlog.typing.Processor = (
        structlog.dev.ConsoleRenderer(colors=True) if console
        else structlog.processors.JSONRenderer())
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            bound_fields,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info if not console else _identity,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(LEVELS[level]),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=True,
    )


MAX_FIELD_CHARS: Final = 300
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
