"""Bridge-side redaction: the corpus, properties over generated cards, partials, policies."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.compliance.redact import (
    OFF,
    LegRedactor,
    Policy,
    luhn_valid,
    number_pieces,
    number_runs,
    redact,
    tokenize,
)
from tests.support.redaction_corpus import (
    RENDERINGS,
    card_cases,
    corpus,
    digit_words,
    grouped,
    with_check_digit,
)

CASES = corpus()


def run_leg(finals: list[str], policy: Policy = Policy()) -> list[str]:  # noqa: B008 - frozen
    redactor: LegRedactor[int] = LegRedactor(policy)
    out: list[str] = []
    for n, text in enumerate(finals):
        out += [item.text for item in redactor.final(text, n)]
    return out + [item.text for item in redactor.flush()]


def test_the_corpus_is_large_and_varied() -> None:
    assert len(CASES) >= 150
    assert len(card_cases()) >= 100
    negatives = [c for c in CASES if c[0] == c[1]]
    assert len(negatives) >= 30


@pytest.mark.parametrize(("finals", "expected"), CASES,
                         ids=[f"{n:03d}" for n in range(len(CASES))])
def test_corpus(finals: list[str], expected: list[str]) -> None:
    assert run_leg(finals) == expected


def test_luhn() -> None:
    assert luhn_valid("4111111111111111") and luhn_valid("378282246310005")
    assert not luhn_valid("4111111111111112")
    assert with_check_digit("411111111111111") == "4111111111111111"


# -- properties ------------------------------------------------------------------------------

PREFIXES = ["4", "51", "55", "2221", "2720", "34", "37", "6011", "65", "35", "36"]
CARRIER_WORDS = ["sure", "my", "card", "is", "okay", "here", "it", "goes", "thanks", "the",
                 "number", "please", "so", "yes", "that's", "right", "visa"]


@st.composite
def card_numbers(draw: st.DrawFn) -> str:
    prefix = draw(st.sampled_from(PREFIXES))
    length = draw(st.integers(13, 19))
    body = prefix + "".join(draw(st.lists(st.sampled_from("0123456789"),
                                          min_size=length - len(prefix) - 1,
                                          max_size=length - len(prefix) - 1)))
    return with_check_digit(body)


def remaining_digits(texts: list[str]) -> str:
    tokens = tokenize(texts)
    return "".join(p.digits for run in number_runs(tokens, number_pieces(tokens)) for p in run)


@settings(max_examples=300, deadline=None)
@given(card_numbers(), st.sampled_from(sorted(RENDERINGS)),
       st.lists(st.sampled_from(CARRIER_WORDS), max_size=5),
       st.lists(st.sampled_from(CARRIER_WORDS), max_size=5))
def test_a_card_in_any_supported_form_never_comes_out(
        number: str, form: str, before: list[str], after: list[str]) -> None:
    text = " ".join([*before, RENDERINGS[form](number), *after])
    out = run_leg([text])
    assert remaining_digits(out) == ""
    assert number not in re.sub(r"\D", "", " ".join(out))


@settings(max_examples=200, deadline=None)
@given(card_numbers(), st.integers(1, 12), st.booleans())
def test_a_card_split_across_two_finals_never_comes_out(
        number: str, cut: int, words: bool) -> None:
    said = digit_words(number).split() if words else grouped(number).split()
    cut = min(cut, len(said) - 1)
    out = run_leg([" ".join(["my", "card", "is", *said[:cut]]), " ".join(said[cut:])])
    assert remaining_digits(out) == ""


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(CARRIER_WORDS), min_size=1, max_size=12))
def test_text_without_numbers_is_untouched(words: list[str]) -> None:
    text = " ".join(words)
    assert run_leg([text]) == [text]


# -- partials, policies ----------------------------------------------------------------------

def test_partials_mask_an_unfinished_number_and_use_held_finals_as_context() -> None:
    redactor: LegRedactor[int] = LegRedactor(Policy())
    assert redactor.partial("my card is four one one one one").text == "my card is [digits]"
    assert redactor.partial("my card is four one").text == "my card is four one"
    assert redactor.final("the security code is", 1) == []  # held: a code may follow
    partial = redactor.partial("seven three seven")
    assert partial.text == "[card_security_code]"
    assert partial.summary() == [{"type": "card_security_code", "count": 1}]


def test_a_held_final_is_released_by_flush_unredacted_when_nothing_followed() -> None:
    redactor: LegRedactor[int] = LegRedactor(Policy())
    assert redactor.final("order number one two three four five", 7) == []
    [released] = redactor.flush()
    assert (released.text, released.payload) == ("order number one two three four five", 7)


def test_policies_turn_off_one_by_one_and_all_together() -> None:
    text = "card 4111 1111 1111 1111 cvv 123 ssn 123-45-6789"
    assert redact(text, Policy(credit_card=False)).text == (
        "card 4111 1111 1111 1111 cvv [card_security_code] ssn [ssn]")
    assert redact(text, Policy(ssn=False)).text == (
        "card [credit_card] cvv [card_security_code] ssn 123-45-6789")
    assert redact(text, OFF).text == text
    assert run_leg(["my card is four one one one"], OFF) == ["my card is four one one one"]


def test_custom_patterns_and_counts() -> None:
    policy = Policy(custom=(("member_id", re.compile(r"\bMB-\d{6}\b", re.IGNORECASE)),))
    result = redact("member mb-123456 and MB-654321, card 4111111111111111", policy)
    assert result.text == "member [member_id] and [member_id], card [credit_card]"
    assert result.summary() == [{"type": "credit_card", "count": 1},
                                {"type": "member_id", "count": 2}]


@settings(max_examples=150, deadline=None)
@given(card_numbers(), st.lists(st.integers(1, 18), min_size=1, max_size=4, unique=True))
def test_a_card_spread_over_many_finals_never_comes_out(number: str, cuts: list[int]) -> None:
    said = digit_words(number).split()
    bounds = sorted({min(c, len(said) - 1) for c in cuts})
    parts = [" ".join(said[a:b]) for a, b in zip([0, *bounds], [*bounds, len(said)],
                                                  strict=True)]
    out = run_leg(["okay my card is " + parts[0], *parts[1:], "thank you"])
    assert remaining_digits(out) == ""
