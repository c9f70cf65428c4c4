"""The one way numbers are read from the network: strict, bounded, pure.

Peers send numbers as JSON numbers or as strings (``"sequenceNumber": "12"``), in headers
(``Retry-After``), in query strings (``last_event_id``) and inside other strings (``L16@16000h``).
Python's own conversions accept far more than any peer means: ``int("²")`` fails after
``"²".isdigit()`` said yes, ``int("1" * 5000)`` raises beyond its digit limit, ``float("1e400")``
is infinite, ``float("nan")`` compares false with everything. Every such number goes through
``read_int`` or ``read_float``: ASCII digits only, a bounded length, a bounded value, and one
documented error, ``InvalidNumber``, whose close code and HTTP status say what to answer.
"""

from __future__ import annotations

import math
import re
from typing import Final

from bridge.errors import InvalidNumber

# Longest digit string looked at, whatever the bounds: conversion work stays constant.
MAX_DIGITS: Final = 20
_INTEGER: Final = re.compile(rf"[+-]?[0-9]{{1,{MAX_DIGITS}}}", re.ASCII)
_DECIMAL: Final = re.compile(rf"[+-]?[0-9]{{1,{MAX_DIGITS}}}(?:\.[0-9]{{1,9}})?", re.ASCII)


def read_int(value: object, *, field: str, low: int, high: int) -> int:
    """An integer in ``[low, high]`` from a JSON integer, an integral finite float, or a string
    of ASCII digits (an optional sign, surrounding blanks ignored).

    Raises ``InvalidNumber`` naming ``field`` (never echoing more than a few characters of
    the value) for anything else: booleans, ``"²"``, ``"0x10"``, ``"1e3"``, empty strings,
    over-long digit strings and out-of-range values.
    """
    number: int
    if isinstance(value, str) and value.isascii() and value.isdigit() and \
            len(value) <= MAX_DIGITS:
        number = int(value)  # the usual form, first: plain ASCII digits (a counter per frame)
    elif isinstance(value, bool):
        raise InvalidNumber(field, "a boolean is not a number")
    elif isinstance(value, int):
        number = value
    elif isinstance(value, float):
        if not math.isfinite(value) or not value.is_integer():
            raise InvalidNumber(field, "not a whole number")
        number = int(value)
    elif isinstance(value, str):
        text = value.strip()
        if not _INTEGER.fullmatch(text):
            raise InvalidNumber(field, "not a whole number of ASCII digits")
        number = int(text)
    else:
        raise InvalidNumber(field, "not a number")
    if not low <= number <= high:
        raise InvalidNumber(field, f"out of range {low}-{high}")
    return number


def read_count(value: object, *, field: str, high: int) -> int:
    """``read_int(value, field=field, low=0, high=high)``, quicker for the forms a counter
    takes in every media message: a short string of ASCII digits, or a JSON integer.

    Those are judged here exactly as ``read_int`` judges them; anything else (and anything
    out of range) goes to ``read_int``, which accepts or refuses it as always.
    """
    if type(value) is str:
        if len(value) <= MAX_DIGITS and value.isdigit() and value.isascii():
            number = int(value)
            if number <= high:
                return number
    elif type(value) is int and 0 <= value <= high:  # exactly int: a bool is not a count
        return value
    return read_int(value, field=field, low=0, high=high)


def read_float(value: object, *, field: str, low: float, high: float) -> float:
    """A finite number in ``[low, high]`` from a JSON number or a decimal string of ASCII digits
    (at most nine decimals; no exponent, no ``inf`` or ``nan``). Raises ``InvalidNumber``."""
    number: float
    if isinstance(value, bool):
        raise InvalidNumber(field, "a boolean is not a number")
    if isinstance(value, (int, float)):
        if isinstance(value, int) and not -(10 ** MAX_DIGITS) < value < 10 ** MAX_DIGITS:
            raise InvalidNumber(field, f"out of range {low:g}-{high:g}")
        number = float(value)
    elif isinstance(value, str):
        text = value.strip()
        if not _DECIMAL.fullmatch(text):
            raise InvalidNumber(field, "not a decimal number of ASCII digits")
        number = float(text)
    else:
        raise InvalidNumber(field, "not a number")
    if not math.isfinite(number) or not low <= number <= high:
        raise InvalidNumber(field, f"out of range {low:g}-{high:g}")
    return number
