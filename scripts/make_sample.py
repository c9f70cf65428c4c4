#!/usr/bin/env python3
"""Regenerate the demo call in bridge/samples/support_call/ with espeak-ng.

Needs espeak-ng (Debian: apt-get install espeak-ng) and the project installed (it uses the
project's own resampler and G.711 encoder). Writes one raw µ-law file per leg (8 kHz, the
legs time-aligned, each silent while the other speaks) and reference.json with the script.

    python scripts/make_sample.py
"""

from __future__ import annotations

import io
import json
import subprocess
import wave
from pathlib import Path

from bridge.codecs import g711
from bridge.codecs.resample import resample, to_mono_16bit
from bridge.events import AudioEncoding

OUT = Path(__file__).resolve().parents[1] / "bridge" / "samples" / "support_call"
VOICES = {"caller": ("en-us+f3", 150), "agent": ("en-us+f2", 140)}
GAP_MS = 500
LEAD_MS = 300
SCRIPT = [
    ("agent", "Thank you for calling. How can I help you today?"),
    ("caller", "Hi, I am calling about my internet bill."),
    ("agent", "Sure. Can I have your account number please?"),
    ("caller", "Yes, it is four five six seven."),
    ("agent", "Thank you. I can see a late fee on this bill."),
    ("caller", "Can you remove the fee please?"),
    ("agent", "Yes, I have removed it. Have a nice day."),
]


def speak(text: str, voice: str, speed: int) -> bytes:
    """espeak-ng to 8 kHz µ-law."""
    wav_bytes = subprocess.run(["espeak-ng", "-v", voice, "-s", str(speed), "--stdout", text],
                               check=True, capture_output=True).stdout
    with wave.open(io.BytesIO(wav_bytes)) as wav:
        pcm = to_mono_16bit(wav.readframes(wav.getnframes()), sample_width=wav.getsampwidth(),
                            channels=wav.getnchannels())
        rate = wav.getframerate()
    return g711.encode(AudioEncoding.PCMU, resample(pcm, rate_in=rate, rate_out=8000))


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    tracks = {"caller": bytearray(), "agent": bytearray()}
    turns = []
    cursor_ms = LEAD_MS
    for speaker, text in SCRIPT:
        audio = speak(text, *VOICES[speaker])
        for name, track in tracks.items():
            track += b"\xff" * max(0, cursor_ms * 8 - len(track))  # µ-law silence
            if name == speaker:
                track += audio
        duration_ms = len(audio) // 8
        turns.append({"speaker": speaker, "text": text, "start_ms": cursor_ms,
                      "end_ms": cursor_ms + duration_ms})
        cursor_ms += duration_ms + GAP_MS
    for track in tracks.values():
        track += b"\xff" * (cursor_ms * 8 - len(track))
    for name, track in tracks.items():
        (OUT / f"{name}.ulaw").write_bytes(bytes(track))
    reference = {
        "description": "A short support call synthesised with espeak-ng; 8 kHz µ-law, "
                       "one file per leg, time-aligned.",
        "voices": {k: f"{v[0]} at {v[1]} words per minute" for k, v in VOICES.items()},
        "reference": {s: " ".join(t for who, t in SCRIPT if who == s) for s in tracks},
        "turns": turns,
    }
    (OUT / "reference.json").write_text(json.dumps(reference, indent=2) + "\n")
    print(f"wrote {OUT}: {cursor_ms / 1000:.1f} s per leg")


if __name__ == "__main__":
    main()
