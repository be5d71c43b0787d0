"""Which channels are coupled, and removing them: the structured-pruning side of a model.

A *group* is the output channels of a producer layer (with its BatchNorm) and the matching inputs
of the consumer that reads them. The groups are declared by the model family itself (a
`channel_groups()` method returning (producer, norm or None, consumer) triples: CifarResNet's
inner block channels, LeNet-5's two convs, the MLPs' hidden units, VGG-small), never guessed from
its class here. `shrink` keeps chosen channels of every group: smaller Conv2d / BatchNorm2d /
Linear layers, exact when the removed channels were zero. Used by filter pruning (filters.py) and
group lasso (group_lasso.py).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..errors import ConfigError
from ..swap import replace_module


@dataclass(frozen=True)
class Group:
    """The output channels of `producer` (and of its BatchNorm `norm`), read by `consumer`: a
    Conv2d (its input channels) or a Linear (channel c owns its input columns c*p .. c*p+p-1)."""
    producer: str
    norm: str | None
    consumer: str

    @property
    def site(self) -> str:
        return self.norm or self.producer


def channel_groups(model: nn.Module) -> list[Group]:
    """The prunable groups the model declares: its class's `channel_groups()` -> [(producer,
    norm or None, consumer), ...] module names (e.g. CifarResNet: only the inner channels of each
    block, its outputs being tied to the parameter-free shortcut and the stem)."""
    declare = getattr(type(model), "channel_groups", None)
    if not callable(declare):
        raise ConfigError(f"model={type(model).__name__}: filter pruning needs a model that "
                          f"declares its channel_groups(); supported: {', '.join(_declaring())}")
    return [Group(*g) for g in declare(model)]


def _declaring(cls: type = nn.Module) -> list[str]:
    """The loaded model classes that declare channel_groups (sorted names)."""
    out = set()
    for sub in cls.__subclasses__():
        out |= {sub.__name__} if "channel_groups" in vars(sub) else set()
        out |= set(_declaring(sub))
    return sorted(out)


def width(m: nn.Module) -> int:
    """Output channels of a Conv2d, output features of a Linear (a group's channel count)."""
    return m.weight.shape[0]


def sliced(m: nn.Module, out_idx=None, in_idx=None) -> nn.Module:
    """A new Conv2d / Linear / BatchNorm2d holding m's output channels `out_idx` and input
    channels (or, for a Linear, input columns) `in_idx`; None keeps all."""
    w = m.weight if out_idx is None else m.weight[out_idx]
    w = w if in_idx is None else w[:, in_idx]
    kw = {"device": w.device, "dtype": w.dtype}
    if isinstance(m, nn.BatchNorm2d):
        new = nn.BatchNorm2d(len(w), m.eps, m.momentum, m.affine, m.track_running_stats, **kw)
    elif isinstance(m, nn.Conv2d):
        assert m.groups == 1, "grouped convs are not in any supported model"
        new = nn.Conv2d(w.shape[1], w.shape[0], m.kernel_size, m.stride, m.padding, m.dilation,
                        1, m.bias is not None, m.padding_mode, **kw)
    else:
        new = nn.Linear(w.shape[1], w.shape[0], m.bias is not None, **kw)
    keep, src = (out_idx if out_idx is not None else slice(None)), m.state_dict()
    for key, dst in new.state_dict().items():  # weight, bias, running_mean/var, num_batches_tracked
        dst.copy_(w if key == "weight" else src[key] if src[key].dim() == 0 else src[key][keep])
    return new.train(m.training).requires_grad_(m.weight.requires_grad)


@torch.no_grad()
def shrink(model: nn.Module, keep: dict[str, torch.Tensor]) -> nn.Module:
    """Keep channels keep[producer] of every group (sorted indices): smaller layers (producer, its
    norm, the consumer's inputs), in place; the result is a model of the same classes."""
    groups = channel_groups(model)
    for g in groups:
        idx = keep[g.producer].to(torch.long).cpu()
        mods = dict(model.named_modules())
        replace_module(model, g.producer, sliced(mods[g.producer], out_idx=idx))
        if g.norm is not None:
            replace_module(model, g.norm, sliced(mods[g.norm], out_idx=idx))
        cons = mods[g.consumer]
        if isinstance(cons, nn.Linear):
            per = cons.in_features // width(mods[g.producer])
            idx = (idx[:, None] * per + torch.arange(per)).flatten()
        replace_module(model, g.consumer, sliced(cons, in_idx=idx))
    return model
