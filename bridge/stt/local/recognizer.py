"""PocketSphinx decoding, run in worker processes (never on the event loop).

Each worker process builds one ``Decoder`` at start-up (``init_worker``) and then decodes
whole utterances (``decode``). Decoding an utterance in one call is stateless between calls,
so any worker can take any utterance and a crashed worker loses nothing but its job.

Telephone tuning, measured with ``bench/local_stt.py`` (figures in bench/README.md): the
model shipped with the ``pocketsphinx`` wheel is a 16 kHz continuous US-English model. Three
ways to feed it 8 kHz G.711 were compared: decoding natively at 8 kHz with the model's
filter bank narrowed to the telephone band, the same at 16 kHz, and resampling the call
audio to 16 kHz with a filtered rate converter. Resampling won clearly; narrowing the filter
bank moves the features away from what the model was trained on and loses more than the
empty upper band costs. So audio is resampled to 16 kHz. Raising the language-model weight
from the model's 6.5 to 8 lowered the error rate and made decoding faster (a narrower
search); 5, 7, 9 and 10 did worse. These figures come from synthetic speech on one short
call: they guide the choice, they do not promise accuracy on real calls.
"""

from __future__ import annotations

import os
import re
import threading
import time
from typing import Any, Final

from bridge.codecs.g711 import audioop

MODEL_RATE: Final = 16000
LANGUAGE_WEIGHT: Final = 8.0
PARENT_CHECK_S: Final = 1.0
FILLER = re.compile(r"^(<s>|</s>|<sil>|\[.*\]|\+.*\+)$")
ALTERNATE = re.compile(r"\(\d+\)$")

# Two decoders per worker: decoding an utterance's prefix for a partial result leaves state
# behind that changes the next result, so partials never share a decoder with finals. Finals
# were checked to come out the same whatever finals came before them.
_decoders: dict[bool, Any] = {}


def available() -> bool:
    """Whether the ``pocketsphinx`` package (the ``callbridge[local]`` extra) is installed."""
    try:
        import pocketsphinx  # noqa: F401  (probing only)
    except ImportError:
        return False
    return True


def init_worker() -> None:
    """Prepare a worker process: detach it from stdout, watch its parent, load the model.

    stdout is the supervisor's pipe for the ready line: a worker holding it would keep that
    pipe open after its server died. A worker whose server is killed exits by itself.
    """
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.close(devnull)
    parent = os.getppid()
    threading.Thread(target=_exit_with_parent, args=(parent,), daemon=True).start()
    load_model()


def load_model() -> None:
    """Build this process's decoders: one for finals, one for partials."""
    from pocketsphinx import Decoder

    for final in (True, False):
        _decoders[final] = Decoder(lw=LANGUAGE_WEIGHT, loglevel="FATAL")


def _exit_with_parent(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(PARENT_CHECK_S)
    os._exit(0)


def decode(pcm: bytes, sample_rate: int, final: bool = True) -> tuple[str, float]:
    """Recognise one utterance of 16-bit mono PCM; returns (text, confidence 0..1)."""
    if not _decoders:
        load_model()
    if sample_rate != MODEL_RATE:
        pcm, _ = audioop.ratecv(pcm, 2, 1, sample_rate, MODEL_RATE, None)
    decoder = _decoders[final]
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


def warm_up() -> bool:
    """Run in each worker at start so the first call does not pay for loading the model."""
    for final in (True, False):
        decode(b"\x00\x00" * (MODEL_RATE // 10), MODEL_RATE, final)
    return True
