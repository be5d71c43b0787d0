"""Deep Compression (Han, Mao & Dally 2016) as methods: prune -> share -> Huffman, and each stage.

    method=prune             Prune:           magnitude pruning + retraining (Han et al. 2015)
    method=share             Share:           k-means weight sharing + centroid fine-tuning
    method=prune_share       PruneShare:      both (P+Q)
    method=deep_compression  DeepCompression: both, and the file Huffman-coded (P+Q+H)

All four are one class with stages switched on or off. `apply` installs the structure (all-ones
prune masks, inactive weight-sharing parametrizations) so the parameters never change during a
run; the Lightning callback (callbacks/prune_schedule.py) calls `on_time(net, t, interval)` at
every epoch and step start, and the schedules prune / cluster when due. Sharing must start after
the last pruning step (k-means clusters the final survivors). `export` writes one file
(compressed_file.py); `load` decodes it into a plain model with identical predictions.
"""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from torch import nn

from ..config_check import ConfigError
from . import compressed_file
from .method import Method, state_mismatch
from .prune import PruneSchedule, nonzero_params, strip
from .share import ShareSchedule

__all__ = ["Prune", "Share", "PruneShare", "DeepCompression", "nonzero_params"]
GAP_BITS = {"conv": 8, "fc": 5}  # paper, Sec. 2: relative index width


def _gap_bits(index_bits: Mapping | None) -> dict:
    bits = dict(index_bits or GAP_BITS)
    if set(bits) != {"conv", "fc"}:
        raise ConfigError(f"method.index_bits={bits}: needs exactly the keys conv and fc")
    for k, v in bits.items():
        if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= 16:
            raise ConfigError(f"method.index_bits.{k}={v}: must be an integer in 1..16")
    return bits


class DeepCompression(Method):
    """prune: PruneSchedule kwargs or None; share: ShareSchedule kwargs or None; huffman: code
    the file's index streams with Huffman codes; index_bits: relative-index width {conv, fc};
    float_bits: 32 or 16, the width of the file's floats (codebooks, biases, other raw floats;
    16: `finalize` rounds the model's floats to float16 values before the test)."""

    def __init__(self, name: str = "deep_compression", prune: Mapping | None = None,
                 share: Mapping | None = None, huffman: bool = True, index_bits: Mapping | None = None,
                 float_bits: int = 32):
        super().__init__(name)
        if isinstance(float_bits, bool) or float_bits not in compressed_file.FLOAT_BITS:
            raise ConfigError(f"method.float_bits={float_bits}: valid: 32, 16")
        self.float_bits = int(float_bits)
        self.pruner = PruneSchedule(**dict(prune), prefix="method.prune") if prune is not None else None
        self.sharer = ShareSchedule(**dict(share), prefix="method.share") if share is not None else None
        if self.pruner and self.sharer:
            p, s = self.pruner, self.sharer
            if p.interval != s.interval:
                raise ConfigError(f"method.share.interval={s.interval}: must equal "
                                  f"method.prune.interval={p.interval}")
            if s.start <= p.end:
                raise ConfigError(f"method.share.start={s.start}: must be after the last pruning "
                                  f"step (method.prune.end={p.end})")
        self.huffman = bool(huffman)
        self.index_bits = _gap_bits(index_bits)
        self._done: set[tuple[str, int]] = set()

    @property
    def stages(self) -> list:
        return [s for s in (self.pruner, self.sharer) if s is not None]

    def apply(self, model: nn.Module) -> nn.Module:
        for s in self.stages:
            model = s.install(model)
        return model

    def callbacks(self) -> list:
        from ..callbacks.prune_schedule import CompressionSchedule  # Lightning outside compression/
        return [CompressionSchedule(self)]

    def on_time(self, model: nn.Module, t: int, interval: str) -> bool:
        """Run the stages due at time t (once per (interval, t), e.g. under grad accumulation)."""
        if (interval, t) in self._done:
            return False
        self._done.add((interval, t))
        return any([s.step(model, t, interval) for s in self.stages])

    def last_time(self) -> tuple[str, int, str] | None:
        """(interval, last scheduled time, its config key) or None without stages."""
        if self.sharer:
            return self.sharer.interval, self.sharer.start, "method.share.start"
        if self.pruner:
            return self.pruner.interval, self.pruner.end, "method.prune.end"
        return None

    def unfinished(self) -> str | None:
        """A one-line reason if the schedule did not run to its end, else None."""
        last = self.last_time()
        if last and (last[0], last[1]) not in self._done:
            return f"{last[2]}={last[1]}: the run ended before this {last[0]} (schedule unfinished)"
        return None

    def finalize(self, model: nn.Module) -> nn.Module:
        return compressed_file.round_floats(model) if self.float_bits == 16 else model

    def export(self, model: nn.Module, path: str | Path) -> Path:
        return compressed_file.write(model, path, self.index_bits, self.huffman, self.float_bits)

    def load(self, model: nn.Module, path: str | Path) -> nn.Module:
        state = compressed_file.read(path)
        model = strip(model)
        if (key := state_mismatch(model, state)) is not None:
            raise compressed_file.FileFormatError(f"{path}: does not match the model ({key})")
        model.load_state_dict(state)
        return model

    def report(self, model: nn.Module) -> list[dict]:
        return compressed_file.report(model, self.index_bits, self.float_bits)


class Prune(DeepCompression):
    """`method=prune`: flat PruneSchedule keys (sparsity/quality, skip, schedule); fp32 values in
    the sparse relative-index format."""

    def __init__(self, name: str = "prune", index_bits: Mapping | None = None, **prune):
        super().__init__(name, prune=prune, share=None, huffman=False, index_bits=index_bits)


class Share(DeepCompression):
    """`method=share`: flat ShareSchedule keys (bits, skip, interval, start, iters)."""

    def __init__(self, name: str = "share", **share):
        super().__init__(name, prune=None, share=share, huffman=False)


class PruneShare(DeepCompression):
    """`method=prune_share`: pruning then sharing, fixed-width codes (P+Q)."""

    def __init__(self, prune: Mapping, share: Mapping, name: str = "prune_share",
                 index_bits: Mapping | None = None):
        super().__init__(name, prune=prune, share=share, huffman=False, index_bits=index_bits)
