#!/usr/bin/env python3
"""Redaction quality and cost: recall and precision, hold-back delay, CPU per final.

1. The corpus in tests/support/redaction_corpus.py (the redactor is tested on it, so this
   is a floor, not an estimate of the field).
2. A held-out set drawn here with a fixed seed: Luhn-valid numbers of the major brands in
   every supported spoken and written form, inside carrier sentences, one or split over
   two finals (positives); numbers that must stay (Luhn-failing 13-19 digit numbers,
   phone numbers, amounts) (negatives).
3. A second held-out set, of cards read as people read them: 3-5 groups in any mix of
   digits and words ("oh", "double", teens, tens, "for"/"to" after a digit), interjections
   in the gaps ("sorry", "hold on", "let me check"), over 1-3 finals with an interjection
   ending one or starting the next (positives); times, amounts, dates, short references,
   order numbers under 13 digits and phone numbers (negatives).
   Then numbers that only look like such a card: two harmless numbers a few words apart
   (a phone number and its extension, an order number and a quantity), 13-19 digits
   together. The bridge cannot tell these from a card read in groups when the digits pass
   the Luhn check with a brand's prefix (or follow card words), so this set prices the rule.
4. Delay: a final that ends where a number may go on is held until the next final or
   ``hold_s``. With gaps between finals drawn from 0.3-3.0 s, the added delay per final.
5. CPU per final on the held-out finals, and for one final of 10,000 words.

    PYTHONPATH=. python bench/redaction.py
"""

from __future__ import annotations

import random
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bridge.compliance.redact import PLACEHOLDER, LegRedactor, Policy
from tests.support.redaction_corpus import (
    RENDERINGS,
    card_number,
    corpus,
    harmless_number,
    spoken_card,
    with_check_digit,
)

HOLD_S = 2.0
PREFIXES = ["4", "51", "52", "53", "54", "55", "2221", "2720", "34", "37", "6011", "65", "35"]
CARRIERS = ["my card number is {}", "sure it's {} okay", "{} and that's a visa",
            "the number is {} thank you", "uh {}"]
NEGATIVE = ["my order number is {}", "the reference is {}", "call me on {}",
            "the tracking code is {}", "it cost {} dollars"]


def run(finals: list[str]) -> list[str]:
    redactor: LegRedactor[int] = LegRedactor(Policy())
    out: list[str] = []
    for n, text in enumerate(finals):
        out += [item.text for item in redactor.final(text, n)]
    return out + [item.text for item in redactor.flush()]


def placeholders(texts: list[str]) -> Counter[str]:
    return Counter(match.group() for text in texts for match in PLACEHOLDER.finditer(text))


def score(cases: list[tuple[list[str], list[str]]]) -> tuple[float, float, int, int, int]:
    tp = fp = fn = 0
    for finals, expected in cases:
        want, got = placeholders(expected), placeholders(run(finals))
        for kind in want | got:
            hit = min(want[kind], got[kind])
            tp += hit
            fp += got[kind] - hit
            fn += want[kind] - hit
    recall = tp / (tp + fn) if tp + fn else 1.0
    precision = tp / (tp + fp) if tp + fp else 1.0
    return recall, precision, tp, fp, fn


def held_out(rand: random.Random, count: int) -> list[tuple[list[str], list[str]]]:
    cases: list[tuple[list[str], list[str]]] = []
    for _ in range(count):
        prefix = rand.choice(PREFIXES)
        length = rand.randint(13, 19)
        body = prefix + "".join(rand.choice("0123456789")
                                for _ in range(length - len(prefix) - 1))
        number = with_check_digit(body)
        said = RENDERINGS[rand.choice(sorted(RENDERINGS))](number)
        carrier = rand.choice(CARRIERS)
        text, expected = carrier.format(said), carrier.format("[credit_card]")
        if rand.random() < 0.3:
            words = text.split()
            cut = rand.randint(1, len(words) - 1)
            cases.append(([" ".join(words[:cut]), " ".join(words[cut:])],
                          [expected, ""]))
        else:
            cases.append(([text], [expected]))
        # a negative: a long number failing Luhn, a phone number or an amount
        kind = rand.random()
        if kind < 0.5:
            digits = "".join(rand.choice("0123456789") for _ in range(rand.randint(13, 19)))
            if with_check_digit(digits[:-1]) == digits:
                digits = digits[:-1] + str((int(digits[-1]) + 1) % 10)
            value = RENDERINGS[rand.choice(["plain digits", "groups of four", "digit words"])](
                digits)
        elif kind < 0.8:
            value = f"{rand.randint(200, 999)} {rand.randint(200, 999)} {rand.randint(0, 9999):04d}"
        else:
            value = f"{rand.randint(1, 9999)}.{rand.randint(0, 99):02d}"
        negative = rand.choice(NEGATIVE).format(value)
        cases.append(([negative], [negative]))
    return cases


