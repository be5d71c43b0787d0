"""Packed export: quantized weights at their bitwidth, everything else float32, in ONE file.

For each quantized layer (a QConv2d/QLinear with a weight quantizer) the weight the forward pass
uses, W_q = weight_quant(W) in eval mode, is factored into codes and a codebook:

- per-row (per output channel) codebook: row c takes L_c distinct values; codes are the value's
  rank in its row, at b = ceil(log2 max_c L_c) bits (XNOR/BWN: b = 1, a codebook {-a_c, +a_c});
- or one codebook for the tensor (DoReFa, TWN, TTQ, pow2);
- or integer multiples of a per-row scale (PTQ's per-channel grids): row c is s_c q with q
  integers and s_c the quantizer's `scale` (else the row's smallest non-zero |value|), stored as one table of the q's plus the C scales
  (kept only when s_c q rebuilds the row exactly), instead of C codebooks of up to 2^b values;
  whichever file is smallest;
- a codebook symmetric about 0 ({-a, ..., a}, e.g. alpha * {-1, +1}) stores its positive half;
- raw float32 when no code is smaller (a layer that is not quantized at eval time, e.g.
  stochastic BinaryConnect's real-valued test-time weights).

Codes are packed MSB-first, 8 one-bit codes per byte (`numpy.packbits`), k-bit codes as k bit
planes -> ceil(n k / 8) bytes. All codes share one uint8 tensor and all float32 values (codebooks,
biases, BatchNorm, skipped full-precision layers, activation-quantizer state) one float32
tensor, in a container.py file (kind "packed"; its header of names and shapes grows with the
number of state-dict entries, not with their size).
`load_packed` puts W_q back as the layer's weight and drops its weight quantizer: predictions
are bit-identical to the trained model in eval mode; activation quantizers work as before.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .. import container
from ..errors import FileFormatError
from ..method import load_state
from .qlayers import QLayer

KIND = "packed"  # container.py kind (before it: a torch.save dict of format "lwb-packed-1")


def pack_bits(codes: np.ndarray, k: int) -> np.ndarray:
    """Non-negative integer codes < 2^k -> uint8 array of ceil(n k / 8) bytes (MSB first)."""
    c = np.asarray(codes, dtype=np.uint64).ravel()
    planes = (c[:, None] >> np.arange(k - 1, -1, -1, dtype=np.uint64)) & np.uint64(1)
    return np.packbits(planes.astype(np.uint8).ravel())


def unpack_bits(buf: np.ndarray, k: int, n: int) -> np.ndarray:
    """Inverse of pack_bits: n codes of k bits (int64)."""
    planes = np.unpackbits(np.asarray(buf, dtype=np.uint8), count=n * k).reshape(n, k)
    return (planes.astype(np.int64) << np.arange(k - 1, -1, -1, dtype=np.int64)).sum(axis=1)


def _bits(levels: int) -> int:
    return max(1, math.ceil(math.log2(levels)))


def factor_rows(w2d: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row codebook: (codes (C, n) int64, table (C, L) float32) with table.gather(1, codes)
    == w2d exactly; rows with fewer than L values are padded with their largest value."""
    s, perm = w2d.sort(dim=1)
    new = torch.ones_like(s, dtype=torch.bool)
    new[:, 1:] = s[:, 1:] != s[:, :-1]
    rank = new.long().cumsum(1) - 1
    table = s[:, -1:].expand(-1, int(rank[:, -1].max()) + 1).clone().scatter_(1, rank, s)
    return torch.empty_like(rank).scatter_(1, perm, rank), table


