"""Relative-index sparse storage (Deep Compression Fig. 2): gaps, filler zeros, round trips."""
import numpy as np
import pytest

from lightning_modules.compression.coding.sparse import (SparseError, decode_positions, encode_positions,
                                                  from_sparse, to_sparse)


def test_paper_style_example_with_a_filler():
    # 3-bit gaps step 1..8; positions 1, 4, 15: steps 2, 3, 11 -> 11 > 8 needs one filler (8)
    codes, filler = encode_positions(np.array([1, 4, 15]), 3)
    assert codes.tolist() == [1, 2, 7, 2]
    assert filler.tolist() == [False, False, True, False]
    assert decode_positions(codes, 16).tolist() == [1, 4, 12, 15]  # the filler sits at 12


def test_gap_of_exactly_the_span_needs_no_filler_and_one_more_does():
    assert encode_positions(np.array([7]), 3)[0].tolist() == [7]          # step 8 fits
    assert encode_positions(np.array([8]), 3)[0].tolist() == [7, 0]       # step 9: filler + 1
    assert encode_positions(np.array([0, 40]), 3)[0].tolist() == [0, 7, 7, 7, 7, 7]  # 40 = 5*8


@pytest.mark.parametrize("density", [0.0, 0.01, 0.08, 0.5, 1.0])
@pytest.mark.parametrize("gap_bits", [1, 3, 5, 8])
def test_round_trip_random(density, gap_bits):
    rng = np.random.default_rng(int(density * 100) + gap_bits)
    n = 5000
    w = rng.standard_normal(n).astype(np.float32)
    keep = rng.random(n) < density
    keep[[0, n - 1]] = density > 0  # the first and last positions
    values, codes = to_sparse(w, keep, gap_bits)
    assert codes.min(initial=0) >= 0 and codes.max(initial=0) < 2 ** gap_bits
    d = np.diff(np.flatnonzero(keep), prepend=-1)
    assert values.size == keep.sum() + ((d - 1) // 2 ** gap_bits).sum()  # one entry per filler
    _, filler = encode_positions(np.flatnonzero(keep), gap_bits)
    assert not values[filler].any() and np.array_equal(values[~filler], w[keep])
    dense = from_sparse(values, codes, n)
    assert np.array_equal(dense, np.where(keep, w, 0))


def test_fillers_carry_zero():
    values, codes = to_sparse(np.arange(1, 101, dtype=np.float32), np.isin(np.arange(100), [0, 99]), 4)
    assert values.tolist() == [1.0] + [0.0] * 6 + [100.0]  # 98 = 6*16 + 2: six fillers


def test_indices_leaving_the_tensor_raise():
    with pytest.raises(SparseError):
        decode_positions(np.array([7, 7, 7]), 20)
    with pytest.raises(SparseError):
        from_sparse(np.ones(2, np.float32), np.array([1, 2, 3]), 20)
