"""Word error rate: how far a transcript is from a reference, in words.

Both sides are normalised before they are compared, so that the way a recogniser writes a
word does not count as an error: case and punctuation are dropped, common contractions are
spelt out (``I'm`` -> ``i am``), and numbers become digits, one word per digit. Whisper
writes "4567" where a script says "four five six seven"; both become ``4 5 6 7``.
"twenty one" and "21" both become ``2 1``, "one hundred and five" and "105" ``1 0 5``.
"""

from __future__ import annotations

import re
from typing import Final

_WORD = re.compile(r"[a-z0-9']+")
_DIGITS = re.compile(r"\d+")

_UNITS: Final = {word: n for n, word in enumerate((
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
    "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen",
    "nineteen"))}
_TENS: Final = {word: 10 * n for n, word in enumerate((
    "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"), start=2)}
_SCALES: Final = {"thousand": 1000, "million": 1_000_000, "billion": 1_000_000_000}
_NUMBER_WORDS: Final = {*_UNITS, *_TENS, "hundred", *_SCALES}
_CONTRACTIONS: Final = {
    "i'm": "i am", "it's": "it is", "that's": "that is", "what's": "what is",
    "there's": "there is", "he's": "he is", "she's": "she is", "let's": "let us",
    "you're": "you are", "we're": "we are", "they're": "they are", "i've": "i have",
    "you've": "you have", "we've": "we have", "they've": "they have", "i'll": "i will",
    "you'll": "you will", "we'll": "we will", "i'd": "i would", "you'd": "you would",
    "can't": "can not", "cannot": "can not", "won't": "will not", "don't": "do not",
    "doesn't": "does not", "didn't": "did not", "isn't": "is not", "aren't": "are not",
    "wasn't": "was not", "weren't": "were not", "haven't": "have not", "hasn't": "has not",
    "couldn't": "could not", "wouldn't": "would not", "shouldn't": "should not",
    "ok": "okay",
}


def words(text: str) -> list[str]:
    """Lower-case words, punctuation dropped (``"Hi, I'm"`` -> ``["hi", "i'm"]``)."""
    return _WORD.findall(text.lower())


def normalise(text: str) -> list[str]:
    """The words compared: see the module docstring. Pure; never raises."""
    expanded: list[str] = []
    for word in words(text):
        expanded += _CONTRACTIONS.get(word, word).split()
    out: list[str] = []
    run: list[str] = []
    for n, word in enumerate(expanded):
        # "and" belongs to a number only between "hundred" and more of the number.
        joins = (word == "and" and run and run[-1] == "hundred" and n + 1 < len(expanded)
                 and expanded[n + 1] in _NUMBER_WORDS)
        if word in _NUMBER_WORDS or joins:
            run.append(word)
            continue
        out += _spoken_numbers(run)
        run = []
        out += _split_digits(word)
    out += _spoken_numbers(run)
    return out


def _split_digits(word: str) -> list[str]:
    """``"4567"`` -> ``["4", "5", "6", "7"]``; ``"3rd"`` -> ``["3", "rd"]``."""
    if not any(c.isdigit() for c in word):
        return [word]
    parts: list[str] = []
    last = 0
    for match in _DIGITS.finditer(word):
        if match.start() > last:
            parts.append(word[last:match.start()])
        parts += list(match.group())
        last = match.end()
    if last < len(word):
        parts.append(word[last:])
    return parts


def _spoken_numbers(run: list[str]) -> list[str]:
    """Number words to digits. A run like "four five six seven" is four numbers (spoken
    digits); "twenty one" and "two hundred and five" are one each."""
    out: list[str] = []
    total = 0
    current: int | None = None  # None: no number started
    last = ""  # the kind of the previous word: unit, teen, tens, hundred, scale

    def emit() -> None:
        nonlocal total, current
        if current is not None or total:
            out.extend(str(total + (current or 0)))
        total, current = 0, None

    for word in run:
        if word == "and":
            continue
        if word in _UNITS:
            value = _UNITS[word]
            kind = "unit" if value < 10 else "teen"
            if current is not None and (last == "hundred" or (last == "tens" and kind == "unit")):
                current += value
            elif last == "scale":
                current = value
            else:
                emit()
                current = value
        elif word in _TENS:
            kind = "tens"
            if current is not None and last == "hundred":
                current += _TENS[word]
            elif last == "scale":
                current = _TENS[word]
            else:
                emit()
                current = _TENS[word]
        elif word == "hundred":
            kind = "hundred"
            if current is None or last == "hundred":  # "a hundred", "hundred hundred"
                if last == "hundred":
                    emit()
                current = 100
            else:
                current *= 100
        else:
            kind = "scale"
            if last == "scale":
                emit()
            total += (current or 1) * _SCALES[word]
            current = None
        last = kind
    emit()
    return out


def word_errors(reference: str, hypothesis: str) -> tuple[int, int]:
    """(substitutions + deletions + insertions, reference length) by edit distance, on the
    normalised words of each side."""
    ref, hyp = normalise(reference), normalise(hypothesis)
    previous = list(range(len(hyp) + 1))
    for i, ref_word in enumerate(ref, start=1):
        current = [i] + [0] * len(hyp)
        for j, hyp_word in enumerate(hyp, start=1):
            current[j] = min(previous[j] + 1, current[j - 1] + 1,
                             previous[j - 1] + (ref_word != hyp_word))
        previous = current
    return previous[-1], len(ref)


def word_error_rate(reference: str, hypothesis: str) -> float:
    """Errors divided by the reference's word count (0.0 for an empty reference and hypothesis)."""
    errors, total = word_errors(reference, hypothesis)
    if total == 0:
        return 0.0 if errors == 0 else 1.0
    return errors / total
