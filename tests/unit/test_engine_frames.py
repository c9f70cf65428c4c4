"""Audio frames as the engines' client writes them, and where their masks come from: pure."""

from __future__ import annotations

import os

import pytest
from websockets.frames import Frame, Opcode
from websockets.streams import StreamReader

from bridge.stt.transport import MASK_POOL_BYTES, MaskPool, encode_binary_frame


def parse_client_frame(data: bytes) -> Frame:
    """websockets' own server-side parser: what an engine makes of our bytes."""
    reader = StreamReader()
    reader.feed_data(data)
    parser = Frame.parse(reader.read_exact, mask=True, max_size=None)
    try:
        next(parser)
    except StopIteration as done:
        frame: Frame = done.value
        assert not reader.buffer  # nothing left over
        return frame
    raise AssertionError("the frame is incomplete")


@pytest.mark.parametrize("size", [0, 1, 125, 126, 800, 65535, 65536, 200_000])
def test_a_frame_of_any_length_parses_back_to_its_payload(size: int) -> None:
    payload = bytes(range(256)) * (size // 256) + bytes(size % 256)
    frame = parse_client_frame(encode_binary_frame(payload, b"\x12\x34\x56\x78"))
    assert frame.opcode is Opcode.BINARY
    assert frame.fin
    assert bytes(frame.data) == payload


def test_the_payload_on_the_wire_is_masked() -> None:
    payload = b"\x00" * 8
    wire = encode_binary_frame(payload, b"\xa1\xb2\xc3\xd4")
    assert wire == b"\x82\x88\xa1\xb2\xc3\xd4" + b"\xa1\xb2\xc3\xd4" * 2


def test_masks_are_consecutive_slices_of_one_random_draw_per_pool(
        monkeypatch: pytest.MonkeyPatch) -> None:
    draws: list[bytes] = []

    def urandom(size: int) -> bytes:
        draw = bytes((len(draws) * 7 + n) % 256 for n in range(size))
        draws.append(draw)
        return draw

    monkeypatch.setattr(os, "urandom", urandom)
    pool = MaskPool()
    per_pool = MASK_POOL_BYTES // 4
    masks = [pool.take() for _ in range(per_pool + 3)]
    assert len(draws) == 2  # one system call per 1024 frames, not one per frame
    assert b"".join(masks[:per_pool]) == draws[0]
    assert b"".join(masks[per_pool:]) == draws[1][:12]
    assert all(len(mask) == 4 for mask in masks)
