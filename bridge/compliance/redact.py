"""Bridge-side redaction of payment cards, security codes, expiry dates and SSNs. Pure.

Engines redact unevenly and speak digits as words, so numbers are recognised in every form
a transcript carries them: digits ("4532 1111"), digits with dashes or dots, number words
("four five three two"), "oh" for zero, "double five", teens and tens ("forty five"), and
any mix, with filler words ("uh", "um") in between. A *run* is such a sequence of number
pieces; a card is a run (or a part of one, on piece boundaries) of 13-19 digits that passes
the Luhn check; a part of a longer run also needs a card brand's prefix or card context.

People interrupt themselves while reading a card ("4111 1111 sorry 1111 1111", "hold on",
"let me check"), so the decision rests on the digits, not on the words around them: runs
with a few words between them (at most ``MAX_GAP_WORDS`` words in a gap, ``MAX_GAPS`` gaps)
form a *chain*, and consecutive runs of a chain adding up to 13-19 digits and starting with
a brand's prefix are a card when they pass the Luhn check, or when card words stand just
before them (then a misheard digit that breaks the Luhn check does not let the number out).
The words between the groups are redacted with the card. "for", "to" and "too" count as
digits ("4", "2") only right beside other digits, where they are a misheard "four", "two".

Security codes (3-4 digits) and expiry dates are redacted only after their context
("security code", "CVV", "expires" ...); SSNs when written as 3-2-4 digits, or as 9 (or the
last 4) digits after "social security"/"SSN". Custom patterns are regular expressions.

``LegRedactor`` keeps one leg's state across results: a final that ends where a number
could go on ("my card is four five three two", or digits and then a word or two: "4111 1111
sorry") is held back until the next final, or until ``hold_s`` passes, and they are redacted
together; partials are redacted with the held finals as context, and a trailing chain of 4
or more digits in a partial (a few words after it included) is masked until its final
settles it. Replacements are typed placeholders (``[credit_card]``); counts say what was
redacted, never the value.

Every step is linear in the length of the text: a candidate card never spans more than 19
digits or ``MAX_GAPS`` gaps, and at most ``MAX_HELD`` finals are held.
"""

from __future__ import annotations

import re
from bisect import bisect_right
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Final, Generic, TypeVar

from bridge.config import ComplianceSettings, custom_pattern

CREDIT_CARD: Final = "credit_card"
SECURITY_CODE: Final = "card_security_code"
EXPIRY: Final = "card_expiry"
SSN: Final = "ssn"
DIGITS: Final = "digits"  # an unfinished number in a partial

UNITS: Final = {"zero": "0", "oh": "0", "o": "0", "nought": "0", "nil": "0", "one": "1",
                "two": "2", "three": "3", "four": "4", "five": "5", "six": "6", "seven": "7",
                "eight": "8", "nine": "9"}
TEENS: Final = {"ten": "10", "eleven": "11", "twelve": "12", "thirteen": "13",
                "fourteen": "14", "fifteen": "15", "sixteen": "16", "seventeen": "17",
                "eighteen": "18", "nineteen": "19"}
TENS: Final = {"twenty": "2", "thirty": "3", "forty": "4", "fourty": "4", "fifty": "5",
               "sixty": "6", "seventy": "7", "eighty": "8", "ninety": "9"}
REPEAT: Final = {"double": 2, "triple": 3}
FILLERS: Final = frozenset({"uh", "um", "umm", "er", "erm", "ah", "hmm", "like", "dash",
                            "slash", "space"})
JOINERS: Final = frozenset({"-", ",", ".", "/", "\u2013"})  # \u2013: an en dash
MONTHS: Final = frozenset({
    "january", "february", "march", "april", "may", "june", "july", "august", "september",
    "october", "november", "december", "jan", "feb", "mar", "apr", "jun", "jul", "aug", "sep",
    "sept", "oct", "nov", "dec"})
CARD_WORDS: Final = frozenset({"card", "credit", "debit", "visa", "mastercard", "amex",
                               "discover", "maestro"})
