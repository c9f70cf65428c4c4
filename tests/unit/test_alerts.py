"""Phrase alerts: matching, once per utterance, redacted text only, and their settings."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.analytics.alerts import MAX_OPEN_UTTERANCES, LegAlerts, compile_rule, compile_rules
from bridge.compliance.redact import policy_for
from bridge.config import (
    MAX_ALERT_ENTRY_CHARS,
    MAX_ALERT_RULES,
    AlertRuleSettings,
    ComplianceSettings,
    load_settings,
)
from bridge.errors import ConfigError
from bridge.events import EventType, TranscriptResult
from bridge.legs.transcripts import LegTranscripts

LOCAL = {"CALLBRIDGE_TELNYX_URL": "ws://127.0.0.1:9/v2/speech-to-text/transcription"}


def matched(text: str, *phrases: str, patterns: tuple[str, ...] = ()) -> str | None:
    rule = compile_rule(AlertRuleSettings("r", tuple(phrases), patterns))
    found = rule.search(text)
    return text[found[0]:found[1]] if found else None


@pytest.mark.parametrize("text", [
    "Cancel, my  account.", "I want to cancel my account", "CANCEL MY ACCOUNT!",
    "cancel - my\naccount", "please cancel...my account now",
])
def test_a_phrase_matches_whatever_the_engines_case_spacing_and_punctuation(text: str) -> None:
    found = matched(text, "cancel my account")
    assert found is not None
    assert re.sub(r"\W+", " ", found).lower() == "cancel my account"


@pytest.mark.parametrize("text", [
    "I cancelled my account", "uncancel my account", "cancel my accounts",
    "cancel the account", "cancelmyaccount", "my account cancel",
])
def test_a_phrase_matches_whole_words_in_order_only(text: str) -> None:
    assert matched(text, "cancel my account") is None


def test_apostrophes_inside_a_word_are_optional_and_may_be_typographic() -> None:
    for text in ("I don't want it", "I dont want it", "I don\u2019t want it"):
        assert matched(text, "don't want") is not None, text
    assert matched("I do not want it", "don't want") is None


def test_the_longest_phrase_starting_at_the_first_match_is_reported() -> None:
    text = "okay so I want to speak to a supervisor please"
    assert matched(text, "supervisor", "speak to a supervisor", "speak") == \
        "speak to a supervisor"


def test_redaction_placeholders_hold_no_phrase_but_a_pattern_can_name_them() -> None:
    text = "my card is [credit_card] thanks"
    assert matched(text, "credit card", "card") == "card"  # the spoken word, not the placeholder
    assert matched("it is [credit_card]", "credit card", "card") is None
    assert matched(text, patterns=(r"\[credit_card\]",)) == "[credit_card]"


def test_patterns_match_case_insensitively_on_word_boundaries_and_the_first_match_wins() -> None:
    assert matched("They CHARGED BACK my payment, I want a refund", "refund",
                   patterns=(r"charge\w*\s+back",)) == "CHARGED BACK"
    assert matched("I want a REFUND, they charged back", "refund",
                   patterns=(r"charge\w*\s+back",)) == "REFUND"
    assert matched("backwards", patterns=("back",)) is None


def test_a_text_whose_lower_case_is_longer_still_matches_in_the_right_place() -> None:
    text = "\u0130stanbul office: I want to CANCEL my Account now"  # dotted capital I
    assert len(text.lower()) != len(text)
    assert matched(text, "cancel my account") == "CANCEL my Account"
    assert matched(text, "MY ACCOUNT") == "my Account"


PHRASE_WORDS = ["cancel", "my", "account"]
# What engines put between words: spaces, punctuation, dashes, ellipses, new lines.
SEPARATORS = st.text(st.sampled_from(" ,.;:!?-\u2013\u2026\n\t\"()/"), min_size=1, max_size=4)


def engine_wrote(separators: list[str], capitals: list[bool]) -> str:
    """The phrase's words as an engine might write them: any case, anything between."""
    words = [w.upper() if up else w for w, up in zip(PHRASE_WORDS, capitals, strict=True)]
    return words[0] + separators[0] + words[1] + separators[1] + words[2]


WRITTEN = st.builds(engine_wrote, st.lists(SEPARATORS, min_size=2, max_size=2),
                    st.lists(st.booleans(), min_size=3, max_size=3))


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=60), WRITTEN, st.text(max_size=60))
def test_the_phrase_is_found_however_written_and_a_match_is_only_ever_its_words(
        before: str, written: str, after: str) -> None:
    text = before + written + after
    span = compile_rule(AlertRuleSettings("r", ("cancel my account",))).search(text)
    stands_alone = not re.search(r"\w\Z", before) and not re.match(r"\w", after)
    if stands_alone:
        assert span is not None
    if span is not None:  # maybe another place in the surrounding text; never a part word
        found = text[span[0]:span[1]]
        assert [w.lower() for w in re.findall(r"\w+", found)] == PHRASE_WORDS
        assert not re.match(r"\w", text[span[1]:]) and not re.search(r"\w\Z", text[:span[0]])


