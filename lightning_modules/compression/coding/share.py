"""Weight sharing by k-means (Han, Mao & Dally 2016, "Deep Compression", Sec. 3).

Each layer's n weights are partitioned into k clusters C_1..C_k minimising
sum_j sum_{w in C_j} |w - c_j|^2 (Eq. 1), one codebook per layer, k = 2^b (paper: b = 8 for
conv, 5 for FC layers). Centroids start linearly spaced over [min w, max w] (Sec. 3.2: the
initialisation that keeps the rare large weights best). Lloyd's algorithm in 1-D is vectorised:
the nearest centroid is found with `bucketize` on the midpoints of the sorted centroids, the
means with `index_add_` / `bincount`.

After clustering the weight is a function of the centroids, W = c[idx] (a
`torch.nn.utils.parametrize` parametrization holding `centroids` and the `idx` buffer), so the
weights stay shared during fine-tuning and autograd gives each centroid the sum of its members'
gradients (Eq. 3): dL/dc_k = sum_{ij} dL/dW_ij 1(I_ij = k).

A pruned layer (a `prune` mask, prune.py) clusters only its kept weights, into 2^b - 1 clusters:
the b-bit code keeps its 2^b-th value for zero (pruned weights and the sparse format's filler
zeros), so a pruned layer has at most 2^b distinct values, zero included, and the mask keeps the
pruned weights exactly zero.

The parametrization is installed inactive by `Share.apply` (W passes through) so that
the parameters never change during a run (optimizer, DDP); at the scheduled time k-means runs,
centroids and indices are broadcast from rank 0 (DDP) and sharing switches on.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn
from torch.nn.utils import parametrize

from ..errors import ConfigError
from ..method import Method
from ..pruning.magnitude import broadcast_, is_masked
from ..schedule import Schedule
from ..select import ALL, choose, from_kind_map, parse


@torch.no_grad()
def kmeans_1d(x: torch.Tensor, k: int, iters: int = 50) -> tuple[torch.Tensor, torch.Tensor]:
    """Lloyd's k-means of the values x with linear initialisation -> (centroids (k,), idx)."""
    x = x.detach().flatten().float()
    if x.numel() == 0:
        return torch.zeros(k), torch.zeros(0, dtype=torch.long)
    c = torch.linspace(float(x.min()), float(x.max()), k)

    def assign(c):
        cs, order = c.sort()
        return order[torch.bucketize(x, (cs[1:] + cs[:-1]) / 2)]

    for _ in range(iters):
        idx = assign(c)
        count = torch.bincount(idx, minlength=k)
        sums = torch.zeros(k).index_add_(0, idx, x)
        new = torch.where(count > 0, sums / count.clamp(min=1), c)  # empty cluster: stays
        if torch.equal(new, c):
            break
        c = new
    return c, assign(c)


class WeightSharing(nn.Module):
    """Parametrization W -> centroids[idx] once `active`; W itself before (inactive)."""

    def __init__(self, shape: torch.Size, k: int):
        super().__init__()
        self.centroids = nn.Parameter(torch.zeros(k))
        self.register_buffer("idx", torch.zeros(shape, dtype=torch.long))
        self.register_buffer("active", torch.zeros((), dtype=torch.bool))

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        # both branches stay in the graph: every parameter gets a gradient (DDP needs that)
        return torch.where(self.active, self.centroids.to(w.dtype)[self.idx], w)

    def right_inverse(self, w: torch.Tensor) -> torch.Tensor:
        return w


def target_name(module: nn.Module) -> str:
    """Sharing acts on the trained weight: weight_orig under a prune mask, else weight."""
    return "weight_orig" if is_masked(module) else "weight"


def sharing(module: nn.Module) -> WeightSharing | None:
    name = target_name(module)
    if parametrize.is_parametrized(module, name):
        for p in module.parametrizations[name]:
            if isinstance(p, WeightSharing):
                return p
    return None


def is_shared(module: nn.Module) -> bool:
    s = sharing(module)
    return s is not None and bool(s.active)


def install(module: nn.Module, bits: int) -> WeightSharing:
    """Add an inactive WeightSharing with 2^b (pruned layer: 2^b - 1) centroids."""
    s = sharing(module)
    if s is None:
        name = target_name(module)
        k = 2 ** bits - (1 if is_masked(module) else 0)
        s = WeightSharing(getattr(module, name).shape, k)
        parametrize.register_parametrization(module, name, s)
    return s


@torch.no_grad()
def share_layer(module: nn.Module, iters: int = 50) -> WeightSharing:
    """k-means on the layer's kept weights; from now on weight = centroids[idx]."""
    s = sharing(module)
    if s is None:
        raise ValueError("share_layer: install() the parametrization first")
    w = module.parametrizations[target_name(module)].original
    members = module.weight_mask.bool() if is_masked(module) else torch.ones_like(w, dtype=torch.bool)
    c, assign = kmeans_1d(w[members], s.centroids.numel(), iters)
    idx = torch.zeros_like(s.idx)
    idx[members] = assign.to(idx.device)
    s.centroids.copy_(broadcast_(c.to(s.centroids)))
    s.idx.copy_(broadcast_(idx))
    s.active.fill_(True)
    return s


class Share(Method):
    """k-means weight sharing as a method part (`method=share`, Deep Compression's second part):
    bits: {conv: b, fc: b}, the index bits per kind of layer; layers: which layers (select.py
    rules; a rule's bits.w gives its layers their own index bits, 1..16); k-means at the start of
    epoch/step `start` (a one-step `Schedule`), centroids fine-tuned afterwards; iters: Lloyd
    iterations at most."""

    def __init__(self, bits: Mapping[str, int] | None = None, layers: Sequence[Mapping] = ALL,
                 interval: str = "epoch", start: int = 0, iters: int = 50, key: str = "method.share",
                 name: str = "share"):
        super().__init__(name)
        bits = dict(bits or {"conv": 8, "fc": 5})
        if set(bits) != {"conv", "fc"}:
            raise ConfigError(f"{key}.bits={bits}: needs exactly the keys conv and fc")
        for k, v in bits.items():
            if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= 16:
                raise ConfigError(f"{key}.bits.{k}={v}: must be an integer in 1..16")
        if isinstance(iters, bool) or not isinstance(iters, int) or iters < 1:
            raise ConfigError(f"{key}.iters={iters}: must be an integer >= 1")
        self.schedule = Schedule(start, None, 1, interval, key)
        self.bits, self.iters, self.key = bits, iters, key
        self.rules = from_kind_map(bits, "bits.w", f"{key}.bits") + parse(layers, f"{key}.layers")
        self.names: list[str] = []

    def apply(self, model: nn.Module) -> nn.Module:
        chosen = choose(model, self.rules, f"{self.key}.layers")
        for name, settings in chosen.items():
            m, b = model.get_submodule(name), settings["bits"]["w"]
            if not 1 <= b <= 16:
                raise ConfigError(f"{self.key}.layers: bits.w={b} (layer {name}): must be in 1..16")
            if b == 1 and is_masked(m):
                raise ConfigError(f"{self.key}.bits=1 (layer {name}): a pruned layer needs >= 2 "
                                  "bits (one code is reserved for zero)")
            install(m, b)
        self.names = list(chosen)
        return model

    def step(self, model: nn.Module, t: int) -> None:
        mods = dict(model.named_modules())
        for name in self.names:
            share_layer(mods[name], self.iters)

    def __repr__(self) -> str:
        return f"Share(bits={self.bits}, {self.schedule})"