SECURITY_PHRASES: Final = (("security", "code"), ("cvv",), ("cvv2",), ("cvc",), ("cid",),
                           ("csc",), ("verification", "code"), ("card", "code"),
                           ("three", "digit", "code"), ("four", "digit", "code"))
EXPIRY_WORDS: Final = frozenset({"expires", "expiry", "expiration", "exp", "expire",
                                 "expiring", "thru", "through"})
SSN_PHRASES: Final = (("social", "security"), ("ssn",), ("social",))
CONTEXT_REACH: Final = 8  # tokens after a context phrase in which its number may start
# Words announcing a number of another kind: a card taken on card words alone (without the
# Luhn check) does not run on over them ("card ending 1234 expires 04 2026 cvv 123" holds
# three numbers, not one).
OTHER_KINDS: Final = EXPIRY_WORDS | {"security", "cvv", "cvv2", "cvc", "cid", "csc",
                                     "verification", "social", "ssn"}
# Words announcing a number that may follow in the next final.
CONTEXT_WORDS: Final = CARD_WORDS | EXPIRY_WORDS | {"security", "cvv", "cvc", "code", "social",
                                                    "ssn", "number"}
# A final ending in this many digits (or more) may be a number going on in the next one.
# At 2, at most one digit of a number split after its first digit leaves before the rest.
HOLD_DIGITS: Final = 2
# A final ending in a word or two after digits is held only from this many digits on: a
# card's first six may be shown (PCI DSS 3.4.1), and the rest of the card is still redacted
# in the next final (released finals stay as context), while times, amounts and short
# references followed by a word ("at 10 30 okay") are not delayed.
HOLD_DIGITS_BEFORE_WORDS: Final = 7
# Words heard in place of a digit ("4111 for 111"), counted only right beside other digits.
SOFT_DIGITS: Final = {"for": "4", "to": "2", "too": "2"}
# A gap in a card: at most this many words ("hold on", "let me check that") ...
MAX_GAP_WORDS: Final = 4
# ... and at most this many gaps in one card (five groups, each interrupted).
MAX_GAPS: Final = 4
# Finals held at once: a bound on the work per final, whatever an engine sends.
MAX_HELD: Final = 8
# Issuer prefixes (IIN) of the major brands, for a card inside a longer run or across gaps.
BRAND_PREFIX: Final = re.compile(
    r"^(4|5[1-5]|2(2[2-9]|[3-6]\d|7[01]|720)|3[47]|6(011|5|4[4-9]|2)|35|3(0[0-5]|[689]))")
TOKEN: Final = re.compile(r"\d+|[^\W\d_]+(?:'[^\W\d_]+)?|[^\s\w]|_")

P = TypeVar("P")


def luhn_valid(digits: str) -> bool:
    """The Luhn (mod 10) check of payment card numbers."""
    total = 0
    for position, char in enumerate(reversed(digits)):
        value = int(char)
        if position % 2:
            value = value * 2 - 9 if value > 4 else value * 2
        total += value
    return total % 10 == 0


def valid_ssn(area: str, group: str, serial: str) -> bool:
    return area not in ("000", "666") and area[0] != "9" and group != "00" and serial != "0000"


@dataclass(frozen=True, slots=True)
class Policy:
    """Which redactions apply. ``custom`` maps a type name to a compiled pattern."""

    credit_card: bool = True
    security_code: bool = True
    expiry: bool = True
    ssn: bool = True
    custom: tuple[tuple[str, re.Pattern[str]], ...] = ()

    @property
    def enabled(self) -> bool:
        return self.credit_card or self.security_code or self.expiry or self.ssn or bool(
            self.custom)

    def names(self) -> list[str]:
        chosen = [name for name, on in ((CREDIT_CARD, self.credit_card),
                                        (SECURITY_CODE, self.security_code),
                                        (EXPIRY, self.expiry), (SSN, self.ssn)) if on]
        return chosen + [name for name, _ in self.custom]


OFF: Final = Policy(False, False, False, False)


