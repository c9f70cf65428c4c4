#!/usr/bin/env python3
"""Measure the embedded recognizer: real-time factor, legs per core, word error rate.

Runs the recognizer in this process (one core), exactly as a worker does: the sample call's
legs are segmented on silence and each utterance decoded. Prints per leg and in total; the
word error rate is computed after normalising numbers and contractions (bridge/wer.py).
With --compare, also measures the alternatives that were tried: Whisper's beam 5 against
greedy decoding, or PocketSphinx's telephone tunings (see bridge/stt/local/sphinx.py).

    taskset -c 1 python bench/local_stt.py [--model whisper-tiny.en|pocketsphinx] [--compare]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import tempfile
import time
from pathlib import Path

from bridge.codecs import g711
from bridge.events import AudioEncoding
from bridge.stt.local import recognizer
from bridge.stt.local.segmenter import Segmenter
from bridge.wer import word_errors

SAMPLE = Path(__file__).resolve().parents[1] / "bridge" / "samples" / "support_call"


def legs() -> dict[str, tuple[bytes, str]]:
    reference = json.loads((SAMPLE / "reference.json").read_text())["reference"]
    return {name: (g711.decode(AudioEncoding.PCMU, (SAMPLE / f"{name}.ulaw").read_bytes()),
                   reference[name]) for name in ("caller", "agent")}


def run(label: str, decode) -> None:  # type: ignore[no-untyped-def]
    total_errors = total_words = decodes = 0
    total_audio = total_cpu = 0.0
    for name, (pcm, reference) in legs().items():
        segmenter = Segmenter(8000)
        utterances = segmenter.feed(pcm) + segmenter.flush()
        start = time.process_time()
        text = " ".join(t for t in (decode(u.pcm)[0] for u in utterances) if t)
        cpu = time.process_time() - start
        decodes += len(utterances)
        audio_s = len(pcm) / 2 / 8000
        errors, count = word_errors(reference, text)
        total_errors += errors
        total_words += count
        total_audio += audio_s
        total_cpu += cpu
        print(f"  {label:28} {name:7} utterances={len(utterances):2} RTF={cpu / audio_s:.3f} "
              f"WER={errors / count:.2f}  \"{text}\"")
    rtf = total_cpu / total_audio
    print(f"  {label:28} total   RTF={rtf:.3f}  legs per core in real time={1 / rtf:.1f}  "
          f"CPU per utterance={total_cpu / decodes:.2f}s  "
          f"WER={total_errors / total_words:.2f} ({total_errors}/{total_words} words)  "
          f"peak RSS={resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024} MB")


def narrowed_model(upperf: int) -> str:
    """The shipped model with its filter bank narrowed to the telephone band."""
    from pocketsphinx import get_model_path

    base = Path(get_model_path()) / "en-us" / "en-us"
    folder = Path(tempfile.mkdtemp(prefix="callbridge-model-"))
    for item in base.iterdir():
        if item.name != "feat.params":
            (folder / item.name).symlink_to(item)
    params = (base / "feat.params").read_text().replace("-upperf 6800", f"-upperf {upperf}")
    (folder / "feat.params").write_text(params)
    return str(folder)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=recognizer.MODELS, default=recognizer.WHISPER)
    parser.add_argument("--compare", action="store_true", help="also measure the alternatives")
    args = parser.parse_args()
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, Python "
          f"{platform.python_version()}, {platform.platform()}, load {os.getloadavg()[0]:.2f}")
    recognizer.load_model(args.model)
    label = "whisper tiny.en, greedy" if args.model == recognizer.WHISPER \
        else "pocketsphinx: 16 kHz, weight 8"
    run(label, lambda pcm: recognizer.decode(pcm, 8000))
    if not args.compare:
        return
    if args.model == recognizer.WHISPER:
        recognizer.load_model(args.model, beam_size=5)
        run("whisper tiny.en, beam 5", lambda pcm: recognizer.decode(pcm, 8000))
        return
    from pocketsphinx import Decoder

    from bridge.codecs.g711 import audioop

    def with_decoder(decoder, rate):  # type: ignore[no-untyped-def]
        def decode(pcm: bytes) -> tuple[str, float]:
            if rate == 16000:
                pcm = audioop.ratecv(pcm, 2, 1, 8000, 16000, None)[0]
            decoder.start_utt()
            decoder.process_raw(pcm, full_utt=True)
            decoder.end_utt()
            hyp = decoder.hyp()
            return (hyp.hypstr if hyp else ""), 0.0
        return decode

    narrow = narrowed_model(3500)
    run("8 kHz native, band 130-3500", with_decoder(
        Decoder(hmm=narrow, samprate=8000, nfft=256, lw=8.0, loglevel="FATAL"), 8000))
    run("16 kHz, band narrowed 3500", with_decoder(
        Decoder(hmm=narrow, lw=8.0, loglevel="FATAL"), 16000))
    for lw in (5.0, 6.5, 7.0, 9.0, 10.0):
        run(f"16 kHz, language weight {lw}", with_decoder(
            Decoder(lw=lw, loglevel="FATAL"), 16000))


if __name__ == "__main__":
    main()
