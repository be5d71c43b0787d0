"""Filter pruning (Molchanov, Tyree, Karras, Aila & Kautz 2017, "Pruning Convolutional Neural
Networks for Resource Efficient Inference"): Taylor criterion, iterative, channels removed.

A *group* is the output channels of a producer conv (with its BatchNorm) and the matching inputs
of the consumer that reads them (`channel_groups`: the model class declares them).
`apply` puts a `ChannelMask` ([C] buffer of ones) right after the producer (after its BatchNorm),
so a pruned channel is exactly zero downstream. In training the mask accumulates the Taylor
criterion of its feature map z (Eq. 7, dL/dz from a tensor hook), per example and averaged over
the batch (Sec. 2.2), summed over the batches since the last pruning step:

    Theta_c = mean_b | mean_{h,w} z[b,c,h,w] * dL/dz[b,c,h,w] |

The k-th of the n pruning steps (t = start, start + frequency, ..., end) ranks the kept channels
of all groups by Theta / ||Theta||_2 of their group (Eq. 8) and masks the lowest until the FLOPs
of the physical model are at most 1 - (1 - flops_target) k / n of the original (linear; the last
step reaches flops_target). A group keeps `min_channels`; a masked channel stays masked. FLOPs
count conv and linear layers as torch.utils.flop_counter does (a multiply-add = 2), from kept
channels and output sizes recorded in the first forward after `apply`. DDP: Theta is summed over
ranks before ranking, the masks are then broadcast from rank 0 (`broadcast_`).

`finalize` removes the masked channels (smaller Conv2d / BatchNorm2d / Linear; exact, they were
zero); `export` writes that state dict and the kept counts; `load` shrinks a fresh model to match.
"""
from __future__ import annotations

import copy
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from .. import container
from ..errors import ConfigError, FileFormatError
from ..method import Method, load_state
from .channels import Group, channel_groups, shrink, width
from .magnitude import broadcast_
from ..schedule import Schedule

KIND = "filter_prune"  # container.py kind (before it: MAGIC LWBFP1 | u64 | torch.save | crc32)
POSITIONS = "_filter_prune_positions"  # module attribute: output positions per sample (H*W)


class ChannelMask(nn.Module):
    """z -> z * mask (per channel); in training it also accumulates Theta (see the module doc)."""

    def __init__(self, channels: int, device=None):
        super().__init__()
        self.register_buffer("mask", torch.ones(channels, device=device))
        self.score: torch.Tensor | None = None  # not a buffer: DDP must not overwrite a rank's sum

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        out = z * self.mask.to(z.dtype).view(1, -1, *[1] * (z.dim() - 2))
        if self.training and out.requires_grad:
            saved = out.detach()
            out.register_hook(lambda g: self._accumulate(saved, g))
        return out

    @torch.no_grad()
    def _accumulate(self, z: torch.Tensor, g: torch.Tensor) -> None:
        zg = z.float() * g.float()
        theta = (zg.mean(tuple(range(2, zg.dim()))) if zg.dim() > 2 else zg).abs().mean(0)
        theta = torch.where(torch.isfinite(theta), theta, 0.0)  # an overflowed fp16 step
        self.score = theta if self.score is None else self.score + theta

    @torch.no_grad()
    def take_score(self) -> torch.Tensor:
        """Theta summed over batches (and ranks); the accumulator starts again from zero."""
        s = self.score if self.score is not None else torch.zeros_like(self.mask)
        self.score = None
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(s)
        return s


def _masked(module: nn.Module, args, out: torch.Tensor) -> torch.Tensor:
    return module.channel_mask(out)