@dataclass(frozen=True, slots=True)
class Token:
    text: str
    start: int  # offsets in the text of its segment
    end: int
    segment: int

    @property
    def lower(self) -> str:
        return self.text.lower()


@dataclass(frozen=True, slots=True)
class Piece:
    """A number piece: tokens ``first..last`` (inclusive) standing for ``digits``."""

    first: int
    last: int
    digits: str
    soft: bool = False  # "for"/"to"/"too" beside digits: maybe a digit, maybe the word


def tokenize(texts: Sequence[str]) -> list[Token]:
    return [Token(m.group(), m.start(), m.end(), n)
            for n, text in enumerate(texts) for m in TOKEN.finditer(text)]


def number_pieces(tokens: Sequence[Token]) -> list[Piece]:
    """Every token (or token pair) that stands for digits."""
    pieces: list[Piece] = []
    words = [t.text.lower() for t in tokens] + [""]  # "": no word after the last
    zeros = _spoken_zeros(words)
    n = 0
    while n < len(tokens):
        word = words[n]
        if word.isdigit():
            pieces.append(Piece(n, n, word))
        elif word in REPEAT and words[n + 1] in UNITS:
            pieces.append(Piece(n, n + 1, UNITS[words[n + 1]] * REPEAT[word]))
            n += 1
        elif word in REPEAT and len(words[n + 1]) == 1 and words[n + 1].isdigit():
            pieces.append(Piece(n, n + 1, words[n + 1] * REPEAT[word]))
            n += 1
        elif word in TENS:
            nxt = n + 1
            if words[nxt] == "-":
                nxt += 1
            if nxt < len(tokens) and words[nxt] in UNITS and words[nxt] not in (
                    "zero", "oh", "o", "nought", "nil"):
                pieces.append(Piece(n, nxt, TENS[word] + UNITS[words[nxt]]))
                n = nxt
            else:
                pieces.append(Piece(n, n, TENS[word] + "0"))
        elif word in TEENS:
            pieces.append(Piece(n, n, TEENS[word]))
        elif word in UNITS and (word not in ("o", "oh") or n in zeros):
            pieces.append(Piece(n, n, UNITS[word]))
        elif word in SOFT_DIGITS and (
                (pieces and pieces[-1].last == n - 1 and not pieces[-1].soft)
                or _numeric(words[n + 1])):
            pieces.append(Piece(n, n, SOFT_DIGITS[word], soft=True))
        n += 1
    return pieces


def _numeric(word: str) -> bool:
    """A token that is a number piece on its own (a lone "oh" is not)."""
    return word.isdigit() or (word in UNITS and word not in ("o", "oh")) or \
        word in TEENS or word in TENS or word in REPEAT


def _spoken_zeros(words: Sequence[str]) -> set[int]:
    """Which "oh"/"o" words are zeros: those in a chain of them beside a number word or
    digits ("one oh oh five"), never one standing alone ("oh no")."""
    numeric = _numeric
    zeros: set[int] = set()
    n = 0
    while n < len(words):
        if words[n] in ("o", "oh"):
            end = n
            while end + 1 < len(words) and words[end + 1] in ("o", "oh"):
                end += 1
            before = n > 0 and numeric(words[n - 1])
            after = end + 1 < len(words) and numeric(words[end + 1])
            if before or after:
                zeros.update(range(n, end + 1))
            n = end + 1
        else:
            n += 1
    return zeros


def number_runs(tokens: Sequence[Token], pieces: Sequence[Piece]) -> list[list[Piece]]:
    """Pieces joined into runs: only joiners and fillers may stand between two pieces."""
    runs: list[list[Piece]] = []
    for piece in pieces:
        if runs:
            previous = runs[-1][-1]
            between = tokens[previous.last + 1:piece.first]
            if all(t.text in JOINERS or t.lower in FILLERS for t in between):
                runs[-1].append(piece)
                continue
        runs.append([piece])
    return runs


def _joined(tokens: Sequence[Token]) -> bool:
    """Only joiners and fillers: what may stand inside a run."""
    return all(t.text in JOINERS or t.lower in FILLERS for t in tokens)


