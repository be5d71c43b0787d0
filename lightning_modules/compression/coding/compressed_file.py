"""The Deep Compression file: pruned, shared, Huffman-coded layers in ONE self-checking file.

Per pruned and/or shared Conv2d/Linear weight (Han, Mao & Dally 2016, Fig. 1 and Sec. 2-4):

- positions: dense, or sparse as relative indices of g bits with filler zeros (sparse.py);
- values: float32 (pruned only), or codes into a per-layer float32 codebook (shared; a pruned
  layer's code 0 is the zero of fillers and pruned weights, codes 1.. its centroids);
- each code stream (value codes, gap codes) fixed-width (`pack_bits`, b or g bits) or Huffman
  coded (huffman.py; the table is one uint8 code length per symbol).

Every other state-dict entry (biases, BatchNorm, unpruned layers) is stored raw. Floats (codebooks,
pruned-only values, raw float entries) are stored at `float_bits` 32 or 16: with 16 the method's
`finalize` has already rounded every float of the model to float16 values (`round_floats`), so
the file holds exactly what was tested and reloads to the same predictions.

The file is a container.py file of kind "deep_compression": {"entries": one meta dict per
state-dict entry (shapes, bit counts, stream sizes), "blobs": the hand-packed byte streams}; the
container checks magic, lengths and checksum before anything is decoded, so a truncated or
corrupted file raises FileFormatError (naming the file) rather than building a wrong model.
(Formats 1 and 2, MAGIC LWBDC1/LWBDC2 | u32 header length | header | blobs | crc32, still load.)
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .. import container
from . import huffman
from ..errors import FileFormatError
from ..quantization.pack import pack_bits, unpack_bits
from ..pruning.magnitude import is_masked, plain_state_dict
from .share import is_shared, sharing
from .sparse import from_sparse, to_sparse

KIND = "deep_compression"  # container.py kind
FLOAT_BITS = (32, 16)


def _float(bits: int) -> np.dtype:
    return np.dtype(np.float16 if bits == 16 else np.float32)


@torch.no_grad()
def round_floats(model: nn.Module) -> nn.Module:
    """Every floating parameter and buffer rounded to the nearest float16 value (kept in its
    dtype), in place: what a float_bits=16 file stores exactly."""
    for t in model.state_dict().values():
        if t.is_floating_point():
            t.copy_(t.half().to(t.dtype))
    return model


def _width(alphabet: int) -> int:
    return max(1, math.ceil(math.log2(max(alphabet, 2))))


def _code_stream(symbols: np.ndarray, alphabet: int, use_huffman: bool) -> tuple[dict, list]:
    """One stream of codes -> (meta, blobs); meta also carries both sizes for the report."""
    fixed_bits = symbols.size * _width(alphabet)
    huff_bits = huffman.coded_bits(symbols, alphabet)
    meta = {"n": int(symbols.size), "alphabet": alphabet, "huffman": use_huffman,
            "bits_fixed": fixed_bits, "bits_huffman": huff_bits}
    if use_huffman:
        lengths, packed, nbits = huffman.encode(symbols, alphabet)
        meta["nbits"] = nbits
        return meta, [lengths.tobytes(), packed.tobytes()]
    return meta, [pack_bits(symbols, _width(alphabet)).tobytes()]


def _decode_stream(meta: dict, blobs: list[bytes]) -> np.ndarray:
    n, alphabet = meta["n"], meta["alphabet"]
    if meta["huffman"]:
        lengths = np.frombuffer(blobs[0], np.uint8)
        if lengths.size != alphabet:
            raise ValueError(f"Huffman table of {lengths.size} lengths for {alphabet} symbols")
        return huffman.decode(lengths, np.frombuffer(blobs[1], np.uint8), meta["nbits"], n)
    out = unpack_bits(np.frombuffer(blobs[0], np.uint8), _width(alphabet), n)
    if n and out.max() >= alphabet:
        raise ValueError(f"code {out.max()} outside an alphabet of {alphabet}")
    return out


def encode_layer(module: nn.Module, weight: torch.Tensor, gap_bits: int, use_huffman: bool,
                 float_bits: int = 32):
    """A pruned and/or shared layer's (plain) weight -> (meta, blobs)."""
    fdt = _float(float_bits)
    flat = weight.detach().cpu().float().reshape(-1).numpy()
    meta = {"shape": list(weight.shape), "sparse": is_masked(module), "streams": {},
            "float_bits": float_bits}
    blobs = []
    if is_shared(module):
        s = sharing(module)
        offset = 1 if meta["sparse"] else 0  # code 0 = zero in a pruned layer
        table = np.concatenate([np.zeros(offset, np.float32), s.centroids.detach().cpu().float().numpy()])
        values = s.idx.detach().cpu().reshape(-1).numpy() + offset
        meta["codebook"] = int(table.size)
        blobs.append(table.astype(fdt).tobytes())
    else:
        values, table = flat, None
    if meta["sparse"]:
        keep = module.weight_mask.detach().cpu().reshape(-1).numpy() > 0
        values, gaps = to_sparse(values, keep, gap_bits)
        meta["gap_bits"] = gap_bits
        gm, gb = _code_stream(gaps, 2 ** gap_bits, use_huffman)
        meta["streams"]["gaps"] = gm
        blobs += gb
    if table is not None:
        vm, vb = _code_stream(values, int(table.size), use_huffman)
        meta["streams"]["values"] = vm
        blobs += vb
    else:
        meta["values"] = int(values.size)
        blobs.append(values.astype(fdt).tobytes())
    return meta, blobs


