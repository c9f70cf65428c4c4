"""When an upstream session fails, whether to try again and how long to wait. Pure.

Retryable: the service could not be reached, or dropped the socket with a close code that
means "not your fault" (1001 going away, 1005/1006 no close frame, 1011 server error, 1012
restart, 1013 try again later, 1015 TLS). Fatal: the service refused the session (bad key,
bad parameters, unsupported format: HTTP 4xx at the handshake, an error frame), or closed
with any other code. A session that opens and dies at once, ``QUICK_FAILURES`` times in a
row, is fatal too: the service is refusing it in a way it does not say.
"""

from __future__ import annotations

import enum
import random
from collections.abc import Iterator
from typing import Final

from bridge.errors import UpstreamError, UpstreamRefused

RETRYABLE_CLOSE_CODES: Final = frozenset({"1001", "1005", "1006", "1011", "1012", "1013",
                                          "1015"})
QUICK_FAILURES: Final = 3  # in a row, each within QUICK_S of opening
QUICK_S: Final = 2.0
MAX_RECONNECTS: Final = 8  # in a row without a result in between


class Decision(enum.Enum):
    RETRY = "retry"
    FATAL = "fatal"


def classify(error: UpstreamError) -> Decision:
    """Retry or give up on this failure."""
    if isinstance(error, UpstreamRefused):
        return Decision.FATAL
    if error.status is not None and 400 <= error.status < 500 and error.status != 429:
        return Decision.FATAL
    # Standard WebSocket close codes (1xxx) other than the transient ones are fatal; the
    # engines' own codes (3xxx, 4xxx) are judged by their module, which says Refused or not.
    code = error.code
    if code is not None and code.isdigit() and 1000 <= int(code) < 2000 \
            and code not in RETRYABLE_CLOSE_CODES:
        return Decision.FATAL
    return Decision.RETRY


def reconnect_delays(rand: random.Random | None = None) -> Iterator[float]:
    """250 ms, 500 ms, 1 s, 2 s, then 5 s, each plus 0-500 ms of jitter (Telnyx's advice)."""
    source = rand or random.Random()
    for step in (0.25, 0.5, 1.0, 2.0):
        yield step + source.uniform(0, 0.5)
    while True:
        yield 5.0 + source.uniform(0, 0.5)


def capacity_delays(rand: random.Random | None = None) -> Iterator[float]:
    """Between a full engine's retries: 0.5 s, 1 s, 2 s, then 4 s, each plus up to a quarter
    more of jitter, so that legs waiting on several instances do not retry in step."""
    source = rand or random.Random()
    step = 0.5
    while True:
        yield step + source.uniform(0, step / 4)
        step = min(step * 2, 4.0)
