"""Standard Webhooks signing and the retry policy, as pure functions."""

import base64
import random

import pytest

from bridge.delivery.retry import (
    MAX_RETRY_AFTER_S,
    Outcome,
    classify_status,
    next_attempt_delay,
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


@pytest.mark.parametrize("value", ["\u00b2", "-5", "+5", "1" * 400, "\uff15", "5.5", "0x10"])
def test_retry_after_that_is_no_plain_ascii_number_is_ignored(value: str) -> None:
    assert parse_retry_after(value, now=0) is None


@pytest.mark.parametrize("retry_after", [0.0, -3.0, 1e-9, 10.0 ** 9])
def test_the_wait_lies_between_the_first_step_and_the_ceiling_whatever_the_receiver_says(
        retry_after: float) -> None:
    schedule = (1.0, 5.0, 30.0)
    for failures in (1, 2, 50):
        delay = next_attempt_delay(failures, schedule, retry_after)
        assert 1.0 <= delay <= MAX_RETRY_AFTER_S


def test_a_past_date_waits_the_first_step_and_no_header_follows_the_schedule() -> None:
    past = parse_retry_after("Wed, 21 Oct 2015 07:28:10 GMT", now=2_000_000_000.0)
    assert next_attempt_delay(1, (2.0, 5.0), past) == 2.0
    assert 4.0 <= next_attempt_delay(2, (2.0, 5.0), None, random.Random(1)) <= 6.0
    assert next_attempt_delay(1, (2.0,), 7.0) == 7.0


@pytest.mark.parametrize("timestamp", ["\u00b2", "1" * 5000, "-5", "", "1e9"])
def test_verify_refuses_a_timestamp_that_is_not_a_bounded_number(timestamp: str) -> None:
    sent = headers(EXPECTED)
    sent["webhook-timestamp"] = timestamp
    assert not verify(KEY, sent, BODY, now=TIMESTAMP)
