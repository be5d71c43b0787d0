"""Sparse storage with relative indices, as Deep Compression stores a pruned layer.

Han, Mao & Dally 2016, Sec. 2 and Fig. 2: the non-zeros of a flattened weight tensor are stored
in order with, instead of their absolute position, the *difference* to the previous stored
position, written with a fixed width of g bits (paper: g = 8 for conv, 5 for FC layers). A g-bit
code c in [0, 2^g) means a step of c + 1 positions (the first step counts from position -1), so
steps of 1 .. 2^g fit. When the gap to the next non-zero is longer than 2^g, *filler zeros* are
inserted: entries that step the full 2^g positions and carry the value zero.

For positions p_1 < ... < p_n and d_i = p_i - p_{i-1} (p_0 = -1):
    fillers before entry i  f_i = floor((d_i - 1) / 2^g),      code of entry i  = d_i - f_i 2^g - 1
and the decoder recovers every stored position as cumsum(code + 1) - 1. Everything is vectorised
(numpy repeat / cumsum), no loop over weights.
"""
from __future__ import annotations

import numpy as np


class SparseError(ValueError):
    """Relative indices that leave the tensor (a corrupted file)."""


def encode_positions(positions: np.ndarray, gap_bits: int) -> tuple[np.ndarray, np.ndarray]:
    """Sorted flat positions -> (codes in [0, 2^g) per stored entry, is_filler bool per entry).

    The stored entries are the non-zeros in order with the filler zeros interleaved; the caller
    stores a value for each entry (zero / the reserved zero symbol for a filler)."""
    p = np.asarray(positions, dtype=np.int64).ravel()
    if p.size and (p[0] < 0 or (np.diff(p) <= 0).any()):
        raise ValueError("positions must be non-negative and strictly increasing")
    span = 1 << gap_bits
    d = np.diff(p, prepend=-1)
    fill = (d - 1) // span
    codes = np.full(p.size + int(fill.sum()), span - 1, dtype=np.int64)
    real = np.cumsum(fill + 1) - 1                 # index of each real entry among all entries
    codes[real] = d - fill * span - 1
    is_filler = np.ones(codes.size, dtype=bool)
    is_filler[real] = False
    return codes, is_filler


def decode_positions(codes: np.ndarray, numel: int) -> np.ndarray:
    """Codes of all stored entries -> their flat positions (fillers included)."""
    codes = np.asarray(codes, dtype=np.int64)
    pos = np.cumsum(codes + 1) - 1
    if pos.size and pos[-1] >= numel:
        raise SparseError(f"relative indices reach position {pos[-1]} of a {numel}-element tensor")
    return pos


def to_sparse(flat: np.ndarray, keep: np.ndarray, gap_bits: int, filler_value=0):
    """(values of all stored entries, gap codes): flat[keep] with filler zeros interleaved."""
    codes, is_filler = encode_positions(np.flatnonzero(keep), gap_bits)
    values = np.full(codes.size, filler_value, dtype=np.asarray(flat).dtype)
    values[~is_filler] = np.asarray(flat)[np.asarray(keep, dtype=bool)]
    return values, codes


def from_sparse(values: np.ndarray, codes: np.ndarray, numel: int, zero=0) -> np.ndarray:
    """Dense flat array of `numel` entries: values at the decoded positions, `zero` elsewhere."""
    values = np.asarray(values)
    if values.size != np.asarray(codes).size:
        raise SparseError(f"{values.size} values for {np.asarray(codes).size} relative indices")
    out = np.full(numel, zero, dtype=values.dtype)
    out[decode_positions(codes, numel)] = values
    return out