def final(sequence: int, text: str, start_ms: int = 0, end_ms: int = 1000) -> dict[str, Any]:
    return {"sequence": sequence, "text": text, "start_ms": start_ms, "end_ms": end_ms}


RULES = (
    AlertRuleSettings("cancel", ("cancel my account",)),
    AlertRuleSettings("supervisor", ("supervisor", "manager"), partials=True),
    AlertRuleSettings("agent-greeting", ("how can I help",), speaker="agent"),
)


def test_an_alert_carries_rule_match_utterance_and_times() -> None:
    alerts = LegAlerts(compile_rules(RULES), track="inbound", speaker="caller")
    got = alerts.check(final(4, "Cancel, my  account. And get me a manager.", 1200, 3400),
                       is_final=True)
    assert got == [
        {"rule": "cancel", "matched": "Cancel, my  account", "sequence": 4,
         "text": "Cancel, my  account. And get me a manager.", "start_ms": 1200,
         "end_ms": 3400, "from_partial": False},
        {"rule": "supervisor", "matched": "manager", "sequence": 4,
         "text": "Cancel, my  account. And get me a manager.", "start_ms": 1200,
         "end_ms": 3400, "from_partial": False},
    ]


def test_a_rule_fires_once_per_utterance_and_a_partial_that_fired_spares_its_final() -> None:
    alerts = LegAlerts(compile_rules(RULES), track="inbound", speaker="caller")
    first = alerts.check(final(1, "get me a supervisor"), is_final=False)
    assert [(a["rule"], a["from_partial"], a["sequence"]) for a in first] == [
        ("supervisor", True, 1)]
    assert alerts.check(final(1, "get me a supervisor or a manager"), is_final=False) == []
    # the cancel rule does not read partials: its final triggers it
    assert alerts.check(final(1, "cancel my account"), is_final=False) == []
    on_final = alerts.check(final(1, "get me a supervisor and cancel my account"),
                            is_final=True)
    assert [a["rule"] for a in on_final] == ["cancel"]
    # the next utterance is a new one for every rule
    again = alerts.check(final(2, "the supervisor, and cancel my account"), is_final=True)
    assert [a["rule"] for a in again] == ["cancel", "supervisor"]


def test_a_rule_for_one_speaker_ignores_the_other_leg() -> None:
    rules = compile_rules(RULES)
    caller = LegAlerts(rules, track="inbound", speaker="caller")
    agent = LegAlerts(rules, track="outbound", speaker="agent")
    text = final(1, "hi, how can I help")
    assert caller.check(text, is_final=True) == []
    assert [a["rule"] for a in agent.check(text, is_final=True)] == ["agent-greeting"]
    by_track = compile_rules((AlertRuleSettings("x", ("help",), speaker="outbound"),))
    assert LegAlerts(by_track, track="outbound", speaker="agent")
    assert not LegAlerts(by_track, track="inbound", speaker="caller")


def test_partials_of_utterances_whose_finals_lag_are_remembered_up_to_a_bound() -> None:
    alerts = LegAlerts(compile_rules(RULES), track="inbound", speaker="caller")
    for sequence in range(1, MAX_OPEN_UTTERANCES + 2):
        assert alerts.check(final(sequence, "a manager"), is_final=False)
    # the oldest was forgotten: its final fires again; the next one's does not
    assert [a["rule"] for a in alerts.check(final(1, "a manager"), is_final=True)] == [
        "supervisor"]
    assert alerts.check(final(2, "a manager"), is_final=True) == []


async def test_matching_sees_only_redacted_text_so_no_digit_reaches_an_alert() -> None:
    rules = compile_rules((AlertRuleSettings("card", ("card number",)),
                           AlertRuleSettings("digits", (), (r"\d{4}",)),
                           AlertRuleSettings("words", ("four one one one",))))
    alerts = LegAlerts(rules, track="inbound", speaker="caller")
    raised: list[dict[str, Any]] = []

    def publish(kind: EventType, fields: dict[str, Any], _timing: object) -> None:
        raised.extend(alerts.check(fields, is_final=kind is EventType.TRANSCRIPT_FINAL))

    transcripts = LegTranscripts(policy_for(ComplianceSettings()), hold_s=2.0,
                                 publish=publish, hold=lambda _: None)
    for text in ("my card number is 4111 1111 1111 1111 thanks",
                 "again card number four one one one one one one one one one one one one one "
                 "one one please"):
        transcripts.result(TranscriptResult(text, True, 0.9, 0, 1000))
    transcripts.flush()
    assert [(a["rule"], a["matched"], a["text"]) for a in raised] == [
        ("card", "card number", "my card number is [credit_card] thanks"),
        ("card", "card number", "again card number [credit_card] please")]


