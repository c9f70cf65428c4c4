"""The PCI-safe stereo recording of a call: spooled while it runs, silenced, rendered at its end.

``CallRecording`` is a call observer. While the call runs, each leg's audio (codec bytes, as
the leg got it) is appended to a spool file of its own (0600, locked while in use, in
``artifacts.spool_dir``), with an index of where each run of it sits on the leg's clock.
It also collects what must not be heard:

* every final the redactor changed (a cut, a count, or emptied): the words whose characters
  overlap a cut, when the engine gave word times and every word is found in the text;
  otherwise the whole utterance. Both get ``REDACTION_MARGIN_MS`` either side. Custom patterns
  leave no character ranges, so a final they changed is silenced whole;
* every key press the stream reported: ``DTMF_EVENT_BEFORE_MS`` before the leg's position when
  it came to ``DTMF_EVENT_AFTER_MS`` after, on both channels (the tone leaks into both);
* the legs' paused spans (paused audio never reaches observers; whatever a chunk straddling a
  pause's edge carried is silenced too);
* the audio of a leg after its last final when the engine never confirmed it transcribed
  it (it failed, or did not close its session within ``stt.close_grace_s`` after the end of
  audio: finals may still have been on their way);
* a leg whose audio did not all reach the engine (dropped for a slow upstream, or discarded
  after transcription failed): nothing checked it for spoken numbers, so its whole channel is
  silent.

At the end (``artifacts``), ``render`` decodes the legs window by window, finds in-band DTMF
tones in each leg with ``bridge.compliance.dtmf`` and silences them (``DTMF_TONE_MARGIN_MS``
either side) on both channels, silences the spans above, and writes a stereo file aligned on
the call's clock: inbound (the caller) on the left, outbound (the agent) on the right, a
mixed leg on both, holes as silence. WAV is 16-bit PCM at the call's rate; FLAC and Opus go
through PyAV (the ``codecs`` extra). The spool files are removed once rendered; a crash
leaves them (and perhaps a rendered recording not yet stored), and ``remove_stale_spools``
deletes those no live process holds at start.

Everything is bounded: ``artifacts.max_recording_s`` of audio per leg (the rest is not
spooled), and the spans and clock runs kept. A recording that could not be made safe (too
many spans, a write that failed) is withheld, never written with audio it should not have.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import fcntl
import itertools
import os
import re
import uuid
import wave
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Final

import numpy as np
import numpy.typing as npt
import structlog

from bridge.artifacts.service import Artifact, ObserverFactory
from bridge.calls import Call, CallObserver
from bridge.codecs.g711 import audioop
from bridge.compliance.dtmf import DtmfDetector
from bridge.compliance.redact import CREDIT_CARD, EXPIRY, SECURITY_CODE, SSN, Redacted
from bridge.config import ArtifactsSettings, Settings
from bridge.errors import RecordingWithheld
from bridge.events import AudioEncoding, Track, TranscriptResult

log = structlog.get_logger("bridge.artifacts.recording")

REDACTION_MARGIN_MS: Final = 250  # engines' word and utterance times are approximate
DTMF_EVENT_BEFORE_MS: Final = 1000  # providers report a key press once it is released
DTMF_EVENT_AFTER_MS: Final = 500
DTMF_TONE_MARGIN_MS: Final = 100  # the edges of a tone that fill no detection block
# Kinds the redactor reports character ranges for; others (custom patterns) have none.
LOCATED_KINDS: Final = frozenset({CREDIT_CARD, SECURITY_CODE, EXPIRY, SSN})
MAX_SPANS: Final = 100_000  # spans to silence in one call: past it, the recording is withheld
MAX_RUNS: Final = 100_000  # runs of a leg's audio (a jump of its clock starts one)
WINDOW_S: Final = 30  # rendered at a time: memory stays flat whatever the call's length
SPOOL_SUFFIX: Final = ".spool"
PARTIAL_SUFFIX: Final = ".part"
SPOOL_BUFFER: Final = 64 * 1024  # one write() per this much audio: 8 s of a G.711 leg
CONTENT_TYPES: Final = {"wav": "audio/wav", "flac": "audio/flac", "opus": "audio/ogg"}
RECORDING_PARAMETER: Final = "callbridge_recording"
FILE_SAFE: Final = re.compile(r"[^A-Za-z0-9_.-]")
# Stereo 16-bit frames a WAV file can hold: its RIFF size (36 bytes of header and the data)
# is an unsigned 32-bit number.
WAV_MAX_FRAMES: Final = (2**32 - 1 - 36) // 4
# A rendered recording's name in the spool directory: "<file id>.recording.<format>".
RENDERED: Final = re.compile(r"\.recording\.(?:" + "|".join(CONTENT_TYPES) + r")\Z")

Span = tuple[int, int]  # [start, end) in ms on the call's clock
Samples = npt.NDArray[np.int16]


# -- what to silence: pure ---------------------------------------------------------------------

def locate_words(text: str, words: Sequence[str]) -> list[Span] | None:
    """Each word's character range in ``text``, in order, whatever its case; None when one
    is not found. Ranges are in ``text`` itself (lowering the text first could change its
    length, and the redactor's cuts are in the text as the engine gave it)."""
    cursor, ranges = 0, []
    for word in words:
        wanted = word.strip()
        found = re.compile(re.escape(wanted), re.IGNORECASE).search(text, cursor) \
            if wanted else None
        if found is None:
            return None
        ranges.append(found.span())
        cursor = found.end()
    return ranges


def redaction_spans(result: TranscriptResult, redacted: Redacted,
                    fields: Mapping[str, Any] | None) -> list[Span]:
    """The audio to silence for one final as it left the redactor (see the module docstring)."""
    if not redacted.cuts and not redacted.counts and fields is not None:
        return []
    margin = REDACTION_MARGIN_MS
    whole = [(result.start_ms - margin, result.end_ms + margin)]
    if not redacted.cuts or not result.words or set(redacted.counts) - LOCATED_KINDS:
        return whole
    ranges = locate_words(result.text, [w[0] for w in result.words])
    if ranges is None:
        return whole
    spans = [(start - margin, end + margin)
             for (first, last), (_, start, end, _) in zip(ranges, result.words, strict=True)
             if any(first < cut_end and cut_start < last for cut_start, cut_end in redacted.cuts)]
    return spans or whole


def file_id(call_key: str) -> str:
    """A name for a call's files that no call id can turn into a path, unique per call."""
    return f"{FILE_SAFE.sub('_', call_key)[:80]}-{uuid.uuid4().hex[:12]}"


def recording_wanted(settings: Settings, parameters: Mapping[str, str], path: str) -> bool:
    """Whether a call is recorded: ``artifacts.recording``, unless the first ``stt.routes``
    entry the call matches says otherwise; then the call's ``callbridge_recording`` when
    ``artifacts.recording_per_call`` lets calls choose."""
    wanted = settings.artifacts.recording
    for route in settings.stt.routes:
        if route.matches(parameters, path):
            if route.recording is not None:
                wanted = route.recording
            break
    if settings.artifacts.recording_per_call:
        choice = parameters.get(RECORDING_PARAMETER, "").lower()
        if choice in ("true", "false"):
            wanted = choice == "true"
    return wanted


def longest_recording(recording_format: str, sample_rate: int, max_recording_s: float) -> int:
    """The samples a leg's recording may hold: ``max_recording_s`` of them, and for WAV no
    more than its 32-bit sizes can count (4 GiB: 12.4 h of a 24 kHz call in 16-bit stereo;
    past it, writing the header fails and the whole recording would be lost)."""
    samples = int(max_recording_s * sample_rate)
    if recording_format == "wav":
        samples = min(samples, WAV_MAX_FRAMES)
    return samples


def recording_possible(settings: Settings) -> bool:
    """Whether any call may be recorded with these settings."""
    return (settings.artifacts.recording or settings.artifacts.recording_per_call
            or any(route.recording for route in settings.stt.routes))


# -- the spool: one file per leg --------------------------------------------------------------

class LegSpool:
    """One leg's audio as it came, appended to a locked 0600 file, and where each run sits.

    ``runs`` holds [first sample on the leg's clock, offset in the file, bytes]; a run ends
    where the clock jumps. Writes past ``max_bytes``, ``max_samples`` of clock from the first
    byte, or ``MAX_RUNS`` runs are not kept (``truncated``).
    """

    def __init__(self, path: Path, *, sample_rate: int, width: int, max_bytes: int,
                 max_samples: int) -> None:
        self.path = path
        self.sample_rate = sample_rate
        self.width = width
        self.max_bytes = max_bytes
        self.max_samples = max_samples
        self.runs: list[list[int]] = []
        self.size = 0
        self.truncated = False
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        # Held for the file's life: a start-up clean-up deletes only files nobody holds.
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        self._file: IO[bytes] | None = os.fdopen(descriptor, "wb", buffering=SPOOL_BUFFER)

    def write(self, clock_ms: int, data: bytes) -> None:
        """Append a chunk that starts at ``clock_ms`` on the leg's clock."""
        if self._file is None or self.truncated:
            return
        at = clock_ms * self.sample_rate // 1000
        end = self.end
        if end is not None:
            # A chunk's clock is in whole ms: within one ms of the run's end, it continues it;
            # the clock never runs back, so a chunk never goes before the run's end.
            at = end if abs(at - end) * 1000 <= self.sample_rate else max(at, end)
        first = self.runs[0][0] if self.runs else at
        if (at + len(data) // self.width - first > self.max_samples
                or self.size + len(data) > self.max_bytes
                or (at != end and len(self.runs) >= MAX_RUNS)):
            self.truncated = True
            return
        if at == end:
            self.runs[-1][2] += len(data)
        else:
            self.runs.append([at, self.size, len(data)])
        self._file.write(data)
        self.size += len(data)

    def close(self) -> None:
        """Flush and close the file (it stays locked until then)."""
        if self._file is not None:
            file, self._file = self._file, None
            file.close()

    @property
    def start(self) -> int | None:
        return self.runs[0][0] if self.runs else None

    @property
    def end(self) -> int | None:
        if not self.runs:
            return None
        start, _, length = self.runs[-1]
        return start + length // self.width


def remove_stale_spools(spool_dir: Path) -> int:
    """Delete spool files, half-written recordings and rendered ones not yet stored, that no
    live process holds (left by a crash); returns how many. Files of this process's own
    live recordings are locked and stay.

    A rendered recording goes too: its call's store never got it, and nothing else (not
    retention, which sweeps the store) would ever delete that copy of the call's audio."""
    removed = 0
    for path in spool_dir.iterdir():
        stale = (path.suffix in (SPOOL_SUFFIX, PARTIAL_SUFFIX)
                 or RENDERED.search(path.name) is not None)
        if not stale or not path.is_file():
            continue
        try:
            descriptor = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            continue
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            continue  # a live recording of another process
        finally:
            os.close(descriptor)
        path.unlink(missing_ok=True)
        removed += 1
    return removed


# -- rendering --------------------------------------------------------------------------------

@dataclass(slots=True)
class RenderPlan:
    """Everything ``render`` needs, gathered once the call ended."""

    encoding: AudioEncoding
    sample_rate: int
    legs: dict[Track, LegSpool]
    silenced: dict[Track, list[Span]]  # per leg, ms on the call's clock
    both: list[Span]  # on both channels
    muted: set[Track] = field(default_factory=set)  # whole channel silent
    output: Path = Path()
    recording_format: str = "wav"
    # The longest file: legs' clocks come from the network and may lie far apart.
    max_samples: int = 14400 * 8000


@dataclass(frozen=True, slots=True)
class Rendered:
    """What was written: the file, its length, and how much of it was silenced."""

    path: Path
    duration_ms: int
    silenced_ms: dict[str, int]
    tones: int


def _decode(encoding: AudioEncoding, data: bytes) -> Samples:
    if encoding is AudioEncoding.PCMU:
        data = audioop.ulaw2lin(data, 2)
    elif encoding is AudioEncoding.PCMA:
        data = audioop.alaw2lin(data, 2)
    return np.frombuffer(data, dtype="<i2").astype(np.int16)


def _read_window(spool: LegSpool, reader: IO[bytes], encoding: AudioEncoding, start: int,
                 length: int) -> Samples:
    """The leg's decoded samples over [start, start + length) of the clock; holes are 0."""
    out = np.zeros(length, dtype=np.int16)
    width = spool.width
    runs = spool.runs
    # Runs are in clock order and disjoint: begin at the last one starting by ``start``. A
    # peer that jumps the clock at every frame makes up to MAX_RUNS of them, and a pass over
    # all of them per window would cost a long call minutes of CPU.
    n = max(bisect.bisect_right(runs, start, key=lambda run: run[0]) - 1, 0)
    for run_start, offset, size in itertools.islice(runs, n, None):
        if run_start >= start + length:
            break
        run_end = run_start + size // width
        first, last = max(run_start, start), min(run_end, start + length)
        if first >= last:
            continue
        reader.seek(offset + (first - run_start) * width)
        out[first - start:last - start] = _decode(encoding, reader.read((last - first) * width))
    return out


def _channels(legs: Mapping[Track, LegSpool]) -> list[list[Track]]:
    """The legs heard on the left (caller) and on the right (agent) channel."""
    return [[t for t in (Track.INBOUND, Track.MIXED) if t in legs],
            [t for t in (Track.OUTBOUND, Track.MIXED) if t in legs]]


def render(plan: RenderPlan) -> Rendered | None:
    """Write the silenced stereo recording (see the module docstring); None without audio.

    Blocking: file I/O and DSP; run it in a thread. Writes ``output`` + ``.part`` first and
    renames it, so a file at ``output`` is always whole.
    """
    starts = [s.start for s in plan.legs.values() if s.start is not None]
    ends = [s.end for s in plan.legs.values() if s.end is not None]
    if not starts or not ends:
        return None
    rate = plan.sample_rate
    origin = min(starts)
    total = min(max(ends) - origin, plan.max_samples)
    window = WINDOW_S * rate
    detector = DtmfDetector(rate)
    readers = {track: open(spool.path, "rb") for track, spool in plan.legs.items()}  # noqa: SIM115
    try:
        def samples_of(ms: int) -> int:
            return ms * rate // 1000 - origin

        # Pass 1: in-band key presses, per leg, over windows overlapping by one block.
        tones: list[tuple[int, int]] = []
        tone_margin = DTMF_TONE_MARGIN_MS * rate // 1000
        for track, spool in plan.legs.items():
            for at in range(0, total, window):
                pcm = _read_window(spool, readers[track], plan.encoding, origin + at,
                                   min(window + detector.block, total - at))
                tones += [(at + s.start - tone_margin, at + s.end + tone_margin)
                          for s in detector.find(pcm)]
                if len(tones) > MAX_SPANS:
                    raise RecordingWithheld("too many key-press tones")
        tones = _merged(tones)
        both = [(samples_of(a), samples_of(b)) for a, b in plan.both] + tones
        silenced = {track: _merged([(samples_of(a), samples_of(b)) for a, b in spans] + both)
                    for track in plan.legs for spans in [plan.silenced.get(track, [])]}
        silenced_samples = {track.value: 0 for track in plan.legs}
        # Pass 2: both channels, silenced, interleaved, written.
        part = plan.output.with_name(plan.output.name + PARTIAL_SUFFIX)
        with _writer(plan.recording_format, part, rate) as write:
            for at in range(0, total, window):
                length = min(window, total - at)
                stereo = np.zeros((length, 2), dtype=np.int16)
                for channel, tracks in enumerate(_channels(plan.legs)):
                    for track in tracks:
                        pcm = _read_window(plan.legs[track], readers[track], plan.encoding,
                                           origin + at, length)
                        mask = np.full(length, track in plan.muted)
                        spans = silenced[track]
                        # Disjoint and in order: start at the first that ends in the window.
                        n = bisect.bisect_right(spans, (at,)) - 1
                        for first, last in spans[max(n, 0):]:
                            if first >= at + length:
                                break
                            first, last = max(first - at, 0), min(last - at, length)
                            if first < last:
                                mask[first:last] = True
                        pcm[mask] = 0
                        silenced_samples[track.value] += int(np.count_nonzero(mask))
                        # A mixed leg is both channels; two legs on one channel never happen.
                        stereo[:, channel] = pcm
                write(stereo)
        os.replace(part, plan.output)
    finally:
        for reader in readers.values():
            reader.close()
    return Rendered(plan.output, total * 1000 // rate,
                    {t: n * 1000 // rate for t, n in silenced_samples.items()}, len(tones))


def _merged(spans: list[Span]) -> list[Span]:
    """The same stretches as disjoint spans in order."""
    merged: list[Span] = []
    for start, end in sorted(spans):
        if start >= end:
            continue
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


@contextlib.contextmanager
def _writer(recording_format: str, path: Path, rate: int) -> Iterator[Any]:
    """A function taking (n, 2) int16 blocks, writing them to ``path`` (0600); a failure
    (a full disk, a file past what its format can hold) removes the file: no half of a
    recording is left behind."""
    try:
        with _encoder(recording_format, path, rate) as write:
            yield write
    except BaseException:
        with contextlib.suppress(OSError):
            path.unlink()
        raise


@contextlib.contextmanager
def _encoder(recording_format: str, path: Path, rate: int) -> Iterator[Any]:
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    if recording_format == "wav":
        with os.fdopen(descriptor, "wb") as file, wave.open(file, "wb") as wav:
            wav.setnchannels(2)
            wav.setsampwidth(2)
            wav.setframerate(rate)

            def write_wav(stereo: Samples) -> None:
                wav.writeframes(stereo.astype("<i2").tobytes())
            yield write_wav
        return
    import av

    os.close(descriptor)
    with av.open(str(path), "w", format="flac" if recording_format == "flac" else "ogg") as out:
        codec = "flac" if recording_format == "flac" else "libopus"
        # Opus encodes at 8, 12, 16, 24 or 48 kHz: the call's rate when it is one of those.
        stream: Any = out.add_stream(codec, rate=rate if recording_format == "flac" or
                                     rate in (8000, 12000, 16000, 24000, 48000) else 48000,
                                     layout="stereo")
        if recording_format == "opus":
            # Speech on a telephone line: 32 kbit/s for both channels, and a middle
            # complexity, which costs half the CPU of the default (bench/README.md).
            stream.bit_rate = 32000
            stream.options = {"application": "voip", "compression_level": "5"}

        def write_av(stereo: Samples) -> None:
            frame = av.AudioFrame.from_ndarray(stereo.reshape(1, -1), format="s16",
                                               layout="stereo")
            frame.sample_rate = rate
            for packet in stream.encode(frame):
                out.mux(packet)
        yield write_av
        for packet in stream.encode(None):
            out.mux(packet)


# -- the observer -----------------------------------------------------------------------------

class CallRecording(CallObserver):
    """Records one call; see the module docstring."""

    def __init__(self, *, spool_dir: Path, name: str, encoding: AudioEncoding, sample_rate: int,
                 settings: ArtifactsSettings) -> None:
        self._spool_dir = spool_dir
        self._name = name
        self._encoding = encoding
        self._sample_rate = sample_rate
        self._format = settings.recording_format
        self._width = 2 if encoding is AudioEncoding.L16 else 1
        self._max_samples = longest_recording(settings.recording_format, sample_rate,
                                              settings.max_recording_s)
        self._legs: dict[Track, LegSpool] = {}
        self._silenced: dict[Track, list[Span]] = {}
        self._both: list[Span] = []
        self._muted: set[Track] = set()
        self._spans = 0
        self.withheld: str | None = None  # why the recording will not be written

    def audio(self, track: Track, clock_ms: int, data: bytes) -> None:
        if self.withheld is not None:
            return
        try:
            spool = self._legs.get(track)
            if spool is None:
                spool = self._legs[track] = LegSpool(
                    self._spool_dir / f"{self._name}.{track.value}{SPOOL_SUFFIX}",
                    sample_rate=self._sample_rate, width=self._width,
                    max_bytes=self._max_samples * self._width, max_samples=self._max_samples)
                self._silenced.setdefault(track, [])
            spool.write(clock_ms, data)
        except OSError as error:
            self._withhold(f"spool write failed: {error.strerror or type(error).__name__}")

    def dtmf(self, track: Track, clock_ms: int) -> None:
        self._add(None, (clock_ms - DTMF_EVENT_BEFORE_MS, clock_ms + DTMF_EVENT_AFTER_MS))

    def final(self, track: Track, result: TranscriptResult, redacted: Redacted,
              fields: Mapping[str, Any] | None) -> None:
        for span in redaction_spans(result, redacted, fields):
            self._add(track, span)

    def ended(self, call: Call) -> Mapping[str, Any]:
        for track, leg in call.legs.items():
            position = leg.audio.position_ms
            for start, end in leg.audio.pauses:
                self._add(track, (start or 0, end if end is not None else position))
            unconfirmed = leg.audio.unconfirmed_from_ms
            if unconfirmed is not None:
                # The engine never confirmed it transcribed this: a number spoken in it
                # would be in no final, so nothing would silence it.
                self._add(track, (unconfirmed - REDACTION_MARGIN_MS, position))
            counters = leg.audio.counters
            if counters.chunks_dropped or counters.bytes_discarded:
                # Audio the engine never heard was never checked for spoken numbers.
                self._muted.add(track)
        return {}

    async def artifacts(self) -> list[Artifact]:
        """Render the recording into the spool directory and remove the spool files.
        Cancelling it leaves spool files (removed at the next start) and no recording."""
        for spool in self._legs.values():
            spool.close()
        try:
            if self.withheld is not None:
                log.warning("recording withheld", reason=self.withheld)
                return []
            if self._muted:
                log.warning("recording: legs not all transcribed are silent",
                            legs=sorted(t.value for t in self._muted))
            output = self._spool_dir / f"{self._name}.recording.{self._format}"
            plan = RenderPlan(self._encoding, self._sample_rate, self._legs, self._silenced,
                              self._both, self._muted, output, self._format, self._max_samples)
            try:
                rendered = await asyncio.to_thread(render, plan)
            except RecordingWithheld as withheld:
                log.warning("recording withheld", reason=str(withheld))
                return []
            except OSError as error:
                log.warning("recording not written", error=error.strerror or type(error).__name__)
                return []
            if rendered is None:
                return []
            log.info("recording rendered", path=str(rendered.path), format=self._format,
                     duration_ms=rendered.duration_ms, silenced_ms=rendered.silenced_ms,
                     tones=rendered.tones, truncated=[t.value for t, s in self._legs.items()
                                                      if s.truncated])
            return [Artifact(f"recording.{self._format}", CONTENT_TYPES[self._format],
                             rendered.path)]
        finally:
            for spool in self._legs.values():
                spool.path.unlink(missing_ok=True)

    def _add(self, track: Track | None, span: Span) -> None:
        self._spans += 1
        if self._spans > MAX_SPANS:
            self._withhold("too many spans to silence")
            return
        if track is None:
            self._both.append(span)
        else:
            self._silenced.setdefault(track, []).append(span)

    def _withhold(self, reason: str) -> None:
        if self.withheld is None:
            self.withheld = reason
            for spool in self._legs.values():
                spool.close()


def recording_factory(settings: Settings, spool_dir: Path) -> ObserverFactory:
    """The observer factory of ``AfterCallService``: a ``CallRecording`` for each call that
    is recorded (``recording_wanted``)."""
    def factory(call: Call) -> CallObserver | None:
        started = call.started
        if started is None or not recording_wanted(settings, started.custom_parameters,
                                                   call.path):
            return None
        return CallRecording(spool_dir=spool_dir, name=file_id(call.key or started.call_id),
                             encoding=started.encoding, sample_rate=started.sample_rate,
                             settings=settings.artifacts)
    return factory
