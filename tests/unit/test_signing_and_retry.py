"""Standard Webhooks signing and the retry policy, as pure functions."""

import base64
import random

import pytest

from bridge.delivery.retry import (
    MAX_RETRY_AFTER_S,
    Outcome,
    classify_status,
    parse_retry_after,
    retry_delay,
)
from bridge.delivery.signing import sign, verify

# The example published with the Standard Webhooks reference libraries.
KEY = base64.b64decode("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
MSG_ID, TIMESTAMP, BODY = "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, b'{"test": 2432232314}'
EXPECTED = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def headers(signature: str, timestamp: int = TIMESTAMP) -> dict[str, str]:
    return {"webhook-id": MSG_ID, "webhook-timestamp": str(timestamp),
            "webhook-signature": signature}


def test_signature_matches_the_published_example() -> None:
    assert sign(KEY, MSG_ID, TIMESTAMP, BODY) == EXPECTED


def test_verify_accepts_any_matching_v1_entry_and_a_fresh_timestamp() -> None:
    assert verify(KEY, headers(f"v1,bm9wZQ== {EXPECTED}"), BODY, now=TIMESTAMP + 10)
    assert not verify(KEY, headers(EXPECTED), BODY + b" ", now=TIMESTAMP)
    assert not verify(KEY, headers(EXPECTED), BODY, now=TIMESTAMP + 301)
    assert not verify(b"other key other key 1234", headers(EXPECTED), BODY, now=TIMESTAMP)
    assert not verify(KEY, headers(EXPECTED.replace("v1,", "v1a,")), BODY, now=TIMESTAMP)


@pytest.mark.parametrize(("status", "outcome"), [
    (200, Outcome.DELIVERED), (204, Outcome.DELIVERED), (301, Outcome.REJECTED),
    (400, Outcome.REJECTED), (401, Outcome.REJECTED), (404, Outcome.REJECTED),
    (408, Outcome.RETRY), (429, Outcome.RETRY), (500, Outcome.RETRY), (503, Outcome.RETRY)])
def test_status_classification(status: int, outcome: Outcome) -> None:
    assert classify_status(status) is outcome


def test_retry_after_in_seconds_or_as_a_date_and_clamped() -> None:
    assert parse_retry_after("7", now=0) == 7.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:10 GMT", now=1445412480.0) == 10.0
    assert parse_retry_after("999999", now=0) == MAX_RETRY_AFTER_S
    assert parse_retry_after("soon", now=0) is None
    assert parse_retry_after(None, now=0) is None


def test_retry_delay_follows_the_schedule_with_jitter_and_repeats_its_last_step() -> None:
    schedule = (1.0, 5.0, 30.0)
    rand = random.Random(7)
    for failures, step in [(1, 1.0), (2, 5.0), (3, 30.0), (4, 30.0), (40, 30.0)]:
        delay = retry_delay(failures, schedule, rand)
        assert step * 0.8 <= delay <= step * 1.2