def _halve(table: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """The positive half of a codebook symmetric about 0 (sorted rows), else the table."""
    L = table.shape[1]
    if L % 2 == 0 and torch.equal(table, -table.flip(1)):
        return table[:, L // 2:], True
    return table, False


def row_scales(w2d: torch.Tensor, hint: torch.Tensor | None = None) -> torch.Tensor | None:
    """s (C,) with w2d == s[:, None] * round(w2d / s[:, None]) exactly, or None: per row, the
    quantizer's own scale (`hint`, its `scale` buffer) where it rebuilds the row, else the row's
    smallest non-zero |value|."""
    a = w2d.abs()
    s = torch.where(a > 0, a, torch.inf).amin(dim=1)
    s = torch.where(torch.isfinite(s), s, torch.ones_like(s))
    if hint is not None and hint.numel() in (1, len(s)):
        h = hint.detach().float().cpu().reshape(-1).expand(len(s))
        fits = (h[:, None] * torch.round(w2d / h[:, None]) == w2d).all(dim=1) & (h > 0)
        s = torch.where(fits, h, s)
    ok = torch.equal(s[:, None] * torch.round(w2d / s[:, None]), w2d)
    return s if ok else None


def encode(w: torch.Tensor, scale: torch.Tensor | None = None) -> tuple[np.ndarray, torch.Tensor, dict]:
    """W_q -> (packed codes, codebook, meta), choosing per-row or per-tensor codebooks, or a
    per-tensor table of integers times per-row scales."""
    w2d = w.detach().float().cpu().reshape(w.shape[0], -1)
    codes_r, table_r = factor_rows(w2d)
    table_t, codes_t = torch.unique(w2d, sorted=True, return_inverse=True)
    options = [(codes_r, table_r, None), (codes_t, table_t[None], None)]
    if (s := row_scales(w2d, scale)) is not None:
        table_q, codes_q = torch.unique(torch.round(w2d / s[:, None]), sorted=True, return_inverse=True)
        options.append((codes_q, table_q[None], s))
    costs = []
    for codes, table, scales in options:
        stored, sym = _halve(table)
        bits = _bits(table.shape[1])
        extra = 0 if scales is None else 32 * scales.numel()
        costs.append((w2d.numel() * bits + 32 * stored.numel() + extra, codes, table, stored, sym, bits, scales))
    cost, codes, table, stored, sym, bits, scales = min(costs, key=lambda o: o[0])
    if cost >= 32 * w2d.numel():  # not quantized at eval (stochastic BC's real weights): raw float32
        return np.zeros(0, np.uint8), w2d.reshape(-1), {"shape": list(w.shape), "raw": True}
    meta = {"shape": list(w.shape), "bits": bits, "rows": table.shape[0],
            "levels": table.shape[1], "symmetric": sym}
    if scales is not None:  # the table, then the row scales
        meta["scaled"] = True
        stored = torch.cat([stored.reshape(-1), scales])
    return pack_bits(codes.numpy(), bits), stored.reshape(-1), meta


def decode(packed: np.ndarray, stored: torch.Tensor, meta: dict) -> torch.Tensor:
    if meta.get("raw"):
        return stored.reshape(meta["shape"]).clone()
    rows, shape = meta["rows"], meta["shape"]
    scales = None
    if meta.get("scaled"):
        stored, scales = stored[:-shape[0]], stored[-shape[0]:]
    table = stored.reshape(rows, -1)
    if meta["symmetric"]:
        table = torch.cat([-table.flip(1), table], dim=1)
    n = math.prod(shape)
    codes = torch.from_numpy(unpack_bits(packed, meta["bits"], n)).reshape(shape[0], -1)
    if scales is not None:
        return (scales[:, None] * table[0][codes]).reshape(shape)
    if rows == 1:
        return table[0][codes].reshape(shape)
    return table.gather(1, codes).reshape(shape)


def quantized_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(n, m) for n, m in model.named_modules()
            if isinstance(m, QLayer) and m.weight_quant is not None]


def export_packed(model: nn.Module, path: str | Path) -> Path:
    """Write the packed file (see the module docstring); returns its path."""
    path = Path(path)
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            qweights = {n: m.quantized_weight() for n, m in quantized_layers(model)}
    finally:
        model.train(was)
    codes, floats, layers, tensors, other, pos_c, pos_f = [], [], [], [], {}, 0, 0
    for name, w in qweights.items():
        scale = getattr(model.get_submodule(name).weight_quant, "scale", None)
        packed, stored, meta = encode(w, scale if isinstance(scale, torch.Tensor) else None)
        meta.update(name=name, codes=[pos_c, packed.size], table=[pos_f, stored.numel()])
        codes.append(packed)
        floats.append(stored)
        layers.append(meta)
        pos_c, pos_f = pos_c + packed.size, pos_f + stored.numel()
    dropped = tuple(f"{n}.weight_quant." for n in qweights)
    for key, t in model.state_dict().items():
        if key.removesuffix(".weight") in qweights or key.startswith(dropped):
            continue
        t = t.detach().cpu()
        if t.dtype == torch.float32:
            tensors.append([key, list(t.shape), pos_f, t.numel()])
            floats.append(t.reshape(-1))
            pos_f += t.numel()
        else:
            other[key] = t.clone()
    return container.write(path, KIND, {
        "layers": layers, "tensors": tensors, "other": other,
        "codes": torch.from_numpy(np.concatenate(codes or [np.zeros(0, np.uint8)])),
        "floats": torch.cat(floats) if floats else torch.zeros(0)})


def load_packed(model: nn.Module, path: str | Path) -> nn.Module:
    """Load a packed file into `model` (already quantized by the same method: same layer names).
    Each packed layer gets W_q as its weight and no weight quantizer; everything else is loaded
    with strict key checking."""
    blob = container.read(path, KIND)
    codes, floats = blob["codes"].numpy(), blob["floats"]
    state, layers = dict(blob["other"]), {}
    try:
        for meta in blob["layers"]:
            (c0, cn), (f0, fn) = meta["codes"], meta["table"]
            layer = model.get_submodule(meta["name"])
            if not isinstance(layer, QLayer):
                raise ValueError(f"{meta['name']} is a {type(layer).__name__}, not a quantized layer")
            layers[meta["name"]] = layer
            state[meta["name"] + ".weight"] = decode(codes[c0:c0 + cn], floats[f0:f0 + fn], meta)
        for key, shape, f0, fn in blob["tensors"]:
            state[key] = floats[f0:f0 + fn].reshape(shape)
    except (AttributeError, ValueError, RuntimeError, KeyError, TypeError) as err:
        raise FileFormatError(f"{path}: does not match the model ({err})") from None
    for layer in layers.values():
        layer.weight_quant = None
    return load_state(model, state, path)


def payload(path: str | Path) -> dict:
    """Bytes by kind in a packed file: codes, codebooks, other float32 values (raw layers
    included), the file."""
    blob = container.read(path, KIND)
    table = sum(m["table"][1] for m in blob["layers"] if not m.get("raw")) * 4
    return {"codes": blob["codes"].numel(), "codebooks": table,
            "floats": blob["floats"].numel() * 4 - table, "file": Path(path).stat().st_size}
