"""What a compression method is: a transformation of a model, not a training loop.

A method is selected by `method=<name>` (conf/method/<name>.yaml, with `_target_` the class) and
offers four hooks that the single LightningModule calls:

- `apply(model) -> model`        swap layers, add masks, ... (before training)
- `callbacks() -> list`          Lightning callbacks: schedules (pruning ramp, k-means step)
- `loss(logits, target, batch)`  extra or replacement loss (distillation); None = cross-entropy
- `finalize(model) -> model`     after training, before testing and export: make the trained
  structure physical (filter pruning removes the masked channels); the default is the identity
- `report(model) -> rows | None` per-layer rows for the suite's per-layer table (Deep Compression)
- `export(model, path)`          write the deployable file; `footprint_bytes` is its size.
  `load(model, path)` rebuilds the model from it with identical predictions.

Methods compose (prune -> share -> huffman): `Compose` chains them in order.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from . import container


class Method:
    """Base class and the identity: full-precision training, weights saved as a state dict."""

    def __init__(self, name: str = "fp32"):
        self.name = name

    def apply(self, model: nn.Module) -> nn.Module:
        return model

    def callbacks(self) -> list:
        return []

    def loss(self, logits: torch.Tensor, target: torch.Tensor, batch) -> torch.Tensor | None:
        return None

    def finalize(self, model: nn.Module) -> nn.Module:
        return model

    def report(self, model: nn.Module) -> list[dict] | None:
        return None

    def export(self, model: nn.Module, path: str | Path) -> Path:
        """Weights only (no optimizer state, no Lightning metadata): a container.py file of kind
        "state_dict": the raw tensors plus 125 B for LeNet-300-100 (torch.save: 2.8 KB)."""
        return container.write(path, "state_dict", {k: v.detach().cpu() for k, v in model.state_dict().items()})

    def load(self, model: nn.Module, path: str | Path) -> nn.Module:
        model.load_state_dict(container.read(path, "state_dict"))
        return model


class FullPrecision(Method):
    """`method=fp32`: the reference every compressed row is compared with."""


class Compose(Method):
    """Apply methods in order; the last one that exports decides the file format."""

    def __init__(self, methods: list[Method], name: str = "compose"):
        super().__init__(name)
        self.methods = list(methods)

    def apply(self, model: nn.Module) -> nn.Module:
        for m in self.methods:
            model = m.apply(model)
        return model

    def callbacks(self) -> list:
        return [cb for m in self.methods for cb in m.callbacks()]

    def loss(self, logits, target, batch):
        for m in reversed(self.methods):
            out = m.loss(logits, target, batch)
            if out is not None:
                return out
        return None

    def finalize(self, model):
        for m in self.methods:
            model = m.finalize(model)
        return model

    def report(self, model):
        return next((r for m in reversed(self.methods) if (r := m.report(model)) is not None), None)

    def export(self, model, path):
        return self.methods[-1].export(model, path) if self.methods else super().export(model, path)

    def load(self, model, path):
        return self.methods[-1].load(model, path) if self.methods else super().load(model, path)


def state_mismatch(model: nn.Module, state: dict) -> str | None:
    """The first key (sorted) whose presence or shape differs between the model's state dict and
    `state` (non-tensor entries ignored), or None when `state` loads into the model as is."""
    want = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in state.items() if isinstance(v, torch.Tensor)}
    return None if want == got else sorted(set(want.items()) ^ set(got.items()))[0][0]
