"""What a compression method is: a transformation of a model, not a training loop.

A method is selected by `method=<name>` (conf/method/<name>.yaml, `_target_` the class). These are
ALL the hooks the harness calls (module.py, callbacks/method_hooks.py, run.py); each has a
default, so a method overrides only what it changes:

before training
- `apply(model) -> model`           swap layers, install masks / parametrizations (once, before the
                                    optimizer sees the parameters)
- `check(max_epochs)`               at fit start: raise ConfigError if the method's schedule cannot
                                    finish within the run (default: `schedule.check`)
while training
- `on_time(model, t, interval)`     at the start of every epoch (interval "epoch", t = epoch) and
                                    every batch (interval "step", t = global step): one-off work
                                    (prune, k-means, PQ's EM) when `self.schedule` is due; runs the
                                    method's `step(model, t)` once per due time (default) and
                                    returns whether it did
- `after_step(model, lr)`           after every optimizer step, with its learning rate (clip
                                    latent weights, group lasso's proximal step)
- `loss(logits, target, batch)`     the training loss, or None for cross-entropy (distillation)
- `unfinished() -> str | None`      after fit: why the schedule did not reach its end, or None
instead of training (`trains = False`: post-training methods, e.g. PTQ)
- `calibrate(model, batches) -> model`  called by run.py in place of the fit, with the
                                    method's `calibration_batches` training batches (x, y)
                                    drawn with its `calibration_seed`
checkpoints (callbacks/resume.py: a mid-run checkpoint, then `resume=auto`)
- `state_dict() -> dict` / `load_state_dict(state)`  what continuing needs beyond the net's
                                    tensors (masks, codebooks, learned scales are buffers or
                                    parameters of the net, in its state dict): the attributes named
                                    in `STATE` (default: the scheduled times done); plain values
                                    and tensors only (the checkpoint loads with weights_only=True)
after training
- `finalize(model) -> model`        make the trained structure physical (drop pruned channels,
                                    round to the stored precision); what is tested is what is saved
- `layer_bits(model) -> {name: {w, a, g}}`  bits of every layer the method quantizes (cost model,
                                    BOPs, the record's `layers[]`); {} for a float model
- `report(model) -> rows | None`    per-layer rows for the suite's per-layer table
- `export(model, path) -> Path`     write the deployable file; the footprint is its size
- `load(model, path) -> model`      rebuild a fresh model from the file: identical predictions

Methods compose: `Compose(prune=..., share=..., code=...)` chains parts in order (Deep Compression
is prune -> share -> Huffman-coded file, conf/method/deep_compression.yaml).
"""
from __future__ import annotations

import copy
from pathlib import Path

import torch
from torch import nn

from . import container
from .errors import ConfigError, FileFormatError
from .schedule import Schedule


class Method:
    """Base class and the identity: full-precision training, weights saved as a state dict."""

    schedule: Schedule | None = None
    trains: bool = True  # False: run.py calls `calibrate` instead of training
    STATE: tuple[str, ...] = ("done",)  # attributes a mid-run checkpoint saves (state_dict)

    def __init__(self, name: str = "fp32"):
        self.name = name
        self.done: set[tuple[str, int]] = set()  # (interval, t) already handled by on_time

    def apply(self, model: nn.Module) -> nn.Module:
        return model

    def check(self, max_epochs: int | None) -> None:
        if self.schedule is not None:
            self.schedule.check(max_epochs)

    def on_time(self, model: nn.Module, t: int, interval: str) -> bool:
        s = self.schedule
        if s is None or interval != s.interval or (interval, t) in self.done:
            return False
        self.done.add((interval, t))  # once per time, e.g. under gradient accumulation
        if not s.due(t, interval):
            return False
        self.step(model, t)
        return True

    def step(self, model: nn.Module, t: int) -> None:
        """The scheduled work at time t (only called by `on_time`, when due)."""

    def after_step(self, model: nn.Module, lr: float) -> None:
        return None

    def calibrate(self, model: nn.Module, batches: list) -> nn.Module:
        """Post-training methods (`trains = False`): fit the method to `batches` of (x, y)."""
        return model

    def state_dict(self) -> dict:
        """The attributes in `STATE`, deep-copied (`done` as a sorted list of [interval, t])."""
        out = {k: copy.deepcopy(getattr(self, k)) for k in self.STATE}
        out["done"] = sorted([list(d) for d in self.done])
        return out

    def load_state_dict(self, state: dict) -> None:
        missing = [k for k in self.STATE if k not in state]
        if missing:
            raise FileFormatError(f"method {self.name}: checkpoint lacks its state {missing[0]!r}")
        for k in self.STATE:
            setattr(self, k, copy.deepcopy(state[k]))
        self.done = {tuple(d) for d in state["done"]}

    def loss(self, logits: torch.Tensor, target: torch.Tensor, batch) -> torch.Tensor | None:
        return None

    def unfinished(self) -> str | None:
        return None if self.schedule is None else self.schedule.unfinished(self.done)

    def finalize(self, model: nn.Module) -> nn.Module:
        return model

    def layer_bits(self, model: nn.Module) -> dict[str, dict[str, int]]:
        return {}

    def report(self, model: nn.Module) -> list[dict] | None:
        return None

    def export(self, model: nn.Module, path: str | Path) -> Path:
        """Weights only (no optimizer state, no Lightning metadata): a container.py file of kind
        "state_dict": the raw tensors plus 125 B for LeNet-300-100 (torch.save: 2.8 KB)."""
        return container.write(path, "state_dict", {k: v.detach().cpu() for k, v in model.state_dict().items()})

    def load(self, model: nn.Module, path: str | Path) -> nn.Module:
        return load_state(model, container.read(path, "state_dict"), path)