def _bridgeable(tokens: Sequence[Token], before: Piece, after: Piece) -> bool:
    """May a card go on from ``before`` to ``after`` over the words between them?"""
    if after.first - before.last - 1 > 2 * MAX_GAP_WORDS:  # bounds the slice below
        return False
    return _gap_words(tokens[before.last + 1:after.first]) <= MAX_GAP_WORDS


def _gap_words(tokens: Sequence[Token]) -> int:
    return sum(1 for t in tokens if t.text[0].isalpha() and t.lower not in FILLERS)


def _links(tokens: Sequence[Token], runs: Sequence[Sequence[Piece]]) -> list[bool]:
    """For each pair of neighbouring runs, whether a card may bridge the gap between them."""
    return [_bridgeable(tokens, runs[k][-1], runs[k + 1][0]) for k in range(len(runs) - 1)]


def _chain_start(tokens: Sequence[Token], runs: Sequence[Sequence[Piece]],
                 reach: int) -> tuple[int, int]:
    """Walking back from the last run over bridgeable gaps (at most ``MAX_GAPS``) until
    ``reach`` digits: the index of the run reached, and the digits in the chain so far."""
    k = len(runs) - 1
    digits = sum(len(p.digits) for p in runs[k])
    while k > 0 and digits < reach and len(runs) - 1 - k < MAX_GAPS and _bridgeable(
            tokens, runs[k - 1][-1], runs[k][0]):
        k -= 1
        digits += sum(len(p.digits) for p in runs[k])
    return k, digits


def _trimmed(run: Sequence[Piece]) -> Sequence[Piece]:
    """The run without "for"/"to" at its ends (empty if nothing else is left)."""
    lo, hi = 0, len(run)
    while lo < hi and run[lo].soft:
        lo += 1
    while hi > lo and run[hi - 1].soft:
        hi -= 1
    return run[lo:hi]


def _variants(run: Sequence[Piece]) -> list[Sequence[Piece]]:
    """The run as heard, and without its "for"/"to" ends when it has any."""
    if not (run[0].soft or run[-1].soft):
        return [run]
    trimmed = _trimmed(run)
    return [run, trimmed] if trimmed else [run]


@dataclass(frozen=True, slots=True)
class Span:
    first: int  # token indices, inclusive
    last: int
    kind: str


def _phrase_ends(tokens: Sequence[Token], phrases: Iterable[tuple[str, ...]]) -> list[int]:
    """Indices of the last token of each occurrence of any phrase."""
    ends = []
    words = [t.lower for t in tokens]
    for phrase in phrases:
        size = len(phrase)
        ends += [n + size - 1 for n, word in enumerate(words[:len(words) - size + 1])
                 if word == phrase[0] and tuple(words[n:n + size]) == phrase]
    return sorted(ends)


def _after_context(run: Sequence[Piece], ends: Sequence[int]) -> bool:
    return _context_before(run[0].first, ends)


def _context_before(token: int, ends: Sequence[int]) -> bool:
    """Does a context phrase end at most ``CONTEXT_REACH`` tokens before ``token``?
    ``ends`` is sorted: a bisection keeps this cheap when a text repeats the phrase."""
    at = bisect_right(ends, token)
    return at > 0 and token - ends[at - 1] <= CONTEXT_REACH


