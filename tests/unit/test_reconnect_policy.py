"""Which upstream failures are retried, and the backoff between attempts."""

import random

import pytest

from bridge.errors import UpstreamError, UpstreamRefused, UpstreamUnavailable
from bridge.stt.reconnect import Decision, classify, reconnect_delays


@pytest.mark.parametrize(("error", "decision"), [
    (UpstreamRefused("error frame", code="40002"), Decision.FATAL),
    (UpstreamRefused("handshake refused", status=401), Decision.FATAL),
    (UpstreamUnavailable("handshake refused", status=403), Decision.FATAL),
    (UpstreamUnavailable("throttled", status=429), Decision.RETRY),
    (UpstreamUnavailable("server error", status=503), Decision.RETRY),
    (UpstreamUnavailable("cannot connect"), Decision.RETRY),
    (UpstreamUnavailable("dropped", code="1006"), Decision.RETRY),
    (UpstreamUnavailable("dropped", code="1011"), Decision.RETRY),
    (UpstreamUnavailable("dropped", code="1012"), Decision.RETRY),
    (UpstreamUnavailable("dropped", code="1013"), Decision.RETRY),
    (UpstreamUnavailable("closed", code="1008"), Decision.FATAL),
    (UpstreamRefused("closed", code="4001"), Decision.FATAL),
    (UpstreamUnavailable("session cancelled", code="3005"), Decision.RETRY),
])
def test_classification(error: UpstreamError, decision: Decision) -> None:
    assert classify(error) is decision


def test_backoff_grows_to_five_seconds_with_jitter() -> None:
    delays = reconnect_delays(random.Random(3))
    for step in (0.25, 0.5, 1.0, 2.0, 5.0, 5.0):
        assert step <= next(delays) <= step + 0.5
