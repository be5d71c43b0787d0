"""Huffman coding (Huffman 1952) of integer symbol streams, as Deep Compression's last stage.

Deep Compression (Han, Mao & Dally 2016, Sec. 4) Huffman-codes the cluster indices and the
sparse index gaps of each layer; both are far from uniform, which saves 20-30 % of the storage.

- Code lengths come from the classic heap construction: repeatedly merge the two least frequent
  subtrees; a symbol's length is its depth. Expected length L satisfies H <= L < H + 1 (H the
  entropy of the symbol distribution); L <= ceil(log2 K) for K symbols, so the coded stream is
  never longer than the fixed-width code (Huffman codes are optimal among prefix codes).
- The codes are *canonical* (Schwartz & Kallick 1964; DEFLATE, RFC 1951 Sec. 3.2.2): sorted by
  (length, symbol), code_{i+1} = (code_i + 1) << (len_{i+1} - len_i). The table therefore stores
  only one length per symbol (uint8), and encoder and decoder rebuild the same codes from it.
- Encoding is vectorised (numpy repeat + packbits, MSB first). Decoding is vectorised too:
  at every bit position p the next `maxlen` bits w_p are read; for canonical codes the length of
  the code starting there is the smallest l with w_p < limit_l = (first_l + count_l) << (maxlen - l)
  (one `searchsorted`), giving next(p) = p + len(p). The start of the i-th code is next^i(0),
  computed for all i at once by pointer doubling (log2 n rounds).
- A stream with one distinct symbol gets the 1-bit code "0"; an empty stream is zero bytes.
"""
from __future__ import annotations

import heapq

import numpy as np


class HuffmanError(ValueError):
    """Inconsistent code table or bit stream (a corrupted file)."""


def code_lengths(counts: np.ndarray) -> np.ndarray:
    """Huffman code length (bits) of each symbol from its count; 0 for symbols that never occur."""
    counts = np.asarray(counts, dtype=np.int64)
    lengths = np.zeros(counts.size, dtype=np.int64)
    used = np.flatnonzero(counts)
    if used.size == 1:
        lengths[used] = 1
    if used.size <= 1:
        return lengths
    # heap of (count, tie-break, members); merging adds one bit to every member's length
    heap = [(int(counts[s]), int(s), [int(s)]) for s in used]
    heapq.heapify(heap)
    while len(heap) > 1:
        c1, t1, m1 = heapq.heappop(heap)
        c2, t2, m2 = heapq.heappop(heap)
        lengths[m1 + m2] += 1
        heapq.heappush(heap, (c1 + c2, min(t1, t2), m1 + m2))
    if lengths.max() > 63:  # needs > Fib(64) ~ 1e13 symbols; uint64 windows hold 63 bits
        raise HuffmanError(f"code length {lengths.max()} > 63 bits")
    return lengths


def canonical_codes(lengths: np.ndarray) -> np.ndarray:
    """Canonical code (as an integer, read MSB first over `length` bits) of each symbol."""
    lengths = np.asarray(lengths, dtype=np.int64)
    codes = np.zeros(lengths.size, dtype=np.uint64)
    order = np.lexsort((np.arange(lengths.size), lengths))
    order = order[lengths[order] > 0]
    code, prev = 0, 0
    for s in order:  # one step per alphabet symbol (<= 2^b + 1), not per weight
        code <<= int(lengths[s]) - prev
        codes[s], prev = code, int(lengths[s])
        code += 1
    return codes


def _check_lengths(lengths: np.ndarray) -> None:
    """Kraft: sum 2^-l = 1 for a complete code (or a single 1-bit code)."""
    used = [int(l) for l in lengths[lengths > 0]]
    if used and (max(used) > 63 or (len(used) > 1 and
                                    sum(1 << (63 - l) for l in used) != 1 << 63)):
        raise HuffmanError("code lengths do not form a complete prefix code")


def encode(symbols: np.ndarray, alphabet: int) -> tuple[np.ndarray, np.ndarray, int]:
    """symbols in [0, alphabet) -> (lengths uint8 (alphabet,), packed bytes uint8, nbits)."""
    symbols = np.asarray(symbols, dtype=np.int64).ravel()
    lengths = code_lengths(np.bincount(symbols, minlength=alphabet))
    if symbols.size == 0:
        return lengths.astype(np.uint8), np.zeros(0, np.uint8), 0
    codes = canonical_codes(lengths)
    n_bits = lengths[symbols]
    total = int(n_bits.sum())
    start = np.cumsum(n_bits) - n_bits
    # bit j of the output belongs to symbol s = repeat(...)[j] at depth j - start[s]
    sym_code = np.repeat(codes[symbols], n_bits)
    sym_len = np.repeat(n_bits, n_bits)
    depth = np.arange(total, dtype=np.int64) - np.repeat(start, n_bits)
    shift = (sym_len - 1 - depth).astype(np.uint64)
    bits = ((sym_code >> shift) & np.uint64(1)).astype(np.uint8)
    return lengths.astype(np.uint8), np.packbits(bits), total


def decode(lengths: np.ndarray, packed: np.ndarray, nbits: int, count: int) -> np.ndarray:
    """Inverse of encode: `count` symbols (int64) from the first `nbits` bits of `packed`."""
    lengths = np.asarray(lengths, dtype=np.int64)
    if count == 0:
        return np.zeros(0, dtype=np.int64)
    _check_lengths(lengths)
    if not (lengths > 0).any() or nbits > 8 * len(packed) or nbits < count:
        raise HuffmanError("bit stream shorter than its symbol count")
    maxlen = int(lengths.max())
    codes = canonical_codes(lengths)
    bits = np.unpackbits(np.asarray(packed, dtype=np.uint8), count=nbits).astype(np.uint64)
    bits = np.concatenate([bits, np.zeros(maxlen, np.uint64)])
    window = np.zeros(nbits, dtype=np.uint64)  # next maxlen bits at every position
    for j in range(maxlen):
        window |= bits[j:j + nbits] << np.uint64(maxlen - 1 - j)
    # canonical decoding: codes of length l occupy [first_l, first_l + count_l) << (maxlen - l)
    order = np.lexsort((np.arange(lengths.size), lengths))
    order = order[lengths[order] > 0]
    lens_sorted = lengths[order]
    limits = (codes[order] + np.uint64(1)) << (maxlen - lens_sorted).astype(np.uint64)
    rank = np.searchsorted(limits, window, side="right")  # index in canonical order
    rank = np.minimum(rank, order.size - 1)
    sym_at = order[rank]
    length_at = lens_sorted[rank]
    valid = (window >> (maxlen - length_at).astype(np.uint64)) == codes[sym_at]
    # pointer doubling: start of code i = next^i(0); position nbits is the absorbing end
    nxt = np.append(np.minimum(np.arange(nbits) + length_at, nbits), nbits)
    pos = np.zeros(count, dtype=np.int64)
    i, k = np.arange(count), 0
    while (1 << k) < count:
        sel = (i >> k) & 1 == 1
        pos[sel] = nxt[pos[sel]]
        nxt = nxt[nxt]
        k += 1
    if pos[-1] >= nbits or not valid[pos].all() or pos[-1] + length_at[pos[-1]] != nbits:
        raise HuffmanError("bit stream does not decode to the declared symbol count")
    return sym_at[pos].astype(np.int64)


def coded_bits(symbols: np.ndarray, alphabet: int) -> int:
    """Length in bits of the Huffman-coded stream (without the table)."""
    symbols = np.asarray(symbols, dtype=np.int64).ravel()
    counts = np.bincount(symbols, minlength=alphabet)
    return int((code_lengths(counts) * counts).sum())