def find_spans(tokens: Sequence[Token], policy: Policy) -> list[Span]:
    """What to redact, as token spans, without overlaps."""
    pieces = number_pieces(tokens)
    if not pieces:
        return []  # every kind of span is a number: most finals stop here
    runs = number_runs(tokens, pieces)
    words = [t.lower for t in tokens]
    spans: list[Span] = []
    taken: set[int] = set()

    def add(first: int, last: int, kind: str) -> None:
        if not taken.intersection(range(first, last + 1)):
            spans.append(Span(first, last, kind))
            taken.update(range(first, last + 1))

    if policy.credit_card:
        card_ends = [n for n, w in enumerate(words) if w in CARD_WORDS]
        for first, last in _cards(tokens, runs, card_ends):
            add(first, last, CREDIT_CARD)
    # The other kinds are short numbers: a "for"/"to" beside one may be the word.
    variants = [variant for run in runs for variant in _variants(run)]
    if policy.ssn:
        ssn_ends = _phrase_ends(tokens, SSN_PHRASES)
        for run in variants:
            digits = "".join(p.digits for p in run)
            if (len(digits) == 9 and _written_ssn(tokens, run)) or (
                    len(digits) in (4, 9) and _after_context(run, ssn_ends)):
                add(run[0].first, run[-1].last, SSN)
    if policy.security_code:
        code_ends = _phrase_ends(tokens, SECURITY_PHRASES)
        for run in variants:
            if len("".join(p.digits for p in run)) in (3, 4) and _after_context(run, code_ends):
                add(run[0].first, run[-1].last, SECURITY_CODE)
    if policy.expiry:
        expiry_ends = [n for n, w in enumerate(words) if w in EXPIRY_WORDS]
        for run in variants:
            if not _after_context(run, expiry_ends):
                continue
            digits = "".join(p.digits for p in run)
            month = run[0].first - 1
            if 0 <= month < len(words) and words[month] in MONTHS and len(digits) in (2, 4):
                add(month, run[-1].last, EXPIRY)
            elif len(digits) in (3, 4, 6):
                add(run[0].first, run[-1].last, EXPIRY)
    return sorted(spans, key=lambda s: s.first)


def _cards(tokens: Sequence[Token], runs: Sequence[Sequence[Piece]],
           card_ends: Sequence[int]) -> list[tuple[int, int]]:
    """Card numbers as token spans, best first: within runs, then across short gaps."""
    found: list[tuple[int, int]] = []
    for run in runs:
        for first, last in _card_windows(run, bool(card_ends)):
            found.append((run[first].first, run[last].last))
        for variant in _variants(run):
            digits = "".join(p.digits for p in variant)
            if 13 <= len(digits) <= 19 and BRAND_PREFIX.match(digits) and _after_context(
                    variant, card_ends):
                found.append((variant[0].first, variant[-1].last))
                break
    return found + _bridged_cards(tokens, runs, card_ends)


def _bridged_cards(tokens: Sequence[Token], runs: Sequence[Sequence[Piece]],
                   card_ends: Sequence[int]) -> list[tuple[int, int]]:
    """Cards read as groups with a few words between them: 2 to ``MAX_GAPS`` + 1
    consecutive runs of a chain, 13-19 digits in all with a brand's prefix, passing the Luhn
    check or following card words. Without overlaps: those passing the check first,
    longest first; then, after card words, those nearest 16 digits (the usual length), so
    that a security code said after a misheard card is not taken for its end."""
    links = _links(tokens, runs)
    # Gaps without words of other kinds, for windows taken on card words alone.
    plain = [link and not any(t.lower in OTHER_KINDS
                              for t in tokens[runs[k][-1].last + 1:runs[k + 1][0].first])
             for k, link in enumerate(links)]
    # Each run's digits with and without its "for"/"to" ends; longer ones never fit a card.
    heads = [[(v[0], "".join(p.digits for p in v)) for v in _variants(run)] for run in runs]
    tails = [[(v[-1], "".join(p.digits for p in v)) for v in _variants(run)] for run in runs]
    windows: list[tuple[int, int, int]] = []  # (rank, first token, last token)
    for k, link in enumerate(links):
        if not link:
            continue
        for start, head in heads[k]:
            if len(head) > 18:
                continue
            context = _context_before(start.first, card_ends)
            middle = head
            for m in range(k + 1, min(k + 1 + MAX_GAPS, len(runs))):
                if not links[m - 1]:
                    break
                context = context and plain[m - 1]
                for end, tail in tails[m]:
                    digits = middle + tail
                    if not 13 <= len(digits) <= 19:
                        continue
                    if not BRAND_PREFIX.match(digits):
                        continue
                    if luhn_valid(digits):
                        windows.append((-len(digits), start.first, end.last))
                    elif context:
                        windows.append((100 + abs(len(digits) - 16), start.first, end.last))
                middle += tails[m][0][1]
                if len(middle) > 19:
                    break
    chosen: list[tuple[int, int]] = []
    taken: set[int] = set()
    for _, first, last in sorted(windows):
        if taken.isdisjoint(range(first, last + 1)):
            chosen.append((first, last))
            taken.update(range(first, last + 1))
    return chosen