class FullPrecision(Method):
    """`method=fp32`: the reference every compressed row is compared with."""


class Compose(Method):
    """Parts applied in the order given (keyword order = YAML order), e.g.
    `Compose(name="deep_compression", prune=Prune(...), share=Share(...), code=DeepCompressionFile(...))`.

    apply / finalize: in order; on_time / after_step: every part, in order; check / unfinished:
    every part (the first complaint); scheduled parts must run one after the other (a later part
    starts after the earlier one's last step); loss: the last part that gives one; layer_bits:
    merged, later parts override; report, export, load: the last part (it writes the file)."""

    def __init__(self, name: str = "compose", label: str | None = None, **parts: Method):
        super().__init__(name)
        if not parts:
            raise ConfigError(f"method={name}: a composition needs at least one part")
        for key, part in parts.items():
            if not isinstance(part, Method):
                raise ConfigError(f"method.{key}={part!r}: not a method (needs a _target_)")
        self.parts = dict(parts)
        scheduled = [p.schedule for p in self.parts.values() if p.schedule is not None]
        for earlier, later in zip(scheduled, scheduled[1:]):
            later.after(earlier)

    @property
    def methods(self) -> list[Method]:
        return list(self.parts.values())

    def apply(self, model):
        for m in self.methods:
            model = m.apply(model)
        return model

    def check(self, max_epochs):
        for m in self.methods:
            m.check(max_epochs)

    def on_time(self, model, t, interval):
        return any([m.on_time(model, t, interval) for m in self.methods])  # every part, in order

    def after_step(self, model, lr):
        for m in self.methods:
            m.after_step(model, lr)

    def loss(self, logits, target, batch):
        for m in reversed(self.methods):
            if (out := m.loss(logits, target, batch)) is not None:
                return out
        return None

    def unfinished(self):
        return next((why for m in self.methods if (why := m.unfinished())), None)

    def state_dict(self):
        return {key: m.state_dict() for key, m in self.parts.items()}

    def load_state_dict(self, state):
        for key, m in self.parts.items():
            if key not in state:
                raise FileFormatError(f"method {self.name}: checkpoint lacks the state of part {key!r}")
            m.load_state_dict(state[key])

    def finalize(self, model):
        for m in self.methods:
            model = m.finalize(model)
        return model

    def layer_bits(self, model):
        out: dict[str, dict[str, int]] = {}
        for m in self.methods:
            out.update(m.layer_bits(model))
        return out

    def report(self, model):
        return self.methods[-1].report(model)

    def export(self, model, path):
        return self.methods[-1].export(model, path)

    def load(self, model, path):
        return self.methods[-1].load(model, path)

    def __repr__(self) -> str:
        return f"Compose({', '.join(f'{k}={m!r}' for k, m in self.parts.items())})"


def read_model_file(path: str | Path, kind: str, model: nn.Module) -> dict:
    """A checked file of `kind` (container.py) written for a model of `model`'s class; else
    FileFormatError naming the file."""
    blob = container.read(path, kind)
    if blob.get("model") != type(model).__name__:
        raise FileFormatError(f"{path}: does not match the model (a {blob.get('model')} file, "
                              f"a {type(model).__name__} model)")
    return blob


def load_state(model: nn.Module, state: dict, path: str | Path) -> nn.Module:
    """`state` loaded into `model`, or FileFormatError naming the file and the first key whose
    presence or shape differs; returns the model."""
    if not isinstance(state, dict):
        raise FileFormatError(f"{path}: inconsistent content (no state dict)")
    if (key := state_mismatch(model, state)) is not None:
        raise FileFormatError(f"{path}: does not match the model ({key})")
    model.load_state_dict(state)
    return model


def state_mismatch(model: nn.Module, state: dict) -> str | None:
    """The first key (sorted) whose presence or shape differs between the model's state dict and
    `state` (non-tensor entries ignored), or None when `state` loads into the model as is."""
    want = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in state.items() if isinstance(v, torch.Tensor)}
    return None if want == got else sorted(set(want.items()) ^ set(got.items()))[0][0]
