#!/usr/bin/env python3
"""Cost per final of phrase alerts and of sentiment, and what it means at 1,000 legs.

Finals are drawn with a fixed seed from contact-centre sentences (8-40 words; one in ten
says a rule's phrase, some with the engine's punctuation). The rules are 20 as a contact
centre would write them: 5 phrases each, 4 of them with a pattern too, 5 of them reading
partials. Each final is checked as the bridge checks it (``LegAlerts.check`` on the
published event data) and scored as it scores it (``SentimentScorer.score``); CPU time per
final is the median of 5 rounds over the whole set. For comparison, the same rules compiled
as case-insensitive expressions matched on the text itself (instead of lower-case ones on a
lower-cased copy made once per final), one per rule and one per phrase.

At 1,000 legs a final every 3 s per leg is 333 finals a second; the share of one core is
the cost per final times that rate.

    PYTHONPATH=. python bench/alerts.py [--finals 20000]
"""

from __future__ import annotations

import argparse
import random
import re
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bridge.analytics.alerts import (
    MAX_TEXT_CHARS,
    AlertRule,
    LegAlerts,
    compile_rules,
    phrase_expression,
)
from bridge.analytics.sentiment import SentimentScorer
from bridge.config import AlertRuleSettings, alert_pattern

FINALS_PER_SECOND_AT_1000_LEGS = 1000 / 3

TOPICS = {
    "cancel": ["cancel my account", "close my account", "cancel the subscription",
               "stop my service", "terminate the contract"],
    "escalation": ["speak to a supervisor", "talk to your manager", "escalate this",
                   "someone senior", "make a complaint"],
    "legal": ["my lawyer", "legal action", "small claims court", "attorney general",
              "sue you"],
    "churn": ["switch to another provider", "your competitor", "better offer",
              "going elsewhere", "port my number"],
    "refund": ["want a refund", "money back", "charge back", "dispute the charge",
               "reverse the payment"],
    "fraud": ["didn't make this purchase", "someone stole", "identity theft",
              "unauthorized charge", "not my transaction"],
    "vulnerable": ["lost my job", "can't afford", "in hospital", "bereavement",
                   "financial hardship"],
    "angry": ["this is ridiculous", "absolutely useless", "waste of time",
              "fed up", "third time I've called"],
    "billing": ["wrong amount", "double charged", "late fee", "overcharged",
                "billing error"],
    "outage": ["no signal", "internet is down", "service outage", "keeps dropping",
               "no dial tone"],
    "address": ["change my address", "moved house", "new address", "update my details",
                "wrong address"],
    "payment": ["make a payment", "pay my bill", "payment plan", "direct debit",
                "pay by card"],
    "delivery": ["where is my order", "hasn't arrived", "tracking number",
                 "delivery date", "missing parcel"],
    "password": ["reset my password", "locked out", "can't log in", "two factor",
                 "security question"],
    "upgrade": ["upgrade my plan", "new phone", "more data", "faster speed",
                "premium package"],
    "consent": ["don't record", "stop recording", "do not call", "remove my number",
                "data protection"],
    "greeting": ["thank you for calling", "how can I help", "my name is",
                 "good morning", "good afternoon"],
    "closing": ["anything else", "have a great day", "thanks for your patience",
                "is there anything", "goodbye"],
    "promise": ["I promise", "I guarantee", "definitely will", "I'll make sure",
                "you have my word"],
    "hold": ["put you on hold", "bear with me", "one moment", "just a second",
             "let me check"],
}
PATTERNS = {"refund": r"refund(s|ed)?", "billing": r"charged\s+(twice|two times)",
            "fraud": r"\[credit_card\]", "delivery": r"order\s+\w+\s+(late|missing)"}
PARTIALS = {"escalation", "legal", "angry", "consent", "fraud"}
VOCABULARY = ("the a my your I you we it is was to for of and on in with that this have has "
         "account bill service phone call today yesterday week month number order payment "
         "please thanks okay yes no right sure just really very still again already about "
         "because when what why how can could would should need want said told asked "
              "check look see know think help problem issue time")
WORDS = VOCABULARY.split()


def rules() -> tuple[AlertRuleSettings, ...]:
    return tuple(AlertRuleSettings(name, tuple(phrases),
                                   (PATTERNS[name],) if name in PATTERNS else (),
                                   partials=name in PARTIALS)
                 for name, phrases in TOPICS.items())


def finals(count: int, seed: int = 7) -> list[str]:
    draw = random.Random(seed)
    phrases = [p for group in TOPICS.values() for p in group]
    out = []
    for _ in range(count):
        words = [draw.choice(WORDS) for _ in range(draw.randint(8, 40))]
        if draw.random() < 0.1:
            phrase = draw.choice(phrases)
            if draw.random() < 0.5:  # the engine's punctuation and capitals
                phrase = phrase.replace(" ", draw.choice([", ", "... ", " - ", "  "]), 1)
                phrase = phrase.capitalize()
            words.insert(draw.randint(0, len(words)), phrase)
        text = " ".join(words)
        out.append(text[0].upper() + text[1:] + draw.choice([".", "?", "", "!"]))
    return out


