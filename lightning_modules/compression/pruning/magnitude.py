"""Magnitude pruning (Han, Pool, Tran & Dally 2015, "Learning both Weights and Connections").

Each pruned layer (Conv2d/Linear) holds a `torch.nn.utils.prune` mask: `weight_orig` is the
trained parameter, `weight_mask` a 0/1 buffer, and a forward pre-hook sets
weight = weight_orig * weight_mask, so a pruned weight is exactly zero in every forward pass and
receives zero gradient (d weight / d weight_orig = mask): it stays zero through retraining and
export. A layer keeps the weights with

    |w| > q * std(w_kept)      (Han 2015, Sec. 3: quality parameter q times the layer's std), or
    the (1 - s) n largest |w|  (target sparsity s per layer, exact count, ties by position).

Pruning is monotone: a weight once removed stays removed (new mask = old mask AND new test).

Iterative schedule (`Prune`, a `Schedule`): prune at t = start, start + frequency, ..., and at end
(t in epochs or steps), retraining in between. With a target sparsity the level ramps as AGP
(Zhu & Gupta 2017, Eq. 1):

    s_t = s_f + (s_i - s_f) (1 - (t - t0) / (n dt))^3,   t0 = start, n dt = end - start

and with a quality parameter every step prunes at q * std of the surviving weights (Han's
iterative pruning). start = end is one-shot pruning followed by retraining.

DDP: the masks are computed on every rank and then replaced by rank 0's (`dist.broadcast`), so
they are identical even if replicas drifted (Lightning's DDP also broadcasts buffers, masks
included, from rank 0 before each forward).
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.utils import parametrize, prune

from ..errors import ConfigError
from ..method import Method
from ..schedule import Schedule
from ..select import ALL, choose, from_per_layer, parse, plan


def broadcast_(t: torch.Tensor) -> torch.Tensor:
    """Overwrite t with rank 0's copy when a process group is running (no-op otherwise)."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        buf = t.to(torch.uint8) if t.dtype == torch.bool else t
        dist.broadcast(buf, src=0)
        if buf is not t:
            t.copy_(buf.bool())
    return t


@torch.no_grad()
def magnitude_mask(w: torch.Tensor, old: torch.Tensor | None = None, sparsity: float | None = None,
                   quality: float | None = None) -> torch.Tensor:
    """0/1 mask (w's dtype) keeping the largest |w| among the weights `old` still keeps."""
    old = torch.ones_like(w, dtype=torch.bool) if old is None else old.bool()
    mag = (w * old).abs().flatten()
    if quality is not None:
        kept = w[old]
        thr = quality * kept.std() if kept.numel() > 1 else mag.new_tensor(0.0)
        keep = (mag > thr) & old.flatten()
    else:
        n_keep = w.numel() - round(sparsity * w.numel())
        keep = torch.zeros_like(mag, dtype=torch.bool)
        keep[torch.topk(mag, n_keep, sorted=False).indices] = True  # exact count
        keep &= old.flatten()
    return keep.view_as(w).to(w.dtype)


def is_masked(module: nn.Module) -> bool:
    """This module itself holds a prune mask (prune.is_pruned also looks at submodules)."""
    return any(isinstance(h, prune.BasePruningMethod) for h in module._forward_pre_hooks.values())


def weight_param(module: nn.Module) -> torch.Tensor:
    """The trained weight before the mask (weight_orig when pruned, else weight)."""
    return module.weight_orig if is_masked(module) else module.weight


@torch.no_grad()
def effective_weight(module: nn.Module) -> torch.Tensor:
    """The weight the forward pass uses now (mask and weight sharing applied)."""
    w = weight_param(module)
    return w * module.weight_mask if is_masked(module) else w


def install_masks(model: nn.Module, names: Iterable[str]) -> None:
    """All-ones masks on the named layers (structure first, so the parameters never change)."""
    for name in names:
        m = model.get_submodule(name)
        if not is_masked(m):
            prune.identity(m, "weight")


@torch.no_grad()
def prune_layer(module: nn.Module, sparsity: float | None = None, quality: float | None = None):
    """Tighten the layer's mask to `sparsity` (or quality * std); pruned weights set to zero."""
    if not is_masked(module):
        prune.identity(module, "weight")
    w = weight_param(module)
    mask = magnitude_mask(w, module.weight_mask, sparsity, quality)
    module.weight_mask.copy_(broadcast_(mask))
    if not parametrize.is_parametrized(module, "weight_orig"):
        module.weight_orig.mul_(module.weight_mask)
    module.weight = module.weight_orig * module.weight_mask  # as the hook will, for use now


def agp(t: int, start: int, end: int, s_i: float, s_f: float) -> float:
    """AGP sparsity at time t (Zhu & Gupta 2017): cubic ramp from s_i at start to s_f at end."""
    if t >= end:
        return s_f
    if t <= start:
        return s_i if end > start else s_f
    return s_f + (s_i - s_f) * (1.0 - (t - start) / (end - start)) ** 3


