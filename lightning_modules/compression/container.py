"""The one checked file container every exporter writes and every loader reads.

Layout (integers little-endian):

    MAGIC (8 B) | version u16 | kind length u8 | header length u32 | body length u64 | kind (ASCII)
    | header (zlib-deflated JSON) | body | crc32 of all preceding bytes (u32)

The payload is a dict of plain values (None, bool, int, float, str, lists, dicts with str keys),
tensors and bytes. The header is the payload as JSON with each tensor replaced by
{"$t": [dtype, shape]} and each bytes value by {"$b": length}; the body is their raw bytes in
that order (a tensor's bytes as in memory, C order), so a file is the data plus a small header:
27 B + len(kind) + the deflated header. Tuples come back as lists.

`read(path, kind)` checks magic, lengths, checksum and version BEFORE decoding anything (the
prelude is fixed across versions, so a newer file is told apart from a corrupted one); no pickle
is ever loaded. Anything wrong raises FileFormatError with one line naming the file (not this
kind / truncated / corrupted / newer version). `write` is atomic: a temporary file in the same
folder, then os.replace; on any error nothing is left and an existing file is untouched.

Files written before this container (six formats: torch.save dicts, MAGIC|u64|torch.save|crc32
files, the Deep Compression formats 1 and 2) are recognised by their magic or torch.save's zip
signature and decoded by `_legacy` (torch.load only ever with weights_only=True) into the
payload today's writers produce.
"""
from __future__ import annotations

import io
import json
import os
import struct
import tempfile
import zlib
from pathlib import Path

import torch

from . import faults
from .errors import FileFormatError

MAGIC = b"LWBFILE\n"
VERSION = 1
_PRELUDE = struct.Struct("<8sHBIQ")  # magic, version, kind length, header length, body length
_CRC = struct.Struct("<I")


# --- the payload <-> (header, body) -----------------------------------------------------------

def _flatten(value, chunks: list):
    """The JSON form of a payload value; tensors' and bytes' data appended to `chunks`."""
    if isinstance(value, torch.Tensor):
        t = value.detach().cpu().contiguous()
        chunks.append(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        return {"$t": [str(t.dtype).removeprefix("torch."), list(t.shape)]}
    if isinstance(value, (bytes, bytearray, memoryview)):
        chunks.append(bytes(value))
        return {"$b": len(chunks[-1])}
    if isinstance(value, dict):
        bad = [k for k in value if not isinstance(k, str) or k.startswith("$")]
        if bad:
            raise TypeError(f"payload key {bad[0]!r}: keys must be str not starting with $")
        return {k: _flatten(v, chunks) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_flatten(v, chunks) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"a {type(value).__name__} in the payload: only tensors, bytes and plain values")


def _tensor(spec, data: bytes) -> torch.Tensor:
    dtype, shape = getattr(torch, spec[0], None), [int(s) for s in spec[1]]
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"unknown dtype {spec[0]!r}")
    if not data:
        return torch.empty(shape, dtype=dtype)
    return torch.frombuffer(bytearray(data), dtype=torch.uint8).view(dtype).reshape(shape)


def _nbytes(spec) -> int:
    dtype = getattr(torch, spec[0], None)
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"unknown dtype {spec[0]!r}")
    n = 1
    for s in spec[1]:
        n *= int(s)
    return n * dtype.itemsize


def _unflatten(node, body: memoryview, pos: list[int]):
    if isinstance(node, dict) and len(node) == 1 and ("$t" in node or "$b" in node):
        n = _nbytes(node["$t"]) if "$t" in node else int(node["$b"])
        start, pos[0] = pos[0], pos[0] + n
        if n < 0 or pos[0] > len(body):
            raise ValueError("the header describes more data than the body holds")
        data = bytes(body[start:pos[0]])
        return _tensor(node["$t"], data) if "$t" in node else data
    if isinstance(node, dict):
        return {k: _unflatten(v, body, pos) for k, v in node.items()}
    if isinstance(node, list):
        return [_unflatten(v, body, pos) for v in node]
    return node


# --- write / read -----------------------------------------------------------------------------

