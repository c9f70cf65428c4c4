"""Webhook retry policy, pure: which responses are retried, and how long to wait."""

from __future__ import annotations

import enum
import random
from collections.abc import Sequence
from email.utils import parsedate_to_datetime
from typing import Final

from bridge.errors import InvalidNumber
from bridge.numbers import read_int

# A Retry-After beyond this is clamped: a receiver cannot park our queue for hours.
MAX_RETRY_AFTER_S: Final = 300.0


class Outcome(enum.Enum):
    """What a webhook response means for the event."""

    DELIVERED = "delivered"
    RETRY = "retry"  # throttled or failing: try again later
    REJECTED = "rejected"  # the receiver refused this event: retrying cannot help
    FAILED = "failed"  # retries ran out (or the event was dropped): not delivered


def classify_status(status: int) -> Outcome:
    """Map an HTTP status onto an outcome (Standard Webhooks: success is 2xx only).

    408, 425, 429 and every 5xx are retried; redirects are not followed (the receiver's
    URL is configuration, not something a response may change) and, like other 4xx,
    reject the event.
    """
    if 200 <= status < 300:
        return Outcome.DELIVERED
    if status in (408, 425, 429) or status >= 500:
        return Outcome.RETRY
    return Outcome.REJECTED


def parse_retry_after(value: str | None, *, now: float) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    if value[:1] in "+-":
        return None  # delta-seconds has no sign (RFC 9110 10.2.3)
    if value[:1].isdigit():  # delta-seconds, not an HTTP date
        try:
            return min(read_int(value, field="Retry-After", low=0, high=10**10),
                       MAX_RETRY_AFTER_S)
        except InvalidNumber:
            return None  # "²", "-5" or a hundred digits: not a delta-seconds we honour
    try:
        when = parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    return min(max(when - now, 0.0), MAX_RETRY_AFTER_S)


def retry_delay(failures: int, schedule: Sequence[float],
                rand: random.Random | None = None) -> float:
    """Seconds to wait after the ``failures``-th failed attempt (1 for the first).

    The schedule gives the step for each retry, its last step repeating; each delay is drawn
    from 80-120 % of its step, so retries from many calls spread out.
    """
    step = schedule[min(max(failures, 1), len(schedule)) - 1]
    return (rand or random).uniform(step * 0.8, step * 1.2)


def next_attempt_delay(failures: int, schedule: Sequence[float], retry_after_s: float | None,
                       rand: random.Random | None = None) -> float:
    """Seconds to wait after the ``failures``-th failed attempt, honouring the receiver's
    ``Retry-After`` within bounds.

    Whatever the receiver says (``0``, a date in the past, a week), the wait lies between the
    schedule's first step and ``MAX_RETRY_AFTER_S``: a receiver cannot make us retry in a
    tight loop, nor park its queue for hours. Without ``Retry-After`` the schedule decides.
    """
    if retry_after_s is None:
        return retry_delay(failures, schedule, rand)
    return min(max(retry_after_s, schedule[0]), max(MAX_RETRY_AFTER_S, schedule[0]))
