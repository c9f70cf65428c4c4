"""What an engine emulator does wrong, said the same way for every engine.

Each emulator keeps ``faults``: one entry per new session, in turn (``None``: that session
behaves), and ``every_session``: the fault of every session once the list has run out (an
engine that fails for good). A fault strikes once the session has received ``after_bytes`` of
audio.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Failure(enum.Enum):
    DROP = "drop"  # the socket is cut: no close frame, the client sees 1006
    STALL = "stall"  # the engine reads on and says nothing more
    CLOSE = "close"  # a close frame with ``code``
    ERROR = "error"  # the engine's own error frame, then a close with ``code``


@dataclass(frozen=True, slots=True)
class Fault:
    after_bytes: int
    failure: Failure
    code: int = 1011


class Faults:
    """The faults of an emulator's sessions; see the module docstring."""

    def __init__(self) -> None:
        self.faults: list[Fault | None] = []
        self.every_session: Fault | None = None

    def for_new_session(self) -> Fault | None:
        """The fault of the session that has just opened."""
        return self.faults.pop(0) if self.faults else self.every_session