def write(path: str | Path, kind: str, payload: dict) -> Path:
    """Write `payload` (see the module doc) as a file of this `kind`, atomically; returns path."""
    path, chunks = Path(path), []
    header = zlib.compress(json.dumps(_flatten(dict(payload), chunks), separators=(",", ":")).encode(), 9)
    name = kind.encode("ascii")
    body_len = sum(len(c) for c in chunks)
    crc = zlib.crc32(_PRELUDE.pack(MAGIC, VERSION, len(name), len(header), body_len) + name + header)
    for c in chunks:
        crc = zlib.crc32(c, crc)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(_PRELUDE.pack(MAGIC, VERSION, len(name), len(header), body_len) + name + header)
            for c in chunks:
                f.write(c)
            f.write(_CRC.pack(crc))
        faults.point("export")  # tests: kill -9 with the file written, not yet renamed
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def read(path: str | Path, kind: str) -> dict:
    """The payload of a file of this `kind` (or of its pre-container format), checked before
    anything is decoded; otherwise FileFormatError (one line, names the file)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as err:
        raise FileFormatError(f"{path}: cannot read ({err.strerror or type(err).__name__})") from None

    def fail(why: str) -> FileFormatError:
        return FileFormatError(f"{path}: {why}")

    if not data.startswith(MAGIC):
        legacy = _legacy(data, kind, fail)
        if legacy is None:
            raise fail(f"not a {kind} file (unknown magic or too short)")
        return legacy
    if len(data) < _PRELUDE.size:
        raise fail(f"truncated: {len(data)} bytes")
    _, version, klen, hlen, blen = _PRELUDE.unpack_from(data)  # the prelude is the same in every version
    expected = _PRELUDE.size + klen + hlen + blen + _CRC.size
    if len(data) != expected:
        raise fail(f"{'truncated' if len(data) < expected else 'padded'}: {len(data)} bytes, expected {expected}")
    if zlib.crc32(memoryview(data)[:-_CRC.size]) != _CRC.unpack_from(data, len(data) - _CRC.size)[0]:
        raise fail("checksum mismatch: the file is corrupted")
    if version != VERSION:
        raise fail(f"container format {version}, written by a newer version (this code reads {VERSION})")
    start = _PRELUDE.size
    got = data[start:start + klen].decode("ascii", "replace")
    if got != kind:
        raise fail(f"not a {kind} file (a {got} file)")
    start += klen
    try:
        tree = json.loads(zlib.decompress(data[start:start + hlen]))
        body, pos = memoryview(data)[start + hlen:-_CRC.size], [0]
        payload = _unflatten(tree, body, pos)
        if pos[0] != blen or not isinstance(payload, dict):
            raise ValueError("the header does not describe the body")
    except (ValueError, TypeError, KeyError, RuntimeError, zlib.error) as err:
        raise fail(f"inconsistent content ({err})") from None
    return payload


# --- files written before this container ------------------------------------------------------

_CHECKED = {"filter_prune": (b"LWBFP1\r\n", "lwb-filter-prune-1"), "low_rank": (b"LWBLR1\r\n", "lwb-low-rank-1"),
            "pq": (b"LWBPQ1\r\n", "lwb-pq-1")}  # MAGIC | u64 length | torch.save | crc32
_ZIPPED = {"state_dict": None, "packed": "lwb-packed-1", "polino_codes": "polino-packed-1"}  # torch.save
_DEEP = (b"LWBDC2\r\n", b"LWBDC1\r\n")  # MAGIC | u32 length | header (v2 deflated) | blobs | crc32
_ZIP = b"PK\x03\x04"


def _torch_load(blob: bytes, fail) -> dict:
    try:
        out = torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 -- anything unreadable is a damaged file
        raise fail(f"unreadable content ({type(err).__name__})") from None
    if not isinstance(out, dict):
        raise fail("unreadable content (not a dict)")
    return out


def _legacy(data: bytes, kind: str, fail) -> dict | None:
    """A pre-container file of this kind -> today's payload; None when it is not one."""
    if kind in _ZIPPED and data.startswith(_ZIP):
        out, fmt = _torch_load(data, fail), _ZIPPED[kind]
        if fmt is None:  # a plain state dict
            return out if all(isinstance(v, torch.Tensor) for v in out.values()) else None
        return out if out.pop("format", None) == fmt else None
    if kind in _CHECKED and data.startswith(_CHECKED[kind][0]):
        head = len(_CHECKED[kind][0]) + 8
        if len(data) < head + 4 or len(data) != head + struct.unpack_from("<Q", data, head - 8)[0] + 4:
            raise fail("truncated or padded")
        if zlib.crc32(data[:-4]) != _CRC.unpack_from(data, len(data) - 4)[0]:
            raise fail("checksum mismatch: the file is corrupted")
        out = _torch_load(data[head:-4], fail)
        return out if out.pop("format", None) == _CHECKED[kind][1] else None
    if kind == "deep_compression" and data[:8] in _DEEP:
        return _legacy_deep(data, fail)
    return None


def _legacy_deep(data: bytes, fail) -> dict:
    """Deep Compression formats 2 and 1 -> {"entries", "blobs"}."""
    if len(data) < 16:
        raise fail("truncated")
    (hlen,) = struct.unpack_from("<I", data, 8)
    try:
        head = data[12:12 + hlen]
        header = json.loads(zlib.decompress(head) if data[:8] == _DEEP[0] else head)
        sizes = [int(s) for s in header["blobs"]]
    except (ValueError, KeyError, TypeError, zlib.error):
        raise fail("truncated or corrupted header") from None
    expected = 12 + hlen + sum(sizes) + 4
    if len(data) != expected:
        raise fail(f"truncated or padded: {len(data)} bytes, expected {expected}")
    if zlib.crc32(data[:-4]) != _CRC.unpack_from(data, len(data) - 4)[0]:
        raise fail("checksum mismatch: the file is corrupted")
    pos, blobs = 12 + hlen, []
    for s in sizes:
        blobs.append(data[pos:pos + s])
        pos += s
    return {"entries": header.get("entries"), "blobs": blobs}
