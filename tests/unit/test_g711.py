"""G.711 against tables computed here from the ITU-T G.711 definition, not only round trips."""

import pytest

from bridge.codecs import g711
from bridge.events import AudioEncoding


def itu_ulaw_decode(code: int) -> int:
    """µ-law: bits are sent inverted; 3-bit segment, 4-bit step; bias 33 in 14-bit units."""
    code = ~code & 0xFF
    sign, segment, step = code & 0x80, (code >> 4) & 0x07, code & 0x0F
    magnitude = (((step << 3) + 0x84) << segment) - 0x84
    return -magnitude if sign else magnitude


def itu_alaw_decode(code: int) -> int:
    """A-law: even bits inverted (XOR 0x55); segment 0 is linear; sign bit 1 means positive."""
    code ^= 0x55
    segment, step = (code >> 4) & 0x07, code & 0x0F
    magnitude = (step << 4) + 8 if segment == 0 else ((step << 4) + 0x108) << (segment - 1)
    return magnitude if code & 0x80 else -magnitude


ULAW_TABLE = [itu_ulaw_decode(c) for c in range(256)]
ALAW_TABLE = [itu_alaw_decode(c) for c in range(256)]


def test_reference_tables_have_the_known_extremes() -> None:
    assert max(ULAW_TABLE) == 32124 and min(ULAW_TABLE) == -32124
    assert max(ALAW_TABLE) == 32256 and min(ALAW_TABLE) == -32256
    assert ULAW_TABLE[0xFF] == 0 and ULAW_TABLE[0x7F] == 0
    assert ALAW_TABLE[0xD5] == 8 and ALAW_TABLE[0x55] == -8


@pytest.mark.parametrize(("encoding", "table"), [(AudioEncoding.PCMU, ULAW_TABLE),
                                                 (AudioEncoding.PCMA, ALAW_TABLE)])
def test_decoding_matches_the_definition_for_every_code(encoding: AudioEncoding,
                                                       table: list[int]) -> None:
    decoded = g711.decode(encoding, bytes(range(256)))
    values = [int.from_bytes(decoded[i:i + 2], "little", signed=True) for i in range(0, 512, 2)]
    assert values == table


@pytest.mark.parametrize(("encoding", "table"), [(AudioEncoding.PCMU, ULAW_TABLE),
                                                 (AudioEncoding.PCMA, ALAW_TABLE)])
def test_every_reconstruction_level_encodes_back_to_its_code(encoding: AudioEncoding,
                                                             table: list[int]) -> None:
    pcm = b"".join(v.to_bytes(2, "little", signed=True) for v in table)
    codes = g711.encode(encoding, pcm)
    for code, value in zip(codes, table, strict=True):
        assert table[code] == value  # µ-law has two codes for zero; both decode to 0


@pytest.mark.parametrize(("encoding", "table"), [(AudioEncoding.PCMU, ULAW_TABLE),
                                                 (AudioEncoding.PCMA, ALAW_TABLE)])
def test_every_16_bit_sample_lands_in_its_decision_interval(encoding: AudioEncoding,
                                                            table: list[int]) -> None:
    """The quantiser picks one of the two levels around a sample (G.711 decision intervals)."""
    levels = sorted(set(table))
    samples = range(-32768, 32768, 7)
    pcm = b"".join(s.to_bytes(2, "little", signed=True) for s in samples)
    codes = g711.encode(encoding, pcm)
    for sample, code in zip(samples, codes, strict=True):
        below = max((lv for lv in levels if lv <= sample), default=levels[0])
        above = min((lv for lv in levels if lv >= sample), default=levels[-1])
        assert table[code] in (below, above), (sample, table[code])


def test_silence_is_the_zero_code_of_each_law() -> None:
    assert g711.silence(AudioEncoding.PCMU, 2) == b"\xff" * 16
    assert g711.silence(AudioEncoding.PCMA, 1) == b"\xd5" * 8
    assert set(g711.decode(AudioEncoding.PCMU, g711.silence(AudioEncoding.PCMU, 5))) == {0}