def strip(model: nn.Module) -> nn.Module:
    """Make the reparametrized layers plain again in place (weight = what the forward uses)."""
    for m in model.modules():
        if parametrize.is_parametrized(m):
            for tensor_name in list(m.parametrizations.keys()):
                parametrize.remove_parametrizations(m, tensor_name, leave_parametrized=True)
        if is_masked(m):
            prune.remove(m, "weight")
    return model


def _plain_key(key: str) -> tuple[str, str] | None:
    """State-dict key of a reparametrized model -> (module name, plain tensor name), None for
    a prune mask, ("", "") for an ordinary entry."""
    dotted = "." + key
    if ".parametrizations." in dotted:
        prefix, rest = dotted.split(".parametrizations.", 1)
        mod, tensor = prefix[1:], rest.split(".")[0]
    else:
        mod, _, tensor = key.rpartition(".")
        if tensor == "weight_mask":
            return None
        if tensor != "weight_orig":
            return "", ""
    return mod, "weight" if tensor == "weight_orig" else tensor


@torch.no_grad()
def plain_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict the model would have without masks and parametrizations (model untouched):
    `<layer>.weight` = the weight the forward pass uses, everything else as it is."""
    mods, out = dict(model.named_modules()), {}
    for key, v in model.state_dict().items():
        where = _plain_key(key)
        if where is None:
            continue
        if where == ("", ""):
            out[key] = v.detach()
            continue
        mod, tensor = where
        plain = f"{mod}.{tensor}" if mod else tensor
        if plain not in out:
            m = mods[mod]
            out[plain] = (effective_weight(m) if tensor == "weight" and is_masked(m)
                          else getattr(m, tensor)).detach()
    return out


def nonzero_params(model: nn.Module) -> int:
    """Parameters left after pruning: non-zero entries of the parameters the forward pass uses
    (weights after masks and sharing, biases, BatchNorm affine)."""
    plain = plain_state_dict(model)
    names = set()
    for key, _ in model.named_parameters():
        where = _plain_key(key)
        names.add(key if where == ("", "") else ".".join(p for p in where if p))
    return int(sum(int(torch.count_nonzero(plain[n])) for n in names))


class Prune(Method):
    """Magnitude pruning as a method part (`method=prune`, and the first part of Deep Compression):
    how much, per layer (sparsity or quality, exactly one: a number, a list with one value per
    layer in order, or {layer name: value, default: value}), which layers (`layers`, select.py
    rules; a rule's `sparsity` overrides the value for its layers), when (a `Schedule`: start, end,
    frequency in epochs or steps), initial_sparsity: s_i of the AGP ramp. `apply` installs
    all-ones masks; each scheduled step prunes further."""

    def __init__(self, sparsity=None, quality=None, layers: Sequence[Mapping] = ALL,
                 interval: str = "epoch", start: int = 0, end: int = 0, frequency: int = 1,
                 initial_sparsity: float = 0.0, key: str = "method.prune", name: str = "prune"):
        super().__init__(name)
        if (sparsity is None) == (quality is None):
            raise ConfigError(f"{key}.sparsity={sparsity}, {key}.quality={quality}: "
                              "set exactly one of them")
        self.schedule = Schedule(start, end, frequency, interval, key)
        ok = isinstance(initial_sparsity, (int, float)) and not isinstance(initial_sparsity, bool)
        if not ok or not 0 <= initial_sparsity <= 1:
            raise ConfigError(f"{key}.initial_sparsity={initial_sparsity}: must be a number in [0, 1]")
        self.sparsity, self.quality, self.key = sparsity, quality, key
        self.rules = parse(layers, f"{key}.layers")
        self.initial_sparsity = float(initial_sparsity)
        self.targets: dict[str, float] = {}

    def apply(self, model: nn.Module) -> nn.Module:
        names = list(choose(model, self.rules, f"{self.key}.layers"))
        value, k = ((self.sparsity, "sparsity") if self.sparsity is not None else (self.quality, "quality"))
        values = from_per_layer(value, names, k, f"{self.key}.{k}", 0.0, 1.0 if k == "sparsity" else 100.0)
        per = plan(model, values + self.rules, key=f"{self.key}.layers")  # `layers` rules override
        self.targets = {n: float(per[n][k]) for n in names}
        install_masks(model, names)
        return model

    def step(self, model: nn.Module, t: int) -> None:
        mods, s = dict(model.named_modules()), self.schedule
        for name, target in self.targets.items():
            if self.quality is not None:
                prune_layer(mods[name], quality=target)
            else:
                prune_layer(mods[name], sparsity=agp(t, s.start, s.end, min(self.initial_sparsity, target), target))

    def __repr__(self) -> str:
        return f"Prune(sparsity={self.sparsity}, quality={self.quality}, {self.schedule})"
