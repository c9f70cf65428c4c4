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
            structlog.processors.add_log_level,
            # A terminal reads better with the time of day only; JSON keeps the full UTC time.
            structlog.processors.TimeStamper(fmt="%H:%M:%S" if console else "iso",
                                             utc=not console),
            structlog.processors.format_exc_info if not console else _identity,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(LEVELS[level]),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=True,
    )


def _identity(logger: object, name: str, event: structlog.typing.EventDict
              ) -> structlog.typing.EventDict:
    return event
