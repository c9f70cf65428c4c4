"""PocketSphinx decoding: the light embedded engine (``local_stt.model = "pocketsphinx"``).

Telephone tuning, measured with ``bench/local_stt.py --compare`` (figures in bench/README.md):
the model shipped with the ``pocketsphinx`` wheel is a 16 kHz continuous US-English model.
Three ways to feed it 8 kHz G.711 were compared: decoding natively at 8 kHz with the model's
filter bank narrowed to the telephone band, the same at 16 kHz, and resampling the call audio
to 16 kHz with a filtered rate converter. Resampling won clearly; narrowing the filter bank
moves the features away from what the model was trained on and loses more than the empty
upper band costs. Raising the language-model weight from the model's 6.5 to 8 lowered the
error rate and made decoding faster (a narrower search); 5, 7, 9 and 10 did worse. These
figures come from synthetic speech on one short call: they guide the choice, they do not
promise accuracy on real calls.
"""

from __future__ import annotations

import re
from typing import Any, Final

LANGUAGE_WEIGHT: Final = 8.0
FILLER = re.compile(r"^(<s>|</s>|<sil>|\[.*\]|\+.*\+)$")
ALTERNATE = re.compile(r"\(\d+\)$")


def available() -> bool:
    """Whether the ``pocketsphinx`` package (the ``local-lite`` extra) is installed."""
    try:
        import pocketsphinx  # noqa: F401  (probing only)
    except ImportError:
        return False
    return True


class SphinxDecoder:
    """Two decoders: one for finals, one for partials.

    Decoding an utterance's prefix for a partial result leaves state behind that changes the
    next result, so partials never share a decoder with finals. Finals were checked to come
    out the same whatever finals came before them.
    """

    def __init__(self) -> None:
        from pocketsphinx import Decoder

        self._decoders: dict[bool, Any] = {
            final: Decoder(lw=LANGUAGE_WEIGHT, loglevel="FATAL") for final in (True, False)}

    def decode(self, pcm: bytes, final: bool) -> tuple[str, float]:
        """Text and confidence (0..1, the mean word posterior) of one utterance."""
        decoder = self._decoders[final]
        decoder.start_utt()
        decoder.process_raw(pcm, full_utt=True)
        decoder.end_utt()
        words: list[str] = []
        posteriors: list[float] = []
        for segment in decoder.seg():
            if FILLER.match(segment.word):
                continue
            words.append(ALTERNATE.sub("", segment.word))
            posteriors.append(min(max(float(segment.prob), 0.0), 1.0))
        confidence = sum(posteriors) / len(posteriors) if posteriors else 0.0
        return " ".join(words), round(confidence, 3)
