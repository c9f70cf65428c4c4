"""Phrase alerts: which ``[[alerts]]`` rules a leg's transcripts trigger. Pure.

A rule has phrases and patterns. Its phrases are compiled into one regular expression in
which the words of a phrase may be separated by any run of spaces and punctuation, so
"cancel my account" matches "Cancel, my  account." as an engine may write it, and an
apostrophe inside a word is optional and may be the typographic one ("don't" matches
"dont"). Phrases and patterns match case-insensitively and only on word boundaries:
"cancel" does not match "cancelled", and the redactor's placeholders ("[credit_card]")
hold no phrase's words.

Matching reads the event data that is published, so it only ever sees redacted text: a
digit the redactor removed cannot trigger or appear in an alert. ``LegAlerts`` keeps one
leg's state: each rule fires at most once per utterance (a final's ``sequence``; a partial
carries the sequence its final will have), so a rule a partial triggered does not fire
again on the final.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from bridge.config import AlertRuleSettings, alert_pattern

# A transcript longer than this is matched on its beginning only: matching stays bounded
# whatever an engine sends (an utterance is a few hundred characters).
MAX_TEXT_CHARS: Final = 10_000
# Utterances whose partials triggered rules and whose finals are still to come. Partials
# run at most a few finals ahead (the redactor's held finals), so this is never reached
# unless the engine's numbering goes wrong; beyond it the oldest is forgotten.
MAX_OPEN_UTTERANCES: Final = 16

# The apostrophes engines write: ' and the typographic U+2019.
APOSTROPHES: Final = "'\u2019"
_WORD = re.compile(rf"\w+(?:[{APOSTROPHES}]\w+)*")
_APOSTROPHE = re.compile(f"[{APOSTROPHES}]")


def phrase_expression(phrase: str) -> str:
    """The regular expression (without boundaries) of one phrase: its words in order,
    separated by at least one non-word character, apostrophes inside words optional."""
    apostrophe = f"[{APOSTROPHES}]?"
    return r"\W+".join(apostrophe.join(re.escape(piece) for piece in _APOSTROPHE.split(word))
                       for word in _WORD.findall(phrase))


@dataclass(frozen=True, slots=True)
class AlertRule:
    """One compiled rule: its phrases as one expression, and each of its patterns."""

    name: str
    speaker: str  # a track or a speaker name; "" for every leg
    partials: bool
    # The phrases in lower case, matched on the lower-cased text: a case-insensitive
    # expression costs about twice as much (bench/alerts.py). The same, case-insensitive,
    # for a text whose lower case is not as long as itself (a few letters, such as the
    # dotted capital I, become two), where places in the one are not places in the other.
    phrases: re.Pattern[str] | None
    phrases_any_case: re.Pattern[str] | None
    patterns: tuple[re.Pattern[str], ...]

    def applies_to(self, track: str, speaker: str) -> bool:
        return self.speaker in ("", track, speaker)

    def search(self, text: str) -> tuple[int, int] | None:
        """Where ``text`` first matches the rule (start and end), or None."""
        return self.search_in(text, same_length_lower(text))

    def search_in(self, text: str, lower: str | None) -> tuple[int, int] | None:
        """``search`` with ``same_length_lower(text)`` given, to share it among rules."""
        first: tuple[int, int] | None = None
        phrases = (self.phrases.search(lower) if lower is not None and self.phrases
                   else self.phrases_any_case.search(text) if self.phrases_any_case
                   else None)
        for found in (phrases, *(pattern.search(text) for pattern in self.patterns)):
            if found is not None and (first is None or found.start() < first[0]):
                first = found.span()
        return first


def same_length_lower(text: str) -> str | None:
    """``text`` in lower case, or None when that changes its length (see ``AlertRule``)."""
    lower = text.lower()
    return lower if len(lower) == len(text) else None


def compile_rule(settings: AlertRuleSettings, setting: str = "alerts") -> AlertRule:
    """Compile one rule; a bad pattern raises ``ConfigError`` naming ``setting``'s entry."""
    phrases = phrases_any_case = None
    if settings.phrases:
        # Longest first: where two phrases start at the same word, the longer is reported.
        alternatives = sorted({phrase_expression(p.lower()) for p in settings.phrases},
                              key=lambda e: (-len(e), e))
        expression = rf"(?<!\w)(?:{'|'.join(alternatives)})(?!\w)"
        phrases = re.compile(expression)
        phrases_any_case = re.compile(expression, re.IGNORECASE)
    patterns = tuple(alert_pattern(p, f"{setting}.patterns[{i}]")
                     for i, p in enumerate(settings.patterns))
    return AlertRule(settings.name, settings.speaker, settings.partials, phrases,
                     phrases_any_case, patterns)


@functools.lru_cache(maxsize=8)
def compile_rules(rules: tuple[AlertRuleSettings, ...]) -> tuple[AlertRule, ...]:
    """Every rule compiled, in the order of the settings (cached: every call of a process
    shares them)."""
    return tuple(compile_rule(rule, f"alerts[{n}]") for n, rule in enumerate(rules))


class LegAlerts:
    """The alerts of one leg's transcripts; see the module docstring."""

    def __init__(self, rules: tuple[AlertRule, ...], *, track: str, speaker: str) -> None:
        self._rules = tuple(rule for rule in rules if rule.applies_to(track, speaker))
        self._on_partials = any(rule.partials for rule in self._rules)
        # sequence -> the rules partials of that utterance triggered
        self._fired: dict[int, set[str]] = {}

    def __bool__(self) -> bool:
        """Whether any rule applies to this leg."""
        return bool(self._rules)

    def check(self, fields: Mapping[str, Any], *, is_final: bool) -> list[dict[str, Any]]:
        """The alerts a published transcript (its event data) triggers, as event data, in
        the order of the rules."""
        if not is_final and not self._on_partials:
            return []
        sequence: int = fields["sequence"]
        text: str = fields["text"][:MAX_TEXT_CHARS]
        lower = same_length_lower(text)
        fired = self._fired.pop(sequence, set()) if is_final else self._fired.get(sequence)
        alerts = []
        for rule in self._rules:
            if (not is_final and not rule.partials) or (fired and rule.name in fired):
                continue
            span = rule.search_in(text, lower)
            if span is None:
                continue
            alerts.append({"rule": rule.name, "matched": text[span[0]:span[1]], "text": text,
                           "sequence": sequence, "start_ms": fields["start_ms"],
                           "end_ms": fields["end_ms"], "from_partial": not is_final})
            if not is_final:
                self._fired.setdefault(sequence, set()).add(rule.name)
        if is_final:
            for done in [s for s in self._fired if s <= sequence]:
                del self._fired[done]
        while len(self._fired) > MAX_OPEN_UTTERANCES:
            del self._fired[min(self._fired)]
        return alerts
