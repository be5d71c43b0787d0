"""Structured sparsity by group lasso (Wen, Wu, Wang, Chen & Li 2016, "Learning Structured
Sparsity in Deep Neural Networks", SSL): filters and channels driven to exactly zero in training,
then removed.

A group is one feature map c of a prunable producer (filter_prune.channel_groups: the inner
channels of each CifarResNet block, conv1 and conv2 of LeNet-5): its filter W_p[c] (and bias),
its BatchNorm affine (gamma_c, beta_c) and the consumer's input channel W_q[:, c] (a Linear
consumer: the columns the channel feeds). SSL's filter-wise and channel-wise terms of one feature
map are one group here: a feature map whose group is zero has no effect at all (its outgoing
weights are zero), so removing it leaves the outputs exactly as they were. The regulariser is

    R(W) = lambda * sum_g ||W_g||_2        (the plain L2 norm of each group's weights)

`proximal: true` (default): the loss stays cross-entropy and after every optimizer step each
group is shrunk by its proximal operator, the group soft-threshold with step t = lr * lambda:

    W_g <- W_g * max(0, 1 - t / ||W_g||_2)

so a group whose norm falls below t becomes exactly zero (proximal gradient descent for SGD; the
same shrinkage after an Adam step). It runs in the method's `after_step(model, lr)` hook (the
harness calls it after every optimizer step, with that step's learning rate). DDP: every
rank applies the same shrinkage to the same weights. `proximal: false`: R is added to the loss
(subgradient) and groups only become small.

`finalize` removes the groups with ||W_g|| <= threshold (zeroed first; exact for the groups the
proximal step zeroed) with filter_prune.shrink, keeping at least `min_channels` per producer (the
largest groups): smaller Conv2d / BatchNorm2d / Linear layers, fewer params and FLOPs. The file
is filter pruning's (FilterPrune.export / load: kept channel counts + the small state dict).
"""
from __future__ import annotations

import copy
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from .channels import Group, channel_groups, shrink, width
from .filters import FilterPrune
from ..method import Method


def members(model: nn.Module, g: Group) -> list[tuple[torch.Tensor, int]]:
    """The tensors of group g with the dimension that indexes its channels: producer weight and
    bias (0), BatchNorm weight and bias (0), consumer weight viewed (out, C, rest) (1)."""
    p, q = model.get_submodule(g.producer), model.get_submodule(g.consumer)
    out = [(p.weight, 0)] + ([(p.bias, 0)] if p.bias is not None else [])
    if g.norm is not None:
        bn = model.get_submodule(g.norm)
        out += [(t, 0) for t in (bn.weight, bn.bias) if t is not None]
    return out + [(q.weight, 1)]


def group_matrix(model: nn.Module, g: Group) -> torch.Tensor:
    """(C, n_g): row c holds every weight of feature map c's group (differentiable)."""
    C = width(model.get_submodule(g.producer))
    rows = []
    for t, dim in members(model, g):
        t = t.reshape(t.shape[0], C, -1) if dim == 1 else t.reshape(C, -1)
        rows.append(t.transpose(0, 1).reshape(C, -1) if dim == 1 else t)
    return torch.cat(rows, dim=1)


def group_norms(model: nn.Module) -> list[torch.Tensor]:
    """||W_g||_2 per feature map, one (C,) tensor per producer."""
    return [torch.linalg.vector_norm(group_matrix(model, g), dim=1) for g in channel_groups(model)]


def penalty(model: nn.Module, strength: float) -> torch.Tensor:
    """lambda * sum_g ||W_g||_2 (vector_norm: subgradient 0 at a zero group, never NaN)."""
    return strength * sum(n.sum() for n in group_norms(model))


@torch.no_grad()
def scale_groups(model: nn.Module, scales: list[torch.Tensor]) -> None:
    """W_g <- W_g * scale_g for every group (in place)."""
    for g, s in zip(channel_groups(model), scales):
        for t, dim in members(model, g):
            C = s.numel()
            view = t.view(t.shape[0], C, -1) if dim == 1 else t.view(C, -1)
            view.mul_(s.to(t.device, t.dtype).view(*([1] * dim), C, 1))


@torch.no_grad()
def prox(model: nn.Module, step: float) -> None:
    """Group soft-threshold with threshold `step` (= lr * lambda)."""
    norms = group_norms(model)
    scale_groups(model, [torch.clamp(1 - step / n.clamp_min(1e-30), min=0) for n in norms])


def _number(key: str, v, lo: float) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or v < lo:
        raise ConfigError(f"method.{key}={v}: must be a number >= {lo:g}")
    return float(v)


class GroupLasso(Method):
    """`method=group_lasso`: strength (lambda), proximal, threshold, min_channels."""

    def __init__(self, name: str = "group_lasso", strength: float = 1.5, proximal: bool = True,
                 threshold: float = 0.0, min_channels: int = 1):
        super().__init__(name)
        self.strength = _number("strength", strength, 0)
        self.threshold = _number("threshold", threshold, 0)
        if isinstance(min_channels, bool) or not isinstance(min_channels, int) or min_channels < 1:
            raise ConfigError(f"method.min_channels={min_channels}: must be an integer >= 1")
        self.proximal, self.min_channels = bool(proximal), min_channels
        self.net: nn.Module | None = None
        self.removed: dict[str, int] = {}  # feature maps removed per producer (finalize)

    def apply(self, model: nn.Module) -> nn.Module:
        channel_groups(model)  # a ConfigError for an unsupported model, before training
        self.net = model
        return model

    def after_step(self, model: nn.Module, lr: float) -> None:
        """The proximal step (group soft-threshold at lr * lambda) after every optimizer step."""
        if self.proximal:
            prox(model, lr * self.strength)

    def loss(self, logits, target, batch):
        if self.proximal or self.net is None:
            return None
        return F.cross_entropy(logits, target) + penalty(self.net, self.strength)

    @torch.no_grad()
    def keep(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """Per producer, the sorted channels kept: norm > threshold, at least min_channels."""
        out = {}
        for g, n in zip(channel_groups(model), group_norms(model)):
            n = n.float().cpu()
            top = torch.argsort(n, descending=True, stable=True)[:min(self.min_channels, len(n))]
            alive = (n > self.threshold).index_fill_(0, top, True)
            out[g.producer] = alive.nonzero().flatten()
        return out

    @torch.no_grad()
    def finalize(self, model: nn.Module) -> nn.Module:
        keep = self.keep(model)
        scale_groups(model, [torch.zeros(width(model.get_submodule(p)), device=idx.device)
                             .index_fill_(0, idx, 1.0) for p, idx in keep.items()])
        self.removed = {p: width(model.get_submodule(p)) - len(idx) for p, idx in keep.items()}
        return shrink(model, keep)

    def export(self, model: nn.Module, path: str | Path) -> Path:
        """Filter pruning's file of the finalized net (finalize is idempotent: a copy is used)."""
        return FilterPrune().export(self.finalize(copy.deepcopy(model)), path)

    def load(self, model: nn.Module, path: str | Path) -> nn.Module:
        return FilterPrune().load(model, path)