def _record_positions(module: nn.Module, args, out: torch.Tensor) -> None:
    """One-off forward hook: output positions per sample (H*W of a conv, 1 for a flat linear)."""
    setattr(module, POSITIONS, out[0].numel() // out.shape[1 if out.dim() > 2 else -1])
    _drop_hooks(module, _record_positions)


def _drop_hooks(module: nn.Module, fn) -> None:
    for key in [k for k, h in module._forward_hooks.items() if h is fn]:
        del module._forward_hooks[key]


def masks(model: nn.Module, groups: list[Group]) -> list[ChannelMask | None]:
    mods = dict(model.named_modules())
    return [getattr(mods[g.site], "channel_mask", None) for g in groups]


def _cost_terms(model: nn.Module, groups: list[Group]) -> list[tuple]:
    """Per Conv2d/Linear: (2 * kernel * positions, in group, in factor, out group, out factor);
    its FLOPs are coef * (kept[in group] or 1) * in factor * (kept[out group] or 1) * out factor."""
    mods = dict(model.named_modules())
    out_of = {g.producer: i for i, g in enumerate(groups)}
    in_of = {g.consumer: i for i, g in enumerate(groups)}
    terms = []
    for name, m in mods.items():
        if not isinstance(m, (nn.Conv2d, nn.Linear)):
            continue
        if not hasattr(m, POSITIONS):
            raise RuntimeError(f"{name}: output size unknown; run one forward pass after apply")
        conv = isinstance(m, nn.Conv2d)
        c_in, c_out = (m.in_channels, m.out_channels) if conv else (m.in_features, m.out_features)
        kernel = m.weight[0, 0].numel() if conv else 1  # weight [out, in/groups, kh, kw]
        coef = 2 * kernel * getattr(m, POSITIONS) // (m.groups if conv else 1)
        gi, go = in_of.get(name), out_of.get(name)
        per = c_in // width(mods[groups[gi].producer]) if gi is not None else c_in
        terms.append((coef, gi, per, go, 1 if go is not None else c_out))
    return terms


def _flops(terms: list[tuple], kept: torch.Tensor) -> torch.Tensor:
    """FLOPs for kept channel counts `kept` [..., groups] (int64, exact)."""
    one = torch.ones_like(kept[..., 0])
    total = torch.zeros_like(one)
    for coef, gi, per, go, c_out in terms:
        total = total + coef * (kept[..., gi] if gi is not None else one) * per \
            * (kept[..., go] if go is not None else one) * c_out
    return total


@torch.no_grad()
def flops(model: nn.Module) -> int:
    """Forward FLOPs of one sample of the physical model the masks describe (of the model itself
    when it has no masks): what FlopCounterMode counts once the masked channels are removed."""
    groups = channel_groups(model)
    mods = dict(model.named_modules())
    kept = [int(m.mask.sum()) if m is not None else width(mods[g.producer])
            for g, m in zip(groups, masks(model, groups))]
    return int(_flops(_cost_terms(model, groups), torch.tensor(kept)))


def strip_masks(model: nn.Module) -> nn.Module:
    """Masks, hooks and recorded sizes removed: a plain model of the same classes."""
    for m in model.modules():
        _drop_hooks(m, _masked)
        _drop_hooks(m, _record_positions)
        m._modules.pop("channel_mask", None)
        m.__dict__.pop(POSITIONS, None)
    return model


class FilterPrune(Method):
    """`method=filter_prune`. flops_target: fraction of the FLOPs kept at `end`; interval,
    start, end, frequency: the pruning steps (a `Schedule`, start >= 1); min_channels: per group."""

    STATE = Method.STATE + ("history",)

    def __init__(self, name: str = "filter_prune", flops_target: float = 0.5, interval: str = "epoch",
                 start: int = 1, end: int = 1, frequency: int = 1, min_channels: int = 1):
        super().__init__(name)
        ok = isinstance(flops_target, (int, float)) and not isinstance(flops_target, bool)
        if not ok or not 0 < flops_target <= 1:
            raise ConfigError(f"method.flops_target={flops_target}: must be a number in (0, 1] "
                              "(fraction of the original FLOPs kept)")
        if isinstance(min_channels, bool) or not isinstance(min_channels, int) or min_channels < 1:
            raise ConfigError(f"method.min_channels={min_channels}: must be an integer >= 1")
        self.schedule = Schedule(start, end, frequency, interval, "method", min_start=1)
        self.flops_target, self.min_channels = float(flops_target), min_channels
        self.history: list[dict] = []  # one row per pruning step: t, target, reached FLOPs fraction

    def apply(self, model: nn.Module) -> nn.Module:
        groups = channel_groups(model)
        mods = dict(model.named_modules())
        for g in groups:
            site = mods[g.site]
            if getattr(site, "channel_mask", None) is None:
                site.channel_mask = ChannelMask(width(mods[g.producer]), site.weight.device)
                site.register_forward_hook(_masked)
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)) and _record_positions not in m._forward_hooks.values():
                m.register_forward_hook(_record_positions)
        return model

    def step(self, model: nn.Module, t: int) -> None:
        """The k-th of the n pruning steps: FLOPs down to 1 - (1 - flops_target) k / n."""
        times = self.schedule.times
        target = 1.0 - (1.0 - self.flops_target) * (times.index(t) + 1) / len(times)
        reached = self.prune_to(model, target)
        self.history.append({"t": t, "target": target, "flops_fraction": reached})

    @torch.no_grad()
    def prune_to(self, model: nn.Module, fraction: float) -> float:
        """Mask the lowest-ranked channels until FLOPs <= fraction of the unpruned model's;
        returns the fraction reached. Theta is reset."""
        groups = channel_groups(model)
        cms = masks(model, groups)
        if any(cm is None for cm in cms):
            raise RuntimeError("filter pruning: call apply(model) before pruning")
        terms = _cost_terms(model, groups)
        full = torch.tensor([cm.mask.numel() for cm in cms])
        kept = torch.tensor([int(cm.mask.sum()) for cm in cms])
        base = int(_flops(terms, full))
        limit = fraction * base
        floor = int(_flops(terms, torch.minimum(full, torch.tensor(self.min_channels))))
        if floor > self.flops_target * base:
            raise ConfigError(f"method.flops_target={self.flops_target}: {type(model).__name__} "
                              f"keeps at least {floor / base:.4f} of its FLOPs with "
                              f"method.min_channels={self.min_channels}")
        score, group, channel = [], [], []
        for i, cm in enumerate(cms):
            theta = cm.take_score().cpu()
            norm = theta.norm()
            theta = theta / norm if norm > 0 else theta
            idx = cm.mask.nonzero().flatten().cpu()
            order = idx[torch.argsort(theta[idx], descending=True, stable=True)]
            free = order[min(self.min_channels, len(order)):]  # the best min_channels stay
            score.append(theta[free]), channel.append(free), group.append(torch.full_like(free, i))
        score, group, channel = torch.cat(score), torch.cat(group), torch.cat(channel)
        order = torch.argsort(score, stable=True)
        group, channel = group[order], channel[order]
        removed = nn.functional.one_hot(group, len(groups)).cumsum(0)  # [candidates, groups]
        after = _flops(terms, kept - removed)  # FLOPs after removing the first i+1 candidates
        n = 0 if int(_flops(terms, kept)) <= limit else min(int((after > limit).sum()) + 1, len(after))
        for i, cm in enumerate(cms):
            drop = channel[:n][group[:n] == i]
            cm.mask[drop.to(cm.mask.device)] = 0.0
            broadcast_(cm.mask)
        return flops(model) / base

    def finalize(self, model: nn.Module) -> nn.Module:
        groups = channel_groups(model)
        keep = {g.producer: cm.mask.nonzero().flatten() for g, cm in zip(groups, masks(model, groups))
                if cm is not None}
        return strip_masks(shrink(model, keep)) if keep else model

    def export(self, model: nn.Module, path: str | Path) -> Path:
        """A container.py file of kind "filter_prune": {model, groups (kept channels), state}."""
        if any(cm is not None for cm in masks(model, channel_groups(model))):
            model = self.finalize(copy.deepcopy(model))
        mods = dict(model.named_modules())
        return container.write(path, KIND, {
            "model": type(model).__name__,
            "groups": {g.producer: width(mods[g.producer]) for g in channel_groups(model)},
            "state": {k: v.detach().cpu() for k, v in model.state_dict().items()}})

    def load(self, model: nn.Module, path: str | Path) -> nn.Module:
        """A full-size model (untouched) -> a copy shrunk to the file's shapes, with its weights."""
        payload, fail = container.read(path, KIND), lambda why: FileFormatError(f"{path}: {why}")
        groups = channel_groups(model)
        counts = payload.get("groups")
        if not isinstance(counts, dict) or not isinstance(payload.get("state"), dict):
            raise fail("inconsistent content (groups and state must be dicts)")
        if payload.get("model") != type(model).__name__ or list(counts) != [g.producer for g in groups]:
            raise fail(f"does not match the model (a {payload.get('model')} file, a "
                       f"{type(model).__name__} model)")
        out = copy.deepcopy(model)
        mods = dict(out.named_modules())
        for g in groups:
            if not isinstance(counts[g.producer], int) or not 1 <= counts[g.producer] <= width(mods[g.producer]):
                raise fail(f"does not match the model ({g.producer}: {counts[g.producer]} channels)")
        return load_state(shrink(out, {p: torch.arange(k) for p, k in counts.items()}), payload["state"], path)