def settings_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "c.toml"
    path.write_text(text)
    return path


def test_rules_are_read_from_the_file_in_order(tmp_path: Path) -> None:
    path = settings_file(tmp_path, '''
[speakers]
outbound = "rep"
[[alerts]]
name = "cancel"
phrases = ["cancel my account", "close my account"]
[[alerts]]
name = "escalation"
phrases = ["supervisor"]
patterns = ['\\bmanag(er|ement)\\b']
speaker = "caller"
partials = true
[[alerts]]
name = "rep-promise"
phrases = ["I promise"]
speaker = "rep"
''')
    settings = load_settings(path, environ=LOCAL)
    assert settings.alerts == (
        AlertRuleSettings("cancel", ("cancel my account", "close my account")),
        AlertRuleSettings("escalation", ("supervisor",), (r"\bmanag(er|ement)\b",),
                          "caller", True),
        AlertRuleSettings("rep-promise", ("I promise",), (), "rep"),
    )
    assert load_settings(environ=LOCAL).alerts == ()


def rule(**item: object) -> str:
    lines = ["[[alerts]]"]
    lines += [f"{key} = {value!r}".replace("'", '"') if not isinstance(value, bool)
              else f"{key} = {str(value).lower()}" for key, value in item.items()]
    return "\n".join(lines) + "\n"


GOOD = rule(name="ok", phrases=["hello"])


@pytest.mark.parametrize(("text", "setting"), [
    (GOOD + rule(name="ok2", phrases=["hi"])
     + "[[alerts]]\nname = 'bad'\npatterns = ['fine', '(unclosed']\n", "alerts[2].patterns[1]"),
    (GOOD + "[[alerts]]\nname = 'x'\npatterns = ['a)|(b']\n", "alerts[1].patterns[0]"),
    (GOOD + "[[alerts]]\nname = 'x'\npatterns = ['x*']\n", "alerts[1].patterns[0]"),
    (GOOD + "[[alerts]]\nname = 'x'\nphrases = ['...']\n", "alerts[1].phrases[0]"),
    (GOOD + "[[alerts]]\nname = 'x'\nphrases = ['" + "a" * (MAX_ALERT_ENTRY_CHARS + 1)
     + "']\n", "alerts[1].phrases[0]"),
    (GOOD + "[[alerts]]\nname = 'x'\n", "alerts[1]"),
    (GOOD + "[[alerts]]\nname = 'x'\nphrases = " + str(["w"] * 201) + "\n", "alerts[1]"),
    (GOOD + "[[alerts]]\nphrases = ['x']\n", "alerts[1].name"),
    (GOOD + GOOD, "alerts[1].name"),
    (GOOD + "[[alerts]]\nname = 'x'\nphrases = ['x']\nwords = ['y']\n", "alerts[1].words"),
    (GOOD + "[[alerts]]\nname = 'x'\nphrases = 'x'\n", "alerts[1].phrases"),
    (GOOD + "[[alerts]]\nname = 'x'\nphrases = ['x']\npartials = 'yes'\n",
     "alerts[1].partials"),
    (GOOD + "[[alerts]]\nname = 'x'\nphrases = ['x']\nspeaker = 'customer'\n",
     "alerts[1].speaker"),
    ("alerts = 'x'\n", "alerts"),
    ("".join(rule(name=f"r{n}", phrases=["x"]) for n in range(MAX_ALERT_RULES + 1)),
     "alerts"),
])
def test_a_wrong_rule_stops_start_up_naming_its_entry(tmp_path: Path, text: str,
                                                      setting: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(settings_file(tmp_path, text), environ=LOCAL)
    assert caught.value.setting == setting


def test_the_example_rule_in_the_shipped_settings_file_loads_as_documented(
        tmp_path: Path) -> None:
    shipped = (Path(__file__).parents[2] / "config" / "callbridge.toml").read_text()
    example = shipped[shipped.index("# [[alerts]]"):]
    rule_text = "\n".join(line.removeprefix("# ") for line in example.splitlines()
                          if not line.startswith("# #"))
    settings = load_settings(settings_file(tmp_path, rule_text), environ=LOCAL)
    assert settings.alerts == (AlertRuleSettings(
        "cancel", ("cancel my account", "close my account"), ("refund(s|ed)?",)),)
    [rule] = compile_rules(settings.alerts)
    assert rule.search("I was never REFUNDED") is not None
