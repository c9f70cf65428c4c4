"""Every digit of a text masked, for finals that must reach the disk before they are redacted.

A final held back for redaction (it may be the start of a card number that the next final
completes) cannot be judged yet, but it must not be lost if the process dies. It is stored
with every number masked: each token the redactor reads as digits (digits, number words,
"double five", "forty-five"), the words that stand for digits when misheard or in passing
("for", "to", "oh"), and any character Unicode calls numeric ("²", "①", fullwidth digits).
Each such token becomes ``#``; the words around it stay. Pure.
"""

from __future__ import annotations

from typing import Final

from bridge.compliance.redact import number_pieces, tokenize

MASK: Final = "#"
# The redaction type a final carries when it went out masked: the process stopped while the
# final was held, before it could be redacted properly.
MASKED_ON_RECOVERY: Final = "masked_unreleased"
# Words masked even where the redactor would not read a digit: homophones of digits, "oh"
# outside a chain of zeros, and scale words that carry part of a spoken number.
NUMBERISH: Final = frozenset({"oh", "o", "for", "fore", "to", "too", "won", "ate", "hundred",
                              "thousand", "million", "billion", "zero", "nil", "nought"})


def mask_numbers(text: str) -> str:
    """``text`` with every number (as digits or words) replaced by ``#``."""
    tokens = tokenize([text])
    masked: set[int] = set()
    for piece in number_pieces(tokens):
        masked.update(range(piece.first, piece.last + 1))
    for n, token in enumerate(tokens):
        if token.lower in NUMBERISH or any(ch.isnumeric() for ch in token.text):
            masked.add(n)
    out: list[str] = []
    at = 0
    for n in sorted(masked):
        token = tokens[n]
        out.append(text[at:token.start])
        if not (n - 1 in masked and tokens[n - 1].end == token.start):
            out.append(MASK)  # one mark for tokens glued together ("forty-five")
        at = token.end
    out.append(text[at:])
    # Whatever the tokenizer did not see (digits glued to other marks) is masked too.
    return "".join(MASK if ch.isnumeric() else ch for ch in "".join(out))
