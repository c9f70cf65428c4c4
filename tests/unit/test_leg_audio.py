"""One leg's audio without an event loop: the pause gate, the drop-oldest buffer, the replay
window, and the one map from the engine's audio back to the leg's clock."""

from __future__ import annotations

from bridge.events import AudioEncoding
from bridge.legs.audio import MAX_SEGMENTS, ClockMap, LegAudio

FRAME = 160  # 20 ms of G.711


def leg(**overrides: int) -> LegAudio:
    options = {"sample_rate": 8000, "chunk_ms": 100, "reorder_window": 0,
               "max_gap_fill_ms": 1000, "max_buffer_ms": 5000, "replay_ms": 30000}
    options.update(overrides)
    return LegAudio(AudioEncoding.PCMU, **options)


def feed(audio: LegAudio, first_ms: int, count: int, byte: int = 1) -> None:
    for n in range(count):
        audio.push(bytes([byte]) * FRAME, first_ms + 20 * n)


def send_all(audio: LegAudio) -> list[int]:
    """Send what waits; the clock positions of the chunks sent."""
    clocks = []
    for chunk in audio.ready_chunks():
        audio.sent(chunk)
        clocks.append(chunk.clock_ms)
    return clocks


def test_audio_in_order_maps_straight_onto_the_clock_from_the_first_timestamp() -> None:
    audio = leg()
    feed(audio, 500, 25)
    assert send_all(audio) == [500, 600, 700, 800, 900]
    assert audio.to_clock(0) == 500 and audio.to_clock(250) == 750
    assert len(audio.clock) == 1  # one continuous segment


def test_a_pause_a_jump_and_dropped_chunks_all_live_in_one_map() -> None:
    audio = leg(max_buffer_ms=1200)
    feed(audio, 0, 10)  # 0-200 ms: upstream 0-200
    send_all(audio)
    audio.set_paused(True)
    feed(audio, 200, 10)  # 200-400 ms withheld
    audio.set_paused(False)
    feed(audio, 400, 15)  # 400-700 ms: upstream 200-500
    send_all(audio)
    # A 60 s hole: its first second is filled with silence (upstream 500-1500), the clock
    # jumps over the rest, and the frames after it go on at 61.6 s (upstream 1500-1600).
    feed(audio, 61_600, 5)
    send_all(audio)
    feed(audio, 61_700, 80)  # 1.6 s while the engine is stuck: the buffer keeps 1.2 s
    send_all(audio)  # so upstream 1600 is clock 62.1 s: the oldest 400 ms were dropped
    assert audio.counters.bytes_paused == 10 * FRAME and audio.counters.chunks_dropped == 4
    assert audio.to_clock(100) == 100  # before the pause
    assert audio.to_clock(250) == 450  # after it: the withheld 200 ms are skipped
    assert audio.to_clock(1450) == 1650  # inside the filled silence
    assert audio.to_clock(1550) == 61_650  # past the jump
    assert audio.to_clock(1650) == 62_150  # past the chunks dropped
    assert audio.pauses == [[200, 400]]
    assert len(audio.clock) == 4


def test_the_replay_window_keeps_what_no_final_covers_and_at_most_replay_ms() -> None:
    audio = leg(replay_ms=300)
    feed(audio, 0, 25)
    send_all(audio)
    assert [start for start, _ in audio.replay()] == [200, 300, 400]  # 300 ms kept
    audio.forget_until(350)  # a final up to 350 ms: only what ends after it stays
    assert [start for start, _ in audio.replay()] == [300, 400]
    assert audio.replay_ms == 200


def test_a_chunk_not_yet_sent_stays_for_the_next_session() -> None:
    audio = leg()
    feed(audio, 0, 5)
    [chunk] = audio.ready_chunks()
    assert audio.ready_chunks() == [chunk]  # looked at, not taken
    audio.sent(chunk)
    assert audio.ready_chunks() == [] and audio.counters.sent_bytes == 5 * FRAME


def test_after_a_fatal_failure_audio_is_counted_as_untranscribed() -> None:
    audio = leg()
    feed(audio, 0, 10)
    audio.discard()
    feed(audio, 200, 5)
    audio.end()
    assert audio.ready_chunks() == []
    assert audio.counters.bytes_discarded == 15 * FRAME


def test_the_map_stays_bounded_when_every_chunk_breaks_continuity() -> None:
    clock = ClockMap()
    for n in range(MAX_SEGMENTS * 2):
        clock.sent(n * 100.0, n * 200.0, 100.0)  # every chunk after a dropped one
    assert len(clock) == MAX_SEGMENTS
    assert clock.to_clock(100.0 * (MAX_SEGMENTS * 2 - 1) + 50) == 200 * (MAX_SEGMENTS * 2 - 1) + 50


def test_unconfirmed_audio_starts_at_the_earliest_point_reported() -> None:
    audio = leg()
    assert audio.unconfirmed_from_ms is None  # every chunk sent was transcribed
    audio.unconfirmed(3000)
    audio.unconfirmed(5000)  # a later session's doubt does not shrink the first
    audio.unconfirmed(1200)
    assert audio.unconfirmed_from_ms == 1200


def test_no_byte_heard_while_paused_reaches_the_engine_or_the_recording() -> None:
    # Paused at 120 ms and resumed at 290 ms: chunks are 100 ms, so the frames of 200-280 ms
    # wait in the reframer, unsent, when the pause ends; they were heard while paused.
    audio = leg()
    tapped: list[bytes] = []
    audio.tap = lambda clock_ms, data: tapped.append(data)
    feed(audio, 0, 6, byte=1)  # 0-120 ms
    audio.set_paused(True)
    feed(audio, 120, 8, byte=2)  # 120-280 ms: a card read out, say
    audio.set_paused(False)
    feed(audio, 280, 16, byte=3)
    audio.end()
    sent = b""
    for chunk in audio.ready_chunks():
        audio.sent(chunk)
        sent += chunk.data
    assert 2 not in sent and all(2 not in data for data in tapped)
    assert sent.count(3) == 16 * FRAME
