"""One leg's transcript stage: redaction with hold-back, sequence numbers, the text so far.

``LegTranscripts`` takes the leg's results (placed on its clock) and decides what goes out:

* a partial goes out at once, redacted with the held finals as context, carrying the
  ``sequence`` its final will have, so a viewer updates it in place;
* a final goes through the leg's redactor, which may hold it back while a number may go on in
  the next one (``compliance.hold_s`` at most); finals leave in order with sequence numbers
  1, 2, 3 ... without holes (one emptied by a number that began before it lends its end time
  to that one instead);
* a final's event data may get more fields from its redacted text (``annotate``:
  sentiment);
* while finals are held, the owner is handed them with every number masked (``hold``), so a
  crash in that window loses nothing and writes no digit; an empty list says none is held.

It hands event data to the callbacks it was given, with the result's ``Timing`` (when it was
received; None for results made here), and never sees the call.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from bridge.compliance.mask import MASKED_ON_RECOVERY, mask_numbers
from bridge.compliance.redact import LegRedactor, Policy, Redacted, Released
from bridge.events import EventType, TranscriptResult
from bridge.stages import Timing

Fields = dict[str, Any]


class LegTranscripts:
    """One leg's transcripts; see the module docstring."""

    def __init__(self, policy: Policy, *, hold_s: float,
                 publish: Callable[[EventType, Fields, Timing | None], None],
                 hold: Callable[[list[Fields]], None],
                 released: Callable[[TranscriptResult, Redacted, Fields | None], None]
                 | None = None,
                 annotate: Callable[[str], Fields] | None = None) -> None:
        self._redactor: LegRedactor[TranscriptResult] = LegRedactor(policy)
        self._hold_s = hold_s
        self._publish = publish
        self._hold = hold
        # Told of every final as it leaves the redactor, with what the redactor removed from
        # it: published (its event data) or emptied by a number (None).
        self._released = released
        # Fields added to each final's event data, from its redacted text (sentiment).
        self._annotate = annotate
        self._timer: asyncio.TimerHandle | None = None
        self._holding_stored = False  # the owner keeps masked held finals of this leg
        self.sequence = 0  # finals published so far
        self.partials = 0
        self.finals: list[str] = []  # the redacted text of each final published

    def result(self, result: TranscriptResult) -> None:
        """A result from the engine: a partial goes out now, a final maybe later."""
        if not result.is_final:
            redacted = self._redactor.partial(result.text)
            self.partials += 1
            self._publish(EventType.TRANSCRIPT_PARTIAL,
                          _fields(result, redacted, self.sequence + len(self._redactor.held) + 1),
                          result.timing)
            return
        self._release(self._redactor.final(result.text, result))
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._redactor.holding:
            self._timer = asyncio.get_running_loop().call_later(self._hold_s, self._expired)
        self._store_held()

    def flush(self) -> None:
        """The leg is over: whatever is held goes out now."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._release(self._redactor.flush())
        self._store_held()

    @property
    def redaction_counts(self) -> dict[str, int]:
        return dict(sorted(self._redactor.totals.items()))

    def _expired(self) -> None:
        """A held final waited ``compliance.hold_s`` for the next one: it goes out."""
        self._timer = None
        self._release(self._redactor.flush())
        self._store_held()

    def _store_held(self) -> None:
        """Hand the owner the held finals with every number masked, replacing the last set."""
        held = self._redactor.held
        if not held and not self._holding_stored:
            return
        self._holding_stored = bool(held)
        self._hold([{
            "sequence": self.sequence + n,
            "text": mask_numbers(text),
            "is_final": True,
            "confidence": result.confidence,
            "start_ms": result.start_ms,
            "end_ms": result.end_ms,
            "redactions": [{"type": MASKED_ON_RECOVERY, "count": 1}],
        } for n, (text, result) in enumerate(held, start=1)])

    def _release(self, released: list[Released[TranscriptResult]]) -> None:
        """Publish released finals in order; one emptied by a number that began in a final
        before it does not go out (it lends its end time to that final when both leave
        together)."""
        ready: list[tuple[TranscriptResult, Redacted]] = []
        for item in released:
            if not item.text:
                if self._released is not None:
                    self._released(item.payload, item.redacted, None)
                if ready:  # its words were the end of a number redacted in the one before
                    previous, redacted = ready[-1]
                    ready[-1] = (replace(previous, end_ms=item.payload.end_ms), redacted)
                continue  # nothing left to say: sequence numbers are given out below
            ready.append((item.payload, item.redacted))
        for result, redacted in ready:
            self.sequence += 1
            self.finals.append(redacted.text)
            fields = _fields(result, redacted, self.sequence)
            if self._annotate is not None:
                fields.update(self._annotate(redacted.text))
            if self._released is not None:
                self._released(result, redacted, fields)
            self._publish(EventType.TRANSCRIPT_FINAL, fields, result.timing)


def _fields(result: TranscriptResult, redacted: Redacted, sequence: int) -> Fields:
    return {
        "sequence": sequence,
        "text": redacted.text,
        "is_final": result.is_final,
        "confidence": result.confidence,
        "start_ms": result.start_ms,
        "end_ms": result.end_ms,
        "redactions": redacted.summary(),
        # Word times when the engine gives them, and only for text the redactor left as it
        # was: words would carry what it removed.
        **({"words": [{"text": t, "start_ms": s, "end_ms": e, "confidence": c}
                      for t, s, e, c in result.words]}
           if result.words and redacted.text == result.text else {}),
    }
