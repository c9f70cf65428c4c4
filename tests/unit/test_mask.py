"""Masking every number of a held final, as a pure function."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge.compliance.mask import mask_numbers
from bridge.compliance.redact import UNITS

WORDS = [*UNITS, "forty", "fourteen", "double", "for", "to", "oh"]


@pytest.mark.parametrize(("text", "masked"), [
    ("my card is four five three two", "my card is # # # #"),
    ("4111 1111 1111 sorry 1111", "# # # sorry #"),
    ("forty-five and double five", "# and # #"),
    ("one oh oh five", "# # # #"),
    ("the code is \u2460\u2461\u2462 or \uff11\uff12 or x\u00b2", "the code is # or # or #"),
    ("send it to me for free", "send it # me # free"),
    ("thanks, that's all", "thanks, that's all"),
])
def test_every_number_is_masked_and_the_words_around_it_stay(text: str, masked: str) -> None:
    assert mask_numbers(text) == masked


@given(st.lists(st.one_of(st.sampled_from(WORDS), st.from_regex(r"[0-9]{1,6}", fullmatch=True),
                          st.sampled_from(["uh", "sorry", "wait", "okay", "-", ","])),
                min_size=1, max_size=30))
def test_no_digit_or_number_word_survives(pieces: list[str]) -> None:
    masked = mask_numbers(" ".join(pieces))
    assert not any(ch.isnumeric() for ch in masked)
    assert not set(masked.lower().split()) & (set(WORDS) - {"double"})  # alone, no digit
