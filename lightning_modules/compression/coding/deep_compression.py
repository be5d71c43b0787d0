"""Deep Compression (Han, Mao & Dally 2016) is a composition: prune -> share -> Huffman-coded file.

    conf/method/prune.yaml             Compose(prune=Prune, code=DeepCompressionFile(huffman=false))
    conf/method/share.yaml             Compose(share=Share, code=DeepCompressionFile(huffman=false))
    conf/method/prune_share.yaml       Compose(prune, share, code(huffman=false))      (P+Q)
    conf/method/deep_compression.yaml  Compose(prune, share, code(huffman=true))       (P+Q+H)

`Prune` (prune.py) installs all-ones masks and prunes on its schedule; `Share` (share.py) installs
inactive weight-sharing parametrizations and runs k-means at its start (after the last pruning
step: `Compose` checks the order). This module is the last part, the file: `DeepCompressionFile`
writes whatever masks and codebooks the model carries in one checked file (compressed_file.py),
optionally Huffman-coded and with float16 floats; `load` decodes it into a plain model with
identical predictions; `report` gives the per-layer rows of the paper's Tables 2/3.
"""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from torch import nn

from . import compressed_file
from ..errors import ConfigError
from ..method import Method, load_state
from ..pruning.magnitude import nonzero_params, strip

__all__ = ["DeepCompressionFile", "nonzero_params"]
GAP_BITS = {"conv": 8, "fc": 5}  # paper, Sec. 2: relative index width


def _gap_bits(index_bits: Mapping | None, key: str) -> dict:
    bits = dict(index_bits or GAP_BITS)
    if set(bits) != {"conv", "fc"}:
        raise ConfigError(f"{key}.index_bits={bits}: needs exactly the keys conv and fc")
    for k, v in bits.items():
        if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= 16:
            raise ConfigError(f"{key}.index_bits.{k}={v}: must be an integer in 1..16")
    return bits


class DeepCompressionFile(Method):
    """The file part: index_bits: relative-index width {conv, fc}; huffman: code the index
    streams with Huffman codes; float_bits: 32 or 16, the width of the file's floats (codebooks,
    biases, other raw floats; 16: `finalize` rounds the model's floats to float16 values before
    the test, so the file holds exactly what was tested)."""

    def __init__(self, index_bits: Mapping | None = None, huffman: bool = True, float_bits: int = 32,
                 key: str = "method.code", name: str = "deep_compression_file"):
        super().__init__(name)
        if isinstance(float_bits, bool) or float_bits not in compressed_file.FLOAT_BITS:
            raise ConfigError(f"{key}.float_bits={float_bits}: valid: 32, 16")
        self.float_bits = int(float_bits)
        self.huffman = bool(huffman)
        self.index_bits = _gap_bits(index_bits, key)

    def finalize(self, model: nn.Module) -> nn.Module:
        return compressed_file.round_floats(model) if self.float_bits == 16 else model

    def export(self, model: nn.Module, path: str | Path) -> Path:
        return compressed_file.write(model, path, self.index_bits, self.huffman, self.float_bits)

    def load(self, model: nn.Module, path: str | Path) -> nn.Module:
        return load_state(strip(model), compressed_file.read(path), path)

    def report(self, model: nn.Module) -> list[dict]:
        return compressed_file.report(model, self.index_bits, self.float_bits)

    def __repr__(self) -> str:
        return f"DeepCompressionFile(huffman={self.huffman}, float_bits={self.float_bits})"
