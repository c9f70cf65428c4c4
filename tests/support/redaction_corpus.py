"""Redaction corpus: phrasings written for callbridge, each with the text that must come out.

Each case is (finals, expected): the finals of one leg in order, and what each must read
after redaction. ``CARD_CASES`` renders real test card numbers of several brands in every
supported form; ``PHRASES`` are written by hand, positives and negatives (numbers that must
NOT be touched: order numbers failing Luhn, phone numbers, amounts, dates, times).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

UNIT = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
TEEN = ["ten", "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen",
        "seventeen", "eighteen", "nineteen"]
TENS = ["", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]

# Published test numbers of the major brands (Luhn-valid), and a 19-digit one.
CARDS = {
    "visa": "4111111111111111",
    "visa 13": "4222222222222",
    "visa 2": "4012888888881881",
    "mastercard": "5555555555554444",
    "mastercard 2": "5105105105105100",
    "mastercard 2-series": "2223003122003222",
    "amex": "378282246310005",
    "amex 2": "371449635398431",
    "discover": "6011111111111117",
    "diners": "30569309025904",
    "jcb": "3530111333300000",
    "unionpay": "6200000000000005",
    "maestro 19": "6759649826438453",
    "nineteen digits": "",  # made below: a check digit completing 18 digits
}


def with_check_digit(body: str) -> str:
    """Complete ``body`` with its Luhn check digit."""
    total = 0
    for position, char in enumerate(reversed(body)):
        value = int(char)
        if position % 2 == 0:
            value = value * 2 - 9 if value > 4 else value * 2
        total += value
    return body + str((10 - total % 10) % 10)


CARDS["nineteen digits"] = with_check_digit("400005665566555600")


def digit_words(digits: str, zero: str = "zero") -> str:
    return " ".join(zero if d == "0" else UNIT[int(d)] for d in digits)


def oh_double(digits: str) -> str:
    """Zeros as "oh", two equal digits in a row as "double"."""
    words, n = [], 0
    while n < len(digits):
        word = "oh" if digits[n] == "0" else UNIT[int(digits[n])]
        if n + 1 < len(digits) and digits[n + 1] == digits[n]:
            words.append(f"double {word}")
            n += 2
        else:
            words.append(word)
            n += 1
    return " ".join(words)


def pairs(digits: str) -> str:
    """Two digits at a time: "forty one", "eleven", "oh five", "twenty"; an odd first digit
    alone, so that no "twenty" is followed by a lone digit ("twenty one" is 21)."""
    words = []
    if len(digits) % 2:
        words.append(UNIT[int(digits[0])])
        digits = digits[1:]
    for n in range(0, len(digits) - 1, 2):
        tens, unit = int(digits[n]), int(digits[n + 1])
        if tens == 0:
            words.append(f"oh {UNIT[unit]}")
        elif tens == 1:
            words.append(TEEN[unit])
        else:
            words.append(TENS[tens] + ("" if unit == 0 else f" {UNIT[unit]}"))
    return " ".join(words)


def grouped(digits: str, sep: str = " ") -> str:
    return sep.join(digits[n:n + 4] for n in range(0, len(digits), 4))


def mixed(digits: str) -> str:
    half = len(digits) // 2
    return grouped(digits[:half]) + " " + digit_words(digits[half:], "oh")


RENDERINGS: dict[str, Callable[[str], str]] = {
    "plain digits": lambda d: d,
    "groups of four": grouped,
    "dashes": lambda d: grouped(d, "-"),
    "digit words": digit_words,
    "oh and double": oh_double,
    "pairs": pairs,
    "digits then words": mixed,
    "with fillers": lambda d: grouped(d, " uh ") if len(d) > 8 else d,
}

CARRIERS = [
    ("my card number is {}", "my card number is [credit_card]"),
    ("sure it's {} thank you", "sure it's [credit_card] thank you"),
    ("{}", "[credit_card]"),
    ("the number on the front is {} and that's a visa", "the number on the front is "
     "[credit_card] and that's a visa"),
]

Case = tuple[list[str], list[str]]


def card_cases() -> list[Case]:
    cases: list[Case] = []
    for n, (_, number) in enumerate(CARDS.items()):
        for m, render in enumerate(RENDERINGS.values()):
            said, expected = CARRIERS[(n + m) % len(CARRIERS)]
            cases.append(([said.format(render(number))], [expected]))
        # split across two finals, in words and in digits
        words = digit_words(number)
        cut = words.split()
        head, tail = " ".join(cut[:6]), " ".join(cut[6:])
        cases.append(([f"okay my card is {head}", f"{tail} and that's it"],
                      ["okay my card is [credit_card]", "and that's it"]))
        cases.append(([f"it's {grouped(number[:8])}", f"{grouped(number[8:])}"],
                      ["it's [credit_card]", ""]))
    return cases


PHRASES: list[Case] = [
    # --- cards in context, by hand ---
    (["yeah so the card is 4111 1111 1111 1111 expires twelve twenty seven"],
     ["yeah so the card is [credit_card] expires [card_expiry]"]),
    (["visa four one one one one one one one one one one one one one one one"],
     ["visa [credit_card]"]),
    (["um my card is four one one one uh one one one one uh one one one one one one one one"],
     ["um my card is [credit_card]"]),
    (["the card number is five five five five", "five five five five five five five five",
      "four four four four"], ["the card number is [credit_card]", "", ""]),
    (["can I pay with 5105-1051-0510-5100 please"], ["can I pay with [credit_card] please"]),
    (["amex three seven eight two eight two two four six three one oh oh oh five"],
     ["amex [credit_card]"]),
    (["card 6011.1111.1111.1117"], ["card [credit_card]"]),
    (["I'll read it 4012 8888 8888 1881 is that right"],
     ["I'll read it [credit_card] is that right"]),
    (["forty one eleven eleven eleven eleven eleven eleven eleven is my visa"],
     ["[credit_card] is my visa"]),
    (["it's four double one double one double one double one double one double one double "
      "one one"], ["it's [credit_card]"]),
    (["my card four one one one one one one one one one one one one one one one and the "
      "security code is seven three seven"],
     ["my card [credit_card] and the security code is [card_security_code]"]),
    (["cvv is 123"], ["cvv is [card_security_code]"]),
    (["the three digit code on the back is four four two"],
     ["the three digit code on the back is [card_security_code]"]),
    (["security code", "nine nine one"], ["security code", "[card_security_code]"]),
    (["CVC one two three four"], ["CVC [card_security_code]"]),
    (["expiration date oh four slash twenty six"], ["expiration date [card_expiry]"]),
    (["it expires 04/26"], ["it expires [card_expiry]"]),
    (["expiry is december twenty seven"], ["expiry is [card_expiry]"]),
    (["valid thru 0927"], ["valid thru [card_expiry]"]),
    (["the expiration is 12 27"], ["the expiration is [card_expiry]"]),
    (["expires oh nine twenty eight"], ["expires [card_expiry]"]),
    (["my card is four one one one", "one one one one", "one one one one",
      "one one one one thanks"], ["my card is [credit_card]", "", "", "thanks"]),
    (["the card", "is 4111", "1111 1111", "1111", "and that's all"],
     ["the card", "is [credit_card]", "", "", "and that's all"]),
    # --- social security numbers ---
    (["my social is 123-45-6789"], ["my social is [ssn]"]),
    (["ssn 219 09 9999"], ["ssn [ssn]"]),
    (["social security number one two three four five six seven eight nine"],
     ["social security number [ssn]"]),
    (["the last four of my social are six seven eight nine"],
     ["the last four of my social are [ssn]"]),
    (["my social security", "is five two one one two two three three three"],
     ["my social security", "is [ssn]"]),
    (["SSN is 078 05 1120"], ["SSN is [ssn]"]),
    # --- corrections and repetitions ---
    (["4111 1111 1111 1112 sorry 4111 1111 1111 1111"],
     ["4111 1111 1111 1112 sorry [credit_card]"]),
    (["it's 5555 5555 5555 4444 I repeat 5555 5555 5555 4444"],
     ["it's [credit_card] I repeat [credit_card]"]),
    (["two cards 4111111111111111 and 5555555555554444"],
     ["two cards [credit_card] and [credit_card]"]),
    # --- interrupted while reading: the words between the groups go with the card ---
    (["4111 1111 1111 sorry 1111"], ["[credit_card]"]),
    (["my card is 5555 5555 okay 5555 4444 thanks"], ["my card is [credit_card] thanks"]),
    (["4012 8888 wait 8888 1881"], ["[credit_card]"]),
    (["it's 3782 hold on 822463 10005"], ["it's [credit_card]"]),
    (["6011 1111 1111 let me check 1117 yes"], ["[credit_card] yes"]),
    (["five one oh five one oh five one oh five sorry one oh five one oh oh"],
     ["[credit_card]"]),
    (["four one one one one one one one um hang on one one one one one one one one"],
     ["[credit_card]"]),
    (["5555 5555", "okay 5555 4444"], ["[credit_card]", ""]),
    (["my card is 5555 5555 5555 sorry", "4444 thanks"], ["my card is [credit_card]", "thanks"]),
    (["it's 4111 1111 1111", "hold on", "1111"], ["it's [credit_card]", "", ""]),
    (["three seven eight two eight two", "just a sec two four six three one oh oh oh five"],
     ["[credit_card]", ""]),
    (["visa 4111 1111 1111 1112"], ["visa [credit_card]"]),
    # --- "for" and "to" heard in place of "four" and "two" inside a number ---
    (["5555 5555 5555 for 444"], ["[credit_card]"]),
    (["my card is 4111111111111111 for the payment"],
     ["my card is [credit_card] for the payment"]),
    (["four one one one one one one one one one one one one one one one to confirm"],
     ["[credit_card] to confirm"]),
    (["2223 0031 to 200 3222"], ["[credit_card]"]),
    # --- must NOT be redacted ---
    (["can we do it at 10 30 okay"], ["can we do it at 10 30 okay"]),
    (["order 1234 5678 sorry 9012"], ["order 1234 5678 sorry 9012"]),
    (["call me on 415 555 0134 okay"], ["call me on 415 555 0134 okay"]),
    (["that's twenty five dollars for 2 tickets"], ["that's twenty five dollars for 2 tickets"]),
    (["press one for sales and two for billing"], ["press one for sales and two for billing"]),
    (["from 10 to 12 for 3 days"], ["from 10 to 12 for 3 days"]),
    (["reference 48213 and 99812 thanks"], ["reference 48213 and 99812 thanks"]),
    (["it shipped 12/05/2024 order 88231"], ["it shipped 12/05/2024 order 88231"]),
    (["the total was $1,250.00 wait no $1,350.00"], ["the total was $1,250.00 wait no $1,350.00"]),
    (["4111 1111 1111", "that's my order number"], ["4111 1111 1111", "that's my order number"]),
    (["my order number is 1234 5678 9012 3456"], ["my order number is 1234 5678 9012 3456"]),
    (["order one two three four five six seven eight nine zero one two three four five six"],
     ["order one two three four five six seven eight nine zero one two three four five six"]),
    (["call me back at 415 555 0134"], ["call me back at 415 555 0134"]),
    (["my number is four one five five five five oh one three four"],
     ["my number is four one five five five five oh one three four"]),
    (["the total is one hundred twenty three dollars and forty five cents"],
     ["the total is one hundred twenty three dollars and forty five cents"]),
    (["it was $1,234.56 last month"], ["it was $1,234.56 last month"]),
    (["I was born on march fourth nineteen eighty five"],
     ["I was born on march fourth nineteen eighty five"]),
    (["the meeting is at 10:30 on 12/05/2024"], ["the meeting is at 10:30 on 12/05/2024"]),
    (["tracking 1Z999AA10123456784"], ["tracking 1Z999AA10123456784"]),
    (["account 12345678"], ["account 12345678"]),
    (["zip code nine four one oh five"], ["zip code nine four one oh five"]),
    (["my subscription expires next month"], ["my subscription expires next month"]),
    (["the offer expires in twelve days"], ["the offer expires in twelve days"]),
    (["code 1234 is the promo"], ["code 1234 is the promo"]),
    (["I have two kids and one dog"], ["I have two kids and one dog"]),
    (["oh no I forgot"], ["oh no I forgot"]),
    (["one moment please"], ["one moment please"]),
    (["room 404 building 7"], ["room 404 building 7"]),
    (["extension two three four five"], ["extension two three four five"]),
    (["reference 4111 1111 1111 1112"], ["reference 4111 1111 1111 1112"]),
    (["invoice 9876543210123456"], ["invoice 9876543210123456"]),
    (["the year 2024 was busy"], ["the year 2024 was busy"]),
    (["I paid 45 dollars on the 3rd"], ["I paid 45 dollars on the 3rd"]),
    (["route 66 and interstate 405"], ["route 66 and interstate 405"]),
    (["the phone is plus one 212 555 0199"], ["the phone is plus one 212 555 0199"]),
    (["my social life is busy"], ["my social life is busy"]),
    (["the security guard was nice"], ["the security guard was nice"]),
    (["a hundred and twenty"], ["a hundred and twenty"]),
    (["ninety nine problems"], ["ninety nine problems"]),
    (["serial 123-45-0000"], ["serial 123-45-0000"]),
    (["part 900 12 3456"], ["part 900 12 3456"]),
    (["I'll be there at four fifteen"], ["I'll be there at four fifteen"]),
    (["press one for sales"], ["press one for sales"]),
    (["version 10.4.1"], ["version 10.4.1"]),
    (["that costs 1999 a year"], ["that costs 1999 a year"]),
]


def corpus() -> list[Case]:
    return PHRASES + card_cases()


# -- spoken cards with interruptions, and harmless numbers: for the property tests and the
# bench's held-out set. A ``Choose`` picks one of its options (``random.Random.choice`` in the
# bench, a Hypothesis draw in the tests).

Choose = Callable[[Sequence[Any]], Any]

# What people say while reading a card; none of it is a number word.
INTERJECTIONS = ["sorry", "okay", "wait", "hold on", "let me check", "um sorry", "just a sec",
                 "yes", "right", "got it", "uh huh", "hang on", "let me see"]
LEAD_INS = ["my card is", "sure it's", "okay the number is", "it's", "", "yeah"]
SIGN_OFFS = ["", "thanks", "and that's it", "did you get that"]
# Issuer prefixes of real brands (Visa, Mastercard 51-55 and 2221-2720, Amex, Discover, JCB,
# Diners, UnionPay).
BRAND_PREFIXES = ["4", "51", "52", "53", "54", "55", "2221", "2720", "34", "37", "6011", "65",
                  "35", "36", "62"]


def say_group(digits: str, choose: Choose) -> str:
    """One group of a card as someone says it: each digit (or pair) as a digit, a word,
    "oh", "double", a teen, a tens word, or "for"/"to" right after another digit."""
    said: list[str] = []
    kinds: list[str] = []  # of each item: "solid", "tens" (a tens word alone), "soft", "oh"
    n = 0
    while n < len(digits):
        digit, pair = digits[n], digits[n:n + 2]
        after_solid = bool(kinds) and kinds[-1] in ("solid", "tens")
        options = ["digit", "word"]
        if kinds and kinds[-1] == "tens" and digit != "0":
            options.remove("word")  # "forty" "one" would be heard as 41
        if len(pair) == 2 and pair[0] == pair[1]:
            options.append("double")
        if len(pair) == 2 and digit == "1":
            options.append("teen")
        if len(pair) == 2 and digit in "23456789" and (pair[1] != "0" or n + 2 < len(digits)):
            options.append("tens")  # a tens word alone never ends a group
        if digit == "0" and after_solid:
            options.append("oh")
        if digit in "42" and after_solid:
            options.append("soft")
        how = choose(options)
        if how == "digit":
            said.append(digit)
        elif how == "word":
            said.append(UNIT[int(digit)])
        elif how == "double":
            said.append("double " + choose(["oh", "zero"] if digit == "0" else
                                           [UNIT[int(digit)], digit]))
        elif how == "teen":
            said.append(TEEN[int(pair[1])])
        elif how == "tens":
            said.append(TENS[int(digit)] + ("" if pair[1] == "0" else f" {UNIT[int(pair[1])]}"))
        elif how == "oh":
            said.append("oh")
        else:
            said.append("for" if digit == "4" else choose(["to", "too"]))
        kinds.append({"tens": "tens" if pair[1:] == "0" else "solid", "oh": "oh",
                      "soft": "soft"}.get(how, "solid"))
        n += 2 if how in ("double", "teen", "tens") else 1
    return " ".join(said)


def spoken_card(number: str, choose: Choose) -> list[str]:
    """A card read in 3-5 groups of 2 digits or more, with an interjection in some of the
    gaps (at most one a gap), over 1-3 finals cut between groups; an interjection where the
    finals are cut ends the first or starts the next."""
    groups = choose([3, 4, 5])
    size, extra = divmod(len(number), groups)
    sizes = [size + (1 if n < extra else 0) for n in range(groups)]
    for n in range(groups - 1):  # move a digit across some boundaries
        shift = choose([-1, 0, 1])
        if sizes[n] + shift >= 2 and sizes[n + 1] - shift >= 2:
            sizes[n] += shift
            sizes[n + 1] -= shift
    said, at = [], 0
    for size in sizes:
        said.append(say_group(number[at:at + size], choose))
        at += size
    cuts = set(choose([(), (0,), (1,), (0, 1), (1, 2), (0, 2)]))
    finals = [" ".join(w for w in [choose(LEAD_INS), said[0]] if w)]
    for n, group in enumerate(said[1:]):
        gap = choose([None, None, *INTERJECTIONS])
        if n in cuts:
            if gap is not None and choose([True, False]):
                finals[-1] += " " + gap
                gap = None
            finals.append("")
        finals[-1] = " ".join(w for w in [finals[-1], gap, group] if w)
    finals[-1] = " ".join(w for w in [finals[-1], choose(SIGN_OFFS)] if w)
    return finals


def card_number(choose: Choose) -> str:
    """A Luhn-valid number with a real brand's prefix, 13-19 digits."""
    prefix = choose(BRAND_PREFIXES)
    length = choose(range(13, 20))
    return with_check_digit(prefix + "".join(choose("0123456789")
                                             for _ in range(length - len(prefix) - 1)))


