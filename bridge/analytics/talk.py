"""Talk analytics of a call: who spoke how long, silences, overtalk, interruptions, pace.

``TalkAnalytics`` is a call observer. Each leg's audio goes through its own ``LegVoice``
(the WebRTC voice-activity detector, smoothed into speech spans on the leg's clock); each
final's words are counted (never kept: the engine's text is unredacted). ``figures`` turns
that into the numbers ``call.ended`` carries under ``analytics`` and the admin API's view of
a live call shows, computed when asked by ``talk_figures``, which is pure.

The definitions, as ``docs/events.md`` gives them to users:

* ``talk_ms``: the leg's speech spans added up; ``talk_ratio``: its share of all legs' talk;
  ``words_per_minute``: the words of its finals over its talk time (null below one second).
* Both legs' clocks count stream time, so their spans compare directly. The call's measured
  time is where any leg's audio was heard, less every span in which a leg was paused:
  paused audio is neither talk nor silence, so a pause of either leg is left out of
  ``measured_ms``, ``silence_ms`` and ``longest_silence_ms``. A leg's own talk never
  includes its paused spans (their audio never reaches the detector).
* ``silence_ms`` / ``longest_silence_ms``: measured time in which no leg speaks (all of it,
  from the first audio to the last), and its longest stretch.
* ``overtalk_ms``: time in which two legs speak at once; ``interruptions``: a leg starts to
  speak while the other has been speaking for at least ``interruption_after_ms`` (its run of
  speech, gaps shorter than the hangover included). Both are null for a call of one leg.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from bridge.analytics.intervals import (
    Span,
    interruptions,
    intersect,
    longest_ms,
    subtract,
    total_ms,
    union,
)
from bridge.analytics.voice import FRAME_MS, LegVoice, takes_rate
from bridge.calls import Call, CallObserver
from bridge.compliance.redact import Redacted
from bridge.config import AnalyticsSettings
from bridge.events import AudioEncoding, Track, TranscriptResult

# Below this much talk a pace in words per minute says more about the detector than the speaker.
MIN_TALK_FOR_PACE_MS: Final = 1000


@dataclass(frozen=True, slots=True)
class LegTalk:
    """What the figures need of one leg."""

    track: Track
    speaker: str
    speech: Sequence[Span]  # sorted, disjoint spans on the leg's clock
    words: int


def talk_figures(legs: Sequence[LegTalk], *, heard: Sequence[Span], paused: Sequence[Span],
                 interruption_after_ms: int) -> dict[str, Any]:
    """The figures of a call from its legs' speech, where any leg was heard and where any
    leg was paused (each sorted and disjoint); the module docstring defines each one."""
    measured = subtract(heard, paused)
    talk = {leg.track: total_ms(leg.speech) for leg in legs}
    all_talk = sum(talk.values())
    anyone = union(*(leg.speech for leg in legs))
    several = len(legs) >= 2
    overlaps = union(*(intersect(a.speech, b.speech)
                       for n, a in enumerate(legs) for b in legs[n + 1:]))
    silence = subtract(measured, anyone)
    per_leg: dict[str, dict[str, Any]] = {}
    for leg in legs:
        talk_ms = talk[leg.track]
        per_leg[leg.track.value] = {
            "speaker": leg.speaker,
            "talk_ms": talk_ms,
            "talk_ratio": round(talk_ms / all_talk, 3) if all_talk else None,
            "words": leg.words,
            "words_per_minute": (round(leg.words * 60_000 / talk_ms, 1)
                                 if talk_ms >= MIN_TALK_FOR_PACE_MS else None),
            "interruptions": sum(interruptions(leg.speech, other.speech,
                                               after_ms=interruption_after_ms)
                                 for other in legs if other is not leg) if several else None,
        }
    return {
        "measured_ms": total_ms(measured),
        "silence_ms": total_ms(silence),
        "longest_silence_ms": longest_ms(silence),
        "overtalk_ms": total_ms(overlaps) if several else None,
        "interruptions": sum(leg["interruptions"] for leg in per_leg.values()) if several
        else None,
        "legs": per_leg,
    }


class TalkAnalytics(CallObserver):
    """The talk analytics of one call; see the module docstring."""

    def __init__(self, settings: AnalyticsSettings, encoding: AudioEncoding,
                 sample_rate: int) -> None:
        self._settings = settings
        self._encoding = encoding
        self._sample_rate = sample_rate
        self._voices: dict[Track, LegVoice] = {}
        self._words: Counter[Track] = Counter()

    def audio(self, track: Track, clock_ms: int, data: bytes) -> None:
        voice = self._voices.get(track)
        if voice is None:
            settings = self._settings
            voice = self._voices[track] = LegVoice(
                self._encoding, self._sample_rate,
                aggressiveness=settings.vad_aggressiveness, hangover_ms=settings.hangover_ms,
                min_speech_ms=settings.min_speech_ms)
        voice.audio(clock_ms, data)

    def final(self, track: Track, result: TranscriptResult, redacted: Redacted,
              fields: Mapping[str, Any] | None) -> None:
        # Counted in the engine's text, so that words a redaction removed still count as
        # spoken; the text itself is not kept.
        self._words[track] += len(result.text.split())

    def ended(self, call: Call) -> Mapping[str, Any]:
        for voice in self._voices.values():
            voice.end()
        return {"analytics": self.figures(call)}

    def figures(self, call: Call) -> dict[str, Any]:
        """The call's figures as of now (a live call: up to the audio heard so far)."""
        legs: list[LegTalk] = []
        heard: list[list[Span]] = []
        paused: list[list[Span]] = []
        coarsened = 0
        for track, leg in call.legs.items():
            voice = self._voices.get(track)
            speech = voice.spans() if voice is not None else []
            legs.append(LegTalk(track, leg.speaker, speech, self._words[track]))
            if voice is not None:
                heard.append(voice.heard.spans())
                coarsened = max(coarsened, voice.speech.join_ms, voice.heard.join_ms)
            now = leg.audio.position_ms
            paused.append([(start, end if end is not None else now)
                           for start, end in leg.audio.pauses
                           if start is not None and (end if end is not None else now) > start])
        figures = talk_figures(legs, heard=union(*heard), paused=union(*paused),
                               interruption_after_ms=self._settings.interruption_after_ms)
        figures["vad"] = {"frame_ms": FRAME_MS,
                          "aggressiveness": self._settings.vad_aggressiveness,
                          "hangover_ms": self._settings.hangover_ms,
                          "min_speech_ms": self._settings.min_speech_ms,
                          # Gaps shorter than this were filled to keep a very long call's
                          # spans bounded (0: the spans are exact).
                          "coarsened_ms": coarsened}
        return figures


def talk_observer(call: Call) -> TalkAnalytics | None:
    """The talk analytics of a call that just started, unless ``analytics.talk`` is off (or
    its rate is one the detector cannot take, which the media dialects never accept)."""
    settings = call.settings.analytics
    if not settings.talk or not takes_rate(call.sample_rate):
        return None
    return TalkAnalytics(settings, call.encoding, call.sample_rate)