def _written_ssn(tokens: Sequence[Token], run: Sequence[Piece]) -> bool:
    """Three pieces of 3, 2 and 4 written digits with a valid area, group and serial."""
    if len(run) != 3 or not all(tokens[p.first].text.isdigit() for p in run):
        return False
    area, group, serial = (p.digits for p in run)
    return (len(area), len(group), len(serial)) == (3, 2, 4) and valid_ssn(area, group, serial)


def _card_windows(run: Sequence[Piece], context: bool) -> list[tuple[int, int]]:
    """Card numbers in a run: the whole run; else, with card context in the text, windows
    on piece boundaries with a brand's prefix (a long digit run hides a Luhn-valid window
    by chance too often to accept one without context). When a window is found, the whole
    run goes: the digits beside it are likely the same number misheard or split, and with
    card context there is no reason to keep them."""
    for variant in _variants(run):
        digits = "".join(p.digits for p in variant)
        if 13 <= len(digits) <= 19 and luhn_valid(digits):
            first = run.index(variant[0])
            return [(first, first + len(variant) - 1)]
    digits = "".join(p.digits for p in run)
    if not context:
        return []
    found: list[tuple[int, int]] = []
    used: set[int] = set()
    windows = []
    for first in range(len(run)):
        total = ""
        for last in range(first, len(run)):
            total += run[last].digits
            if len(total) > 19:
                break
            if len(total) >= 13 and luhn_valid(total) and BRAND_PREFIX.match(total):
                windows.append((last - first, first, last))
    for _, first, last in sorted(windows, reverse=True):
        if not used.intersection(range(first, last + 1)):
            found.append((first, last))
            used.update(range(first, last + 1))
    if found and len(found) == 1 and len(digits) <= 2 * 19:
        return [(0, len(run) - 1)]
    return found


@dataclass
class Redacted:
    """One segment's text after redaction, and what was removed from it."""

    text: str
    counts: Counter[str] = field(default_factory=Counter)
    # Character ranges of the original text that were redacted (custom patterns aside).
    cuts: list[tuple[int, int]] = field(default_factory=list)

    def summary(self) -> list[dict[str, object]]:
        return [{"type": kind, "count": n} for kind, n in sorted(self.counts.items())]


def redact_segments(texts: Sequence[str], policy: Policy, *,
                    released: Sequence[Sequence[tuple[int, int]]] = ()) -> list[Redacted]:
    """Redact texts as one (a number may run from one into the next); one result each.

    A span that starts in one segment and ends in a later one leaves its placeholder where
    it starts and removes the rest. The first ``len(released)`` segments are context that
    was already sent, each with the ranges that were redacted in it then. A span starting
    there and reaching a later segment leaves its placeholder, and its count, in the first
    later one (the released text can no longer change), unless it covers what was redacted
    already: then it only removes what it covers in the later ones.
    """
    tokens = tokenize(texts)
    spans = find_spans(tokens, policy) if policy.enabled else []
    results = [Redacted(text) for text in texts]
    cuts: list[list[tuple[int, int, str]]] = [[] for _ in texts]  # (start, end, replacement)
    for span in spans:
        first, last = tokens[span.first], tokens[span.last]
        marked, new = first.segment, True
        if first.segment < len(released) <= last.segment:
            marked = len(released)
            new = not (any(end > first.start for _, end in released[first.segment]) or any(
                released[n] for n in range(first.segment + 1, len(released))))
        if new:
            results[marked].counts[span.kind] += 1
        for segment in range(first.segment, last.segment + 1):
            cuts[segment].append((first.start if segment == first.segment else 0,
                                  last.end if segment == last.segment else len(texts[segment]),
                                  f"[{span.kind}]" if segment == marked and new else ""))
    for n, text in enumerate(texts):
        results[n].cuts = sorted((start, end) for start, end, _ in cuts[n])
        for start, end, replacement in sorted(cuts[n], reverse=True):
            text = text[:start] + replacement + text[end:]
        for kind, pattern in policy.custom:
            text, count = pattern.subn(f"[{kind}]", text)
            if count:
                results[n].counts[kind] += count
        results[n].text = " ".join(text.split())
    return results


