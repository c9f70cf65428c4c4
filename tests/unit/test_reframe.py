"""The per-leg audio pipeline: byte identity, chunking, gap filling, reordering, clock."""

from collections.abc import Sequence
from itertools import pairwise

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.codecs.reframe import Chunk, Reframer
from bridge.events import AudioEncoding

FRAME = 160  # 20 ms of G.711


def frames(count: int, first_ts: int = 0) -> list[tuple[bytes, int]]:
    """Distinct 20 ms frames (each filled with its own byte) with their timestamps."""
    return [(bytes([n % 200 + 1]) * FRAME, first_ts + 20 * n) for n in range(count)]


def stamped(reframer: Reframer, items: Sequence[tuple[bytes, int | None]]) -> list[Chunk]:
    chunks: list[Chunk] = []
    for payload, ts in items:
        chunks += reframer.push(payload, ts)
    return chunks + reframer.flush()


def run(reframer: Reframer, items: Sequence[tuple[bytes, int | None]]) -> list[bytes]:
    return [chunk.data for chunk in stamped(reframer, items)]


def test_without_gaps_the_bytes_out_are_the_bytes_in_cut_into_chunks() -> None:
    items = frames(23, first_ts=102)
    reframer = Reframer(AudioEncoding.PCMU, chunk_ms=100)
    chunks = run(reframer, items)
    assert b"".join(chunks) == b"".join(p for p, _ in items)
    assert [len(c) for c in chunks] == [800] * 4 + [480]
    assert reframer.stats.gaps_filled == 0
    assert reframer.origin_ms == 102 and reframer.position_ms == 102 + 460


def test_chunks_are_emitted_as_soon_as_complete() -> None:
    reframer = Reframer(AudioEncoding.PCMU, chunk_ms=40)
    out = [len(reframer.push(p, t)) for p, t in frames(4)]
    assert out == [0, 1, 0, 1]


@pytest.mark.parametrize(("encoding", "silence"), [(AudioEncoding.PCMU, 0xFF),
                                                   (AudioEncoding.PCMA, 0xD5)])
def test_a_lost_frame_becomes_codec_silence_of_its_length(encoding: AudioEncoding,
                                                         silence: int) -> None:
    items = frames(10)
    del items[3]  # frame at 60 ms lost
    reframer = Reframer(encoding, chunk_ms=20, reorder_window=2)
    out = b"".join(run(reframer, items))
    expected = b"".join(p for p, _ in items[:3]) + bytes([silence]) * FRAME + b"".join(
        p for p, _ in items[3:])
    assert out == expected
    assert reframer.stats.gaps_filled == 1 and reframer.stats.gap_fill_ms == 20
    assert reframer.position_ms == 200  # the clock counts the lost frame


def test_frames_out_of_order_within_the_window_are_put_back_in_order() -> None:
    items = frames(8)
    shuffled = [items[0], items[2], items[1], items[4], items[5], items[3], items[6], items[7]]
    reframer = Reframer(AudioEncoding.PCMA, chunk_ms=20, reorder_window=3)
    assert b"".join(run(reframer, shuffled)) == b"".join(p for p, _ in items)
    assert reframer.stats.reordered == 3 and reframer.stats.gaps_filled == 0


def test_a_frame_later_than_the_window_is_dropped_and_its_hole_filled() -> None:
    items = frames(8)
    late = [items[0], *items[2:6], items[1], *items[6:]]
    reframer = Reframer(AudioEncoding.PCMU, chunk_ms=20, reorder_window=2)
    out = b"".join(run(reframer, late))
    assert len(out) == 8 * FRAME
    assert out[FRAME:2 * FRAME] == b"\xff" * FRAME
    assert reframer.stats.late_dropped == 1 and reframer.stats.gaps_filled == 1


def test_duplicates_are_dropped() -> None:
    items = frames(3)
    reframer = Reframer(AudioEncoding.PCMU, chunk_ms=20)
    assert b"".join(run(reframer, [items[0], items[1], items[1], items[2]])) == b"".join(
        p for p, _ in items)
    assert reframer.stats.late_dropped == 1


def test_timestamp_jitter_is_neither_gap_nor_overlap() -> None:
    items = [(p, ts + (3 if n % 2 else -2)) for n, (p, ts) in enumerate(frames(6, 100))]
    reframer = Reframer(AudioEncoding.PCMU, chunk_ms=20)
    assert b"".join(run(reframer, items)) == b"".join(p for p, _ in items)
    assert reframer.stats.gaps_filled == 0 and reframer.stats.late_dropped == 0


