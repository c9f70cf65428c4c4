"""Bridge-side redaction: the corpus, properties over generated cards, partials, policies."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.compliance.redact import (
    MAX_HELD,
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
    INTERJECTIONS,
    RENDERINGS,
    card_cases,
    card_number,
    corpus,
    digit_words,
    grouped,
    harmless_number,
    spoken_card,
    spoken_digits,
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


# -- how people really read a card: interruptions, splits, misheard words --------------------

@pytest.mark.parametrize("interjection", ["sorry", "okay", "wait", "hold on", "let me check"])
def test_a_card_read_in_groups_with_an_interjection_between_them_is_redacted_whole(
        interjection: str) -> None:
    assert run_leg([f"4111 1111 1111 {interjection} 1111"]) == ["[credit_card]"]
    assert run_leg([f"sure it's 4111 {interjection} 1111 1111 1111 thanks"]) == [
        "sure it's [credit_card] thanks"]


def test_a_card_split_over_two_finals_with_a_word_starting_the_second_is_redacted() -> None:
    redactor: LegRedactor[int] = LegRedactor(Policy())
    assert redactor.final("5555 5555", 1) == []
    released = redactor.final("okay 5555 4444", 2)
    assert [item.text for item in released] == ["[credit_card]", ""]
    assert redactor.totals == {"credit_card": 1}


def test_a_final_ending_in_a_word_after_digits_is_held_for_the_rest_of_the_card() -> None:
    redactor: LegRedactor[int] = LegRedactor(Policy())
    assert redactor.final("my card is 5555 5555 5555 sorry", 1) == []
    released = redactor.final("4444 thanks", 2)
    assert [item.text for item in released] == ["my card is [credit_card]", "thanks"]


def test_a_card_in_number_words_with_an_interrupted_group_is_redacted() -> None:
    said = ("four one one one one one one one hold on one one one one "
            "one one let me check one one")
    assert run_leg([f"it's {said} okay"]) == ["it's [credit_card] okay"]
    assert run_leg(["five five five five five five five five five five", "wait",
                    "five five four four four four"]) == ["[credit_card]", "", ""]


def test_for_heard_in_place_of_four_inside_a_digit_run_is_a_digit() -> None:
    assert run_leg(["5555 5555 5555 for 444"]) == ["[credit_card]"]
    assert run_leg(["four one one one one one one one one one one one one one one one to "
                    "confirm"]) == ["[credit_card] to confirm"]
    assert run_leg(["sure it's 4111111111111111 for you"]) == ["sure it's [credit_card] for you"]
    assert run_leg(["to 4111 1111 1111 1111"]) == ["to [credit_card]"]


def test_ordinary_for_and_to_stay_words() -> None:
    for text in ["press one for sales and two for billing", "I went to the bank for you",
                 "from 10 to 12 for 3 days", "wait for 5 minutes"]:
        assert run_leg([text]) == [text]


def test_a_partial_ending_in_a_word_after_twelve_digits_shows_none_of_them() -> None:
    redactor: LegRedactor[int] = LegRedactor(Policy())
    assert redactor.partial("my card is 4000 0566 5566 wait").text == "my card is [digits]"
    assert redactor.partial("4111 1111 sorry 1111 hold on").text == "[digits]"
    assert redactor.partial("it's at 10 30 okay").text == "it's at 10 30 okay"


def test_a_card_that_began_in_a_released_final_is_counted() -> None:
    redactor: LegRedactor[int] = LegRedactor(Policy())
    assert redactor.final("4111 1111 1111", 1) == []
    [timed_out] = redactor.flush()  # the hold ran out: it left as it was
    assert timed_out.text == "4111 1111 1111" and not timed_out.redacted.counts
    [rest] = redactor.final("1111", 2)
    assert rest.text == "[credit_card]"  # the rest of the card, and the redaction shown
    assert rest.redacted.counts == {"credit_card": 1}
    assert redactor.totals == {"credit_card": 1}


def test_a_card_already_redacted_in_a_released_final_is_not_counted_again() -> None:
    redactor: LegRedactor[int] = LegRedactor(Policy())
    [first] = redactor.final("my card is 4111 1111 1111 1111", 1)  # complete: it goes
    assert first.text == "my card is [credit_card]"
    assert redactor.final("22", 2) == []  # more digits of the same run: held ...
    [rest] = redactor.flush()
    assert rest.text == ""  # ... and taken with the card they may belong to
    assert redactor.totals == {"credit_card": 1}


def test_card_context_redacts_thirteen_digits_or_more_that_fail_the_check() -> None:
    assert run_leg(["my card is 4111 1111 1111 1112"]) == ["my card is [credit_card]"]
    assert run_leg(["visa 4111 1111 sorry 1111 1112"]) == ["visa [credit_card]"]
    assert run_leg(["reference 4111 1111 1111 1112"]) == ["reference 4111 1111 1111 1112"]
    # card words, but no card's first digits: a phone number and its extension
    assert run_leg(["call the card services line at 1 800 555 0199 extension 1234"]) == [
        "call the card services line at 1 800 555 0199 extension 1234"]


def test_a_security_code_after_an_interrupted_card_is_not_taken_for_its_end() -> None:
    assert run_leg(["visa 4111 1111 sorry 1111 1111 cvv 123"]) == [
        "visa [credit_card] cvv [card_security_code]"]
    # misheard (no Luhn check to go by): the card words make it a card, of the usual length
    assert run_leg(["my card 4111 1111 okay 1111 1112 and the cvv is 123"]) == [
        "my card [credit_card] and the cvv is [card_security_code]"]
    # the last four, the expiry and the code: three numbers, not one taken on card words
    assert run_leg(["card ending 1234 expires 04 2026 cvv 123"]) == [
        "card ending 1234 expires [card_expiry] cvv [card_security_code]"]


@pytest.mark.parametrize("text", [
    "can we do it at 10 30 okay", "it was $1,250.00 last month", "twenty five dollars please",
    "order 1234 5678 sorry 9012", "call me on 415 555 0134 okay 212 555 0199",
    "the meeting is at 10 30 on 12 05 2024", "reference 48213 and 99812 thanks",
    "room 404 then building 7 then floor 12"])
def test_harmless_numbers_with_words_between_them_stay(text: str) -> None:
    assert run_leg([text]) == [text]


@pytest.mark.parametrize("text", [
    "4" * 10_000, " ".join(["four"] * 10_000), " ".join(["4111", "okay"] * 5_000),
    " ".join(["card", "1"] * 5_000), " ".join(["1", "for"] * 5_000), " ".join(["oh"] * 10_000),
    "1 " + " ".join(["uh"] * 10_000) + " 1", " ".join(["double", "five", "sorry"] * 3_000)])
def test_a_final_of_ten_thousand_digits_or_words_is_handled(text: str) -> None:
    """Work is linear by construction (a card window never spans more than 19 digits or
    ``MAX_GAPS`` gaps; context and held finals are bounded): these finish."""
    redactor: LegRedactor[int] = LegRedactor(Policy())
    released = [item.payload for item in redactor.final(text, 0)]
    redactor.partial(text)
    released += [item.payload for item in redactor.final("thanks", 1)]
    released += [item.payload for item in redactor.flush()]
    assert released == [0, 1]  # every final out, in order, however long


def test_a_leg_holds_a_bounded_number_of_finals() -> None:
    redactor: LegRedactor[int] = LegRedactor(Policy())
    released: list[int] = []
    for n in range(30):  # each could be two more digits of one number
        released += [item.payload for item in redactor.final("12", n)]
        assert len(redactor.held) <= MAX_HELD
    released += [item.payload for item in redactor.flush()]
    assert released == list(range(30))


# -- properties over spoken cards with interruptions ---------------------------------------

def drawing(data: st.DataObject) -> Callable[[Sequence[Any]], Any]:
    return lambda options: data.draw(st.sampled_from(options))


@settings(max_examples=200, deadline=None, derandomize=True, database=None)
@given(st.data())
def test_a_card_read_with_interruptions_over_finals_never_comes_out_whole(
        data: st.DataObject) -> None:
    choose = drawing(data)
    number = card_number(choose)
    finals = spoken_card(number, choose)
    assert number in spoken_digits(" ".join(finals))  # the card was said
    out = run_leg(finals)
    assert number not in spoken_digits(" ".join(out))


@settings(max_examples=300, deadline=None, derandomize=True, database=None)
@given(st.data())
def test_harmless_numbers_come_out_unchanged(data: st.DataObject) -> None:
    text = harmless_number(drawing(data))
    assert run_leg([text]) == [text]
    assert run_leg(["okay", text, "thanks"]) == ["okay", text, "thanks"]


def test_the_interjections_hold_no_number_word() -> None:
    assert all(spoken_digits(words) == "" for words in INTERJECTIONS)