def interrupted(rand: random.Random, count: int) -> list[tuple[list[str], list[str]]]:
    """Cards read in groups with interjections over 1-3 finals, and harmless numbers."""
    cases: list[tuple[list[str], list[str]]] = []
    for _ in range(count):
        finals = spoken_card(card_number(rand.choice), rand.choice)
        cases.append((finals, ["[credit_card]"] + [""] * (len(finals) - 1)))
        harmless = harmless_number(rand.choice)
        cases.append(([harmless], [harmless]))
    return cases


def adjacent(rand: random.Random, count: int) -> list[tuple[list[str], list[str]]]:
    """Two harmless numbers a few words apart, 13-19 digits together (negatives)."""
    cases: list[tuple[list[str], list[str]]] = []

    def digits(size: int) -> str:
        return "".join(rand.choice("0123456789") for _ in range(size))

    for _ in range(count):
        shape = rand.random()
        if shape < 0.5:
            text = (f"call me on {rand.randint(200, 999)} {rand.randint(200, 999)} "
                    f"{digits(4)} extension {digits(rand.randint(3, 5))}")
        elif shape < 0.8:
            text = f"order {digits(rand.randint(8, 12))} quantity {rand.randint(10, 9999)}"
        else:
            text = f"reference {digits(rand.randint(6, 9))} and {digits(rand.randint(7, 9))}"
        cases.append(([text], [text]))
    return cases


def delays(rand: random.Random, cases: list[tuple[list[str], list[str]]]) -> list[float]:
    """Added delay per final: a held final waits for the next final or HOLD_S."""
    added: list[float] = []
    for finals, _ in cases:
        redactor: LegRedactor[int] = LegRedactor(Policy())
        arrived: dict[int, float] = {}
        clock = 0.0
        for n, text in enumerate([*finals, "okay"]):
            gap = rand.uniform(0.3, 3.0)
            # the hold timer fires before the next final if the gap is longer
            if redactor.holding and gap > HOLD_S:
                for item in redactor.flush():
                    added.append(clock + HOLD_S - arrived[item.payload])
            clock += gap
            arrived[n] = clock
            for item in redactor.final(text, n):
                added.append(clock - arrived[item.payload])
        added += [0.0 for _ in redactor.flush()]  # the trailing "okay" closed everything
    return added


def main() -> None:
    rand = random.Random(20261121)
    recall, precision, tp, fp, fn = score(corpus())
    print(f"corpus ({len(corpus())} cases): recall {recall:.3f}, precision {precision:.3f} "
          f"(tp {tp}, fp {fp}, fn {fn})")
    cases = held_out(rand, 1000)
    recall, precision, tp, fp, fn = score(cases)
    print(f"held-out ({len(cases)} cases, seed 20261121): recall {recall:.3f}, "
          f"precision {precision:.3f} (tp {tp}, fp {fp}, fn {fn})")
    spoken = interrupted(random.Random(20261201), 1000)
    recall, precision, tp, fp, fn = score(spoken)
    print(f"interrupted ({len(spoken)} cases, seed 20261201): recall {recall:.3f}, "
          f"precision {precision:.3f} (tp {tp}, fp {fp}, fn {fn})")
    near = adjacent(random.Random(20261202), 1000)
    _, _, _, fp, _ = score(near)
    print(f"adjacent harmless numbers ({len(near)} cases, seed 20261202): {fp} redacted "
          f"({fp / len(near):.1%})")
    cases += spoken
    added = sorted(delays(rand, corpus() + cases))
    held = [a for a in added if a > 0]
    p99 = added[int(0.99 * (len(added) - 1))]
    print(f"hold-back: {len(held)} of {len(added)} finals held ({len(held) / len(added):.0%}); "
          f"added delay p50 {statistics.median(added):.2f} s, p99 {p99:.2f} s, "
          f"max {added[-1]:.2f} s (hold_s {HOLD_S:g})")
    for name, sample in (("held-out", cases[:400]), ("interrupted", spoken[:400])):
        texts = [text for finals, _ in sample for text in finals]
        start = time.process_time()
        for _ in range(5):
            run(texts)
        cpu = (time.process_time() - start) / (5 * len(texts))
        print(f"cpu: {cpu * 1e6:.0f} us per final on {len(texts)} {name} finals "
              f"(Python {sys.version.split()[0]})")
    long_final = " ".join(["4111", "okay"] * 5000)
    start = time.process_time()
    run([long_final])
    print(f"cpu: {(time.process_time() - start) * 1e3:.0f} ms for one final of 10,000 words")


if __name__ == "__main__":
    main()
