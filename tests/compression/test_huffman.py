"""Huffman coding: exact round trips, optimality bounds, canonical table, edge cases."""
import math

import numpy as np
import pytest

from lightning_modules.compression.coding import huffman as H


def entropy_bits(s, alphabet):
    p = np.bincount(s, minlength=alphabet) / s.size
    p = p[p > 0]
    return float(-(p * np.log2(p)).sum() * s.size)


STREAMS = {
    "uniform32": lambda r: r.integers(0, 32, 5000),
    "uniform256": lambda r: r.integers(0, 256, 20000),
    "geometric": lambda r: np.minimum(r.geometric(0.08, 20000) - 1, 31),
    "zipf": lambda r: np.minimum(r.zipf(1.5, 20000) - 1, 255),
    "two": lambda r: (r.random(3000) < 0.99).astype(np.int64),
}


@pytest.mark.parametrize("kind", sorted(STREAMS))
def test_round_trip_and_bounds(kind):
    rng = np.random.default_rng(1)
    s = STREAMS[kind](rng)
    alphabet = 256 if s.max() >= 32 else 32
    lengths, packed, nbits = H.encode(s, alphabet)
    assert lengths.dtype == np.uint8 and lengths.size == alphabet  # the table: one length each
    assert np.array_equal(H.decode(lengths, packed, nbits, s.size), s)
    assert packed.size == math.ceil(nbits / 8)
    assert nbits == H.coded_bits(s, alphabet)
    assert nbits <= s.size * math.ceil(math.log2(alphabet))  # never longer than fixed width
    h = entropy_bits(s, alphabet)
    assert h - 1e-6 <= nbits < h + s.size  # H <= L < H + 1 per symbol


def test_skewed_stream_is_much_shorter_than_fixed_width():
    s = np.minimum(np.random.default_rng(2).geometric(0.3, 10000) - 1, 31)
    _, _, nbits = H.encode(s, 32)
    assert nbits < 0.6 * 5 * s.size


def test_lengths_of_a_known_distribution():
    # counts 5, 2, 1, 1: Huffman merges c+d (2), then b+(cd) (4), then a: lengths 1, 2, 3, 3
    s = np.array([0] * 5 + [1] * 2 + [2, 3])
    assert H.code_lengths(np.bincount(s)).tolist() == [1, 2, 3, 3]
    codes = H.canonical_codes(np.array([1, 2, 3, 3]))
    assert codes.tolist() == [0b0, 0b10, 0b110, 0b111]  # canonical: consecutive per length


def test_canonical_codes_are_prefix_free_and_complete():
    lengths = H.code_lengths(np.bincount(np.random.default_rng(3).zipf(1.3, 5000) % 64, minlength=64))
    codes = H.canonical_codes(lengths)
    words = [format(int(c), f"0{int(l)}b") for c, l in zip(codes, lengths) if l]
    assert len(set(words)) == len(words)
    assert not any(a != b and b.startswith(a) for a in words for b in words)
    assert sum(2.0 ** -len(w) for w in words) == 1.0  # Kraft equality: a full tree


def test_single_symbol_and_empty_streams():
    s = np.full(7, 5)
    lengths, packed, nbits = H.encode(s, 8)
    assert nbits == 7 and lengths.tolist() == [0, 0, 0, 0, 0, 1, 0, 0]
    assert np.array_equal(H.decode(lengths, packed, nbits, 7), s)
    lengths, packed, nbits = H.encode(np.array([], dtype=np.int64), 8)
    assert nbits == 0 and packed.size == 0 and not lengths.any()
    assert H.decode(lengths, packed, nbits, 0).size == 0


def test_inconsistent_streams_raise():
    s = np.random.default_rng(4).integers(0, 16, 1000)
    lengths, packed, nbits = H.encode(s, 16)
    with pytest.raises(H.HuffmanError):
        H.decode(lengths, packed[: len(packed) // 2], nbits, s.size)  # truncated
    with pytest.raises(H.HuffmanError):
        H.decode(lengths, packed, nbits - 3, s.size)  # fewer bits than the symbols need
    bad = lengths.copy()
    bad[0] += 1  # breaks Kraft's equality
    with pytest.raises(H.HuffmanError):
        H.decode(bad, packed, nbits, s.size)
