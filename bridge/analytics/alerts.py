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
    """One compiled rule: its phrases as one expression, then each of its patterns."""

    name: str
    speaker: str  # a track or a speaker name; "" for every leg
    partials: bool
    expressions: tuple[re.Pattern[str], ...]

    def applies_to(self, track: str, speaker: str) -> bool:
        return self.speaker in ("", track, speaker)

    def search(self, text: str) -> re.Match[str] | None:
        """The first place ``text`` matches the rule, or None."""
        first: re.Match[str] | None = None
        for expression in self.expressions:
            found = expression.search(text)
            if found is not None and (first is None or found.start() < first.start()):
                first = found
        return first


def compile_rule(settings: AlertRuleSettings, setting: str = "alerts") -> AlertRule:
    """Compile one rule; a bad pattern raises ``ConfigError`` naming ``setting``'s entry."""
    expressions = []
    if settings.phrases:
        # Longest first: where two phrases start at the same word, the longer is reported.
        alternatives = sorted({phrase_expression(p) for p in settings.phrases},
                              key=lambda e: (-len(e), e))
        expressions.append(re.compile(rf"(?<!\w)(?:{'|'.join(alternatives)})(?!\w)",
                                      re.IGNORECASE))
    expressions += [alert_pattern(p, f"{setting}.patterns[{i}]")
                    for i, p in enumerate(settings.patterns)]
    return AlertRule(settings.name, settings.speaker, settings.partials, tuple(expressions))


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
        fired = self._fired.pop(sequence, set()) if is_final else self._fired.get(sequence)
        alerts = []
        for rule in self._rules:
            if (not is_final and not rule.partials) or (fired and rule.name in fired):
                continue
            match = rule.search(text)
            if match is None:
                continue
            alerts.append({"rule": rule.name, "matched": match.group(0), "text": text,
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