def redact(text: str, policy: Policy) -> Redacted:
    """Redact one text on its own."""
    return redact_segments([text], policy)[0]


PLACEHOLDER: Final = re.compile(r"\[[a-z][a-z0-9_]*\]")


def _open_ending(text: str) -> bool:
    """Could a number (or the number its context announces) go on after this text?

    Only what follows the last placeholder counts: a context phrase whose number was
    redacted already announces nothing more. Digits followed by a word or two ("4111 1111
    sorry") are open too: the card may go on after the interjection.
    """
    placeholders = list(PLACEHOLDER.finditer(text))
    after_placeholder = bool(placeholders)
    if placeholders:
        text = text[placeholders[-1].end():]
    # Only the end matters (as for the context of a leg): what comes before it cannot
    # change the answer but from "closed" to "open".
    tokens = tokenize([_tail(text, (), LegRedactor.CONTEXT_CHARS)[0]])
    if not tokens:
        return False
    words = [t.lower for t in tokens]
    if any(w in CONTEXT_WORDS for w in words[-CONTEXT_REACH:]):
        return True
    if words[-1] in REPEAT:  # "... double": the digit it doubles is still to come
        return True
    runs = number_runs(tokens, number_pieces(tokens))
    if not runs:
        return False
    last = runs[-1]
    after = tokens[last[-1].last + 1:]
    if not _joined(after) and (len(after) > 2 * MAX_GAP_WORDS
                               or _gap_words(after) > MAX_GAP_WORDS):
        return False
    # Digits right after a redacted number may be the rest of it (a shorter window matched).
    if after_placeholder and _joined(tokens[:last[0].first]) and _joined(after):
        return True
    needed = HOLD_DIGITS if _joined(after) else HOLD_DIGITS_BEFORE_WORDS
    return _chain_start(tokens, runs, needed)[1] >= needed


@dataclass
class Released(Generic[P]):
    """A final ready to go out: redacted text, its counts, and what the caller attached."""

    text: str
    redacted: Redacted
    payload: P