def variant(settings: tuple[AlertRuleSettings, ...], *, per_phrase: bool
            ) -> tuple[AlertRule, ...]:
    """The same rules compiled in a way not taken: case-insensitive expressions on the text
    as it is (no lower-cased copy), one per rule or one per phrase."""
    def expression(phrases: list[str]) -> re.Pattern[str]:
        alternatives = "|".join(phrase_expression(p) for p in phrases)
        return re.compile(rf"(?<!\w)(?:{alternatives})(?!\w)", re.IGNORECASE)

    compiled = []
    for rule in settings:
        patterns = tuple(alert_pattern(p, "bench") for p in rule.patterns)
        if per_phrase:
            patterns = (*(expression([p]) for p in rule.phrases), *patterns)
            phrases = None
        else:
            phrases = expression(list(rule.phrases))
        compiled.append(AlertRule(rule.name, rule.speaker, rule.partials, None, phrases,
                                  patterns))
    return tuple(compiled)


def cpu_per_item_us(items: list[str], work: Callable[[int, str], object],
                    rounds: int = 5) -> float:
    times = []
    for _ in range(rounds):
        start = time.process_time()
        for n, item in enumerate(items):
            work(n, item)
        times.append((time.process_time() - start) / len(items) * 1e6)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--finals", type=int, default=20_000)
    args = parser.parse_args()
    settings = rules()
    texts = finals(args.finals)
    fields = [{"sequence": n + 1, "text": t, "start_ms": 0, "end_ms": 1000}
              for n, t in enumerate(texts)]

    def alerts_with(compiled: tuple[AlertRule, ...]) -> tuple[float, int]:
        leg = LegAlerts(compiled, track="inbound", speaker="caller")
        fired = sum(len(leg.check(f, is_final=True)) for f in fields)
        leg = LegAlerts(compiled, track="inbound", speaker="caller")
        return cpu_per_item_us(texts, lambda n, _: leg.check(fields[n], is_final=True)), fired

    one_per_rule, fired = alerts_with(compile_rules(settings))
    any_case, fired_any_case = alerts_with(variant(settings, per_phrase=False))
    one_per_phrase, fired_per_phrase = alerts_with(variant(settings, per_phrase=True))
    assert fired == fired_any_case == fired_per_phrase  # the same alerts every way

    partial_leg = LegAlerts(compile_rules(settings), track="inbound", speaker="caller")
    partial_us = cpu_per_item_us(texts, lambda n, _: partial_leg.check(
        {**fields[n], "sequence": 10**9 + n}, is_final=False))

    start = time.process_time()
    scorer = SentimentScorer()
    load_ms = (time.process_time() - start) * 1000
    sentiment_us = cpu_per_item_us(texts, lambda _, text: scorer.score(text))

    longest = " ".join(random.Random(1).choice(WORDS) for _ in range(3000))[:MAX_TEXT_CHARS]
    worst_leg = LegAlerts(compile_rules(settings), track="inbound", speaker="caller")
    worst_alerts = cpu_per_item_us([longest], lambda _, text: worst_leg.check(
        {"sequence": 1, "text": text, "start_ms": 0, "end_ms": 1}, is_final=True), rounds=20)
    worst_sentiment = cpu_per_item_us([longest], lambda _, text: scorer.score(text), rounds=20)

    words = statistics.mean(len(t.split()) for t in texts)
    rate = FINALS_PER_SECOND_AT_1000_LEGS
    print(f"{len(texts)} finals, {words:.1f} words each on average; {len(settings)} rules, "
          f"{sum(len(r.phrases) for r in settings)} phrases, "
          f"{sum(len(r.patterns) for r in settings)} patterns; {fired} alerts")
    print(f"alerts, one expression per rule (the bridge): {one_per_rule:.1f} us per final "
          f"= {one_per_rule * rate / 1e4:.2f} % of a core at 1,000 legs")
    print(f"alerts, one case-insensitive expression per rule: {any_case:.1f} us per final")
    print(f"alerts, one case-insensitive expression per phrase: {one_per_phrase:.1f} us "
          "per final")
    print(f"alerts on a partial (5 rules read partials):   {partial_us:.1f} us")
    print(f"sentiment (VADER): {sentiment_us:.1f} us per final "
          f"= {sentiment_us * rate / 1e4:.2f} % of a core at 1,000 legs; "
          f"lexicon loaded once in {load_ms:.0f} ms")
    print(f"longest text matched ({len(longest)} characters): alerts {worst_alerts:.0f} us, "
          f"sentiment {worst_sentiment:.0f} us")


if __name__ == "__main__":
    main()