def test_a_huge_jump_is_filled_up_to_the_bound_and_the_clock_jumps_the_rest() -> None:
    items = [*frames(2), (b"\x07" * FRAME, 60_040)]
    reframer = Reframer(AudioEncoding.PCMU, chunk_ms=30, reorder_window=0, max_gap_fill_ms=1000)
    chunks = stamped(reframer, items)
    assert len(b"".join(c.data for c in chunks)) == 3 * FRAME + 1000 * 8
    assert reframer.stats.skipped_ms == 60_000 - 1000
    assert reframer.position_ms == 60_060
    # Each chunk says where it starts on the clock; none spans the jump: the silence before
    # it leaves as a shorter chunk, and the frame after it starts past the jump.
    clock = [(c.clock_ms, len(c.data) // 8) for c in chunks]
    assert clock[0] == (0, 30) and clock[-1] == (60_040, 20)
    assert all(a + length == b for (a, length), (b, _) in pairwise(clock[:-1]))
    assert clock[-2][0] + clock[-2][1] == 1040  # the filled silence ends at 40 + 1000


def test_frames_without_timestamps_pass_through_in_arrival_order() -> None:
    reframer = Reframer(AudioEncoding.PCMU, chunk_ms=20)
    assert run(reframer, [(b"\x01" * 100, None), (b"\x02" * 100, None)]) == [
        b"\x01" * 100 + b"\x02" * 60, b"\x02" * 40]


def test_odd_sized_frames_keep_the_clock_in_samples() -> None:
    reframer = Reframer(AudioEncoding.PCMU, chunk_ms=20)
    run(reframer, [(b"\x01" * 164, 0), (b"\x01" * 156, 20)])
    assert reframer.position_ms == 40 and reframer.stats.gaps_filled == 0


@pytest.mark.parametrize("chunk_ms", [19, 1001])
def test_chunk_size_is_bounded(chunk_ms: int) -> None:
    with pytest.raises(ValueError, match="chunk_ms"):
        Reframer(AudioEncoding.PCMU, chunk_ms=chunk_ms)


@given(st.data())
@settings(max_examples=200, deadline=None)
def test_any_mix_of_order_swaps_and_losses_comes_out_whole_and_in_order(
        data: st.DataObject) -> None:
    """In-order frames take the fast path, the rest the reordering one: together they must
    give the stream sorted by time, each lost frame as silence, whatever the mix."""
    count = data.draw(st.integers(4, 60))
    items = frames(count)
    lost = set(data.draw(st.sets(st.integers(1, count - 2), max_size=count // 4)))
    sent = [item for n, item in enumerate(items) if n not in lost]
    for n in range(1, len(sent) - 1, 3):  # some neighbours swapped: one frame late each
        if data.draw(st.booleans()):
            sent[n], sent[n + 1] = sent[n + 1], sent[n]
    chunk_ms = data.draw(st.sampled_from([20, 40, 100]))
    reframer = Reframer(AudioEncoding.PCMU, chunk_ms=chunk_ms, reorder_window=4)
    chunks = run(reframer, sent)
    expected = b"".join(b"\xff" * FRAME if n in lost else payload
                        for n, (payload, _) in enumerate(items))
    assert b"".join(chunks) == expected
    assert all(len(c) == chunk_ms * 8 for c in chunks[:-1])
    assert reframer.position_ms == 20 * count
    clocks = [c.clock_ms for c in stamped(Reframer(AudioEncoding.PCMU, chunk_ms=chunk_ms,
                                                   reorder_window=4), sent)]
    assert clocks == [n * chunk_ms for n in range(len(chunks))]  # no jump: contiguous


def test_silence_filled_stays_within_the_audio_received() -> None:
    """Tiny frames far apart: each hole would be filled up to the bound; the total is not."""
    reframer = Reframer(AudioEncoding.PCMU, chunk_ms=20, reorder_window=0,
                        max_gap_fill_ms=1000)
    out = run(reframer, [(b"\x01" * 8, n * 5000) for n in range(200)])  # 1 ms every 5 s
    received_ms = 200
    assert reframer.stats.gap_fill_ms <= received_ms + 1000
    assert len(b"".join(out)) <= (received_ms * 2 + 1000) * 8
    assert reframer.position_ms >= 199 * 5000  # the clock still counts every hole


@pytest.mark.parametrize("timestamps", [True, False])
def test_linear_pcm_stays_on_whole_samples_whatever_the_frames_length(
        timestamps: bool) -> None:
    # A stray byte would shift every later 16-bit sample by half: the engine would hear
    # noise (and transcribe, so redact, nothing) while the recording kept the audio for
    # anyone who shifts it back.
    reframer = Reframer(AudioEncoding.L16, sample_rate=8000, chunk_ms=20)
    speech = bytes(range(1, 161)) * 2  # 20 ms at 8 kHz, 16-bit
    out = run(reframer, [(b"\x7f", 0 if timestamps else None),
                         (speech, 0 if timestamps else None),
                         (speech + b"\x7f", 20 if timestamps else None),
                         (speech, 40 if timestamps else None)])
    assert b"".join(out) == speech * 3
    assert all(len(chunk) % 2 == 0 for chunk in out)