def luhn_ok(digits: str) -> bool:
    return with_check_digit(digits[:-1]) == digits


def harmless_number(choose: Choose) -> str:
    """A sentence with one number that must stay readable: a time, an amount, a date, a
    short reference, an order number under 13 digits, a phone number that is no card."""
    kind = choose(["time", "amount", "words amount", "date", "reference", "order", "phone"])

    def digit() -> str:
        return str(choose("0123456789"))

    if kind == "time":
        hour, minute = choose(range(1, 13)), choose(range(0, 60, 5))
        return str(choose([f"can we do it at {hour} {minute:02d}", f"at {hour}:{minute:02d} okay",
                           f"call me at {UNIT[hour] if hour < 10 else hour} thirty"]))
    if kind == "amount":
        return f"the total is ${choose(range(1, 10))},{choose(range(100, 1000))}.{digit()}0"
    if kind == "words amount":
        return f"that's {TENS[choose(range(2, 10))]} {UNIT[choose(range(1, 10))]} dollars"
    if kind == "date":
        day = f"{choose(range(1, 13))}/{choose(range(1, 29)):02d}"
        return f"it shipped on {day}/20{digit()}{digit()}"
    if kind == "reference":
        return f"the reference is {''.join(digit() for _ in range(choose(range(4, 9))))} thanks"
    if kind == "order":
        order = "".join(digit() for _ in range(choose(range(6, 13))))
        return f"order number {choose([order, grouped(order), grouped(order, ' sorry ')])}"
    phone = "".join(digit() for _ in range(choose([10, 11, 13, 14])))
    if len(phone) >= 13 and luhn_ok(phone):
        phone = phone[:-1] + str((int(phone[-1]) + 1) % 10)
    return f"call me back on {phone[:-7]} {phone[-7:-4]} {phone[-4:]}"