class LegRedactor(Generic[P]):
    """One leg's redaction across results; see the module docstring."""

    # Released finals kept as context for what follows them: the text as the engine gave
    # it, and the ranges redacted in it when it went out (not to be counted again).
    CONTEXT: Final = 6
    # Of each, only its end can hold the start of what follows (19 digits, a few words
    # between groups, the context words before them): a bound on the work per final.
    CONTEXT_CHARS: Final = 400

    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        self.held: list[tuple[str, P]] = []
        self.context: list[tuple[str, list[tuple[int, int]]]] = []
        self.totals: Counter[str] = Counter()

    def _redact_held(self, extra: Sequence[str] = ()) -> list[Redacted]:
        """Redact the held finals (and ``extra``) after the context: results for those only."""
        texts = [text for text, _ in self.context + self.held] + list(extra)
        return redact_segments(texts, self.policy, released=[cuts for _, cuts in self.context]
                               )[len(self.context):]

    def final(self, text: str, payload: P) -> list[Released[P]]:
        """A new final: returns the finals that may go out now (maybe none: held back)."""
        self.held.append((text, payload))
        if not self.policy.enabled:
            return self.flush()
        # Judge the ending after redaction, released context included: a number that is now
        # complete closes it; digits right after a redacted one keep it open.
        texts = [t for t, _ in self.context + self.held]
        results = redact_segments(texts, self.policy, released=[c for _, c in self.context])
        held = results[len(self.context):]
        if not _open_ending(" ".join(r.text for r in results)):
            return self._release(keep=0, results=held)
        return self._release(keep=min(len(self.held) - self._first_needed(), MAX_HELD),
                             results=held)

    def _first_needed(self) -> int:
        """The first held final that the open ending may still need: the one holding the
        start of the last 19 digits of the trailing chain (over short gaps), or the context
        words before it."""
        texts = [text for text, _ in self.held]
        tokens = tokenize(texts)
        if not tokens:
            return len(self.held) - 1
        needed = len(tokens) - 1
        words = [t.lower for t in tokens]
        for n in range(max(len(tokens) - 2 * CONTEXT_REACH, 0), len(tokens)):
            if words[n] in CONTEXT_WORDS:
                needed = min(needed, n)
                break
        runs = number_runs(tokens, number_pieces(tokens))
        if runs:
            k, _ = _chain_start(tokens, runs, 19)
            digits = sum(len(p.digits) for run in runs[k + 1:] for p in run)
            for piece in reversed(runs[k]):  # within the first run, only its last digits
                digits += len(piece.digits)
                needed = min(needed, piece.first)
                if digits >= 19:
                    break
        return tokens[needed].segment

    def flush(self) -> list[Released[P]]:
        """Release everything held (the hold timed out, or the leg ended)."""
        return self._release(keep=0)

    def _release(self, *, keep: int,
                 results: Sequence[Redacted] | None = None) -> list[Released[P]]:
        """Release all held finals but the last ``keep`` (``results``: the held finals'
        redaction, when the caller has it already)."""
        if not self.held:
            return []
        if results is None:
            results = self._redact_held()
        count = len(self.held) - keep
        released = [Released(results[n].text, results[n], self.held[n][1])
                    for n in range(count)]
        self.context += [_tail(text, item.redacted.cuts, self.CONTEXT_CHARS)
                         for (text, _), item in zip(self.held[:count], released, strict=True)]
        self.context = self.context[-self.CONTEXT:]
        self.held = self.held[count:]
        for item in released:
            self.totals.update(item.redacted.counts)
        return released

    def partial(self, text: str) -> Redacted:
        """A partial, redacted with the held finals as context; an unfinished trailing chain
        of digit groups is masked as ``[digits]`` to the end: from 4 digits when the partial
        ends in them, from 7 when up to ``MAX_GAP_WORDS`` words follow ("4000 0566 5566
        wait"), as for holding finals."""
        if not self.policy.enabled:
            return Redacted(text)
        result = self._redact_held([text])[-1]
        tokens = tokenize([result.text])
        runs = number_runs(tokens, number_pieces(tokens))
        if runs:
            rest = tokens[runs[-1][-1].last + 1:]
            k, digits = _chain_start(tokens, runs, 19)
            if (_joined(rest) and digits >= 4) or (
                    digits >= HOLD_DIGITS_BEFORE_WORDS and len(rest) <= 2 * MAX_GAP_WORDS
                    and _gap_words(rest) <= MAX_GAP_WORDS):
                start = tokens[runs[k][0].first].start
                result.text = result.text[:start] + f"[{DIGITS}]"
                result.counts[DIGITS] += 1
        return result

    @property
    def holding(self) -> bool:
        return bool(self.held)


def _tail(text: str, cuts: Sequence[tuple[int, int]],
          size: int) -> tuple[str, list[tuple[int, int]]]:
    """The last ``size`` characters of ``text`` from a word's start, and the ``cuts``
    (character ranges) within them."""
    start = 0
    if len(text) > size:
        space = text.find(" ", len(text) - size)
        start = space + 1 if space >= 0 else len(text)
    return text[start:], [(max(a - start, 0), b - start) for a, b in cuts if b > start]


def policy_for(settings: ComplianceSettings) -> Policy:
    """The policy a deployment configured (``redaction = false`` turns every part off)."""
    if not settings.redaction:
        return OFF
    return Policy(settings.credit_card, settings.security_code, settings.expiry, settings.ssn,
                  tuple(custom_pattern(entry) for entry in settings.custom_patterns))