def decode_layer(meta: dict, blobs: list[bytes]) -> torch.Tensor:
    blobs = list(blobs)
    numel = math.prod(meta["shape"])
    fdt = _float(meta.get("float_bits", 32))
    table = np.frombuffer(blobs.pop(0), fdt).astype(np.float32) if "codebook" in meta else None
    if table is not None and table.size != meta["codebook"]:
        raise ValueError(f"codebook of {table.size} values, header says {meta['codebook']}")
    gaps = None
    if meta["sparse"]:
        m = meta["streams"]["gaps"]
        k = 2 if m["huffman"] else 1
        gaps, blobs = _decode_stream(m, blobs[:k]), blobs[k:]
    if table is not None:
        values = table[_decode_stream(meta["streams"]["values"], blobs)]
    else:
        values = np.frombuffer(blobs[0], fdt)
        if values.size != meta["values"]:
            raise ValueError(f"{values.size} float values, header says {meta['values']}")
    if gaps is not None:
        values = from_sparse(values, gaps, numel)
    if values.size != numel:
        raise ValueError(f"{values.size} values for a tensor of {numel}")
    return torch.from_numpy(values.astype(np.float32).copy()).reshape(meta["shape"])


def compressed_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))
            and (is_masked(m) or is_shared(m))]


def encode_model(model: nn.Module, gap_bits: dict, use_huffman: bool,
                 float_bits: int = 32) -> tuple[dict, list[bytes]]:
    """The header (without offsets) and the blobs of every entry, in state-dict order."""
    plain = plain_state_dict(model)
    layers = dict(compressed_layers(model))
    entries, blobs = [], []
    for key, t in plain.items():
        mod = key.removesuffix(".weight")
        if key.endswith(".weight") and mod in layers:
            m = layers[mod]
            g = gap_bits["conv"] if isinstance(m, nn.Conv2d) else gap_bits["fc"]
            meta, b = encode_layer(m, t, g, use_huffman, float_bits)
            meta.update(key=key, kind="layer")
        else:
            a = t.detach().cpu().contiguous().numpy()
            meta = {"key": key, "kind": "raw", "dtype": str(a.dtype), "shape": list(a.shape)}
            if a.dtype == np.float32 and float_bits == 16:
                a, meta["stored"] = a.astype(np.float16), "float16"
            b = [a.tobytes()]
        entries.append(meta | {"nblobs": len(b)})
        blobs += b
    return {"format": "lwb-deep-compression-2", "entries": entries}, blobs


def write(model: nn.Module, path: str | Path, gap_bits: dict, use_huffman: bool,
          float_bits: int = 32) -> Path:
    """float_bits=16 stores the floats as float16: round_floats(model) must have run (finalize)."""
    header, blobs = encode_model(model, gap_bits, use_huffman, float_bits)
    return container.write(path, KIND, {"entries": header["entries"], "blobs": blobs})


def read(path: str | Path) -> dict[str, torch.Tensor]:
    """The plain state dict stored in the file, or FileFormatError (one line, names the file)."""
    payload = container.read(path, KIND)
    out, i = {}, 0
    try:
        blobs = payload["blobs"]
        for e in payload["entries"]:
            b, i = blobs[i:i + e["nblobs"]], i + e["nblobs"]
            if e["kind"] == "layer":
                out[e["key"]] = decode_layer(e, b)
            else:
                a = np.frombuffer(b[0], dtype=np.dtype(e.get("stored", e["dtype"]))).reshape(e["shape"])
                out[e["key"]] = torch.from_numpy(a.astype(np.dtype(e["dtype"])))
    except (ValueError, KeyError, TypeError, IndexError) as err:
        raise FileFormatError(f"{path}: inconsistent content ({err})") from None
    return out


def report(model: nn.Module, gap_bits: dict, float_bits: int = 32) -> list[dict]:
    """Per-layer rows as Deep Compression's Tables 2/3, plus a `total` row over the whole file.

    weight/index bits are per stored entry (non-zeros plus filler zeros); P+Q is fixed width,
    P+Q+H Huffman; a layer's rate is 32 bits x weights / bits stored for it with P+Q+H (codes,
    codebook, Huffman tables); the total rate counts the raw entries too (not the header)."""
    header, _ = encode_model(model, gap_bits, use_huffman=True, float_bits=float_bits)
    masks = {n: m.weight_mask for n, m in compressed_layers(model) if is_masked(m)}
    rows, total_bits, total_params = [], 0, 0
    for e in header["entries"]:
        numel = math.prod(e["shape"])
        total_params += numel
        if e["kind"] != "layer":
            total_bits += 8 * np.dtype(e.get("stored", e["dtype"])).itemsize * numel
            continue
        v, g = e["streams"].get("values"), e["streams"].get("gaps")
        n, fb = (v["n"] if v else e["values"]), e.get("float_bits", 32)
        bits = fb * e.get("codebook", 0) + (8 * v["alphabet"] + v["bits_huffman"] if v else fb * n)
        bits += 8 * g["alphabet"] + g["bits_huffman"] if g else 0
        name = e["key"].removesuffix(".weight")
        kept = int(masks[name].sum()) if name in masks else numel
        rows.append({"layer": name, "weights": numel, "kept_pct": 100.0 * kept / numel,
                     "weight_bits_pq": _width(v["alphabet"]) if v else fb,
                     "weight_bits_pqh": v["bits_huffman"] / max(n, 1) if v else float(fb),
                     "index_bits_pq": e.get("gap_bits"),
                     "index_bits_pqh": g["bits_huffman"] / max(n, 1) if g else None,
                     "compression": 32 * numel / bits})
        total_bits += bits
    rows.append({"layer": "total", "weights": total_params, "kept_pct": None, "weight_bits_pq": None,
                 "weight_bits_pqh": None, "index_bits_pq": None, "index_bits_pqh": None,
                 "compression": 32 * total_params / max(total_bits, 1)})
    return rows