# -- an independent reading of digits in text, for checking what came out -------------------

WORD_DIGITS = {**{word: str(n) for n, word in enumerate(UNIT)},
               "oh": "0", "o": "0", "nought": "0", "nil": "0", "for": "4", "to": "2", "too": "2"}


def spoken_digits(text: str) -> str:
    """Every digit said or written in ``text``, in order, everything else dropped ("for"
    and "to" count too, so that this never reads fewer digits than a listener could)."""
    words = re.findall(r"\d+|[a-z]+", text.lower())
    out: list[str] = []
    n = 0
    while n < len(words):
        word = words[n]
        following = words[n + 1] if n + 1 < len(words) else ""
        if word.isdigit():
            out.append(word)
        elif word in ("double", "triple") and (following in WORD_DIGITS or (
                following.isdigit() and len(following) == 1)):
            out.append(WORD_DIGITS.get(following, following) * (2 if word == "double" else 3))
            n += 1
        elif word in TENS[2:]:
            tens = str(TENS.index(word))
            if following in UNIT[1:]:
                out.append(tens + str(UNIT.index(following)))
                n += 1
            else:
                out.append(tens + "0")
        elif word in TEEN:
            out.append(str(10 + TEEN.index(word)))
        elif word in WORD_DIGITS:
            out.append(WORD_DIGITS[word])
        n += 1
    return "".join(out)
