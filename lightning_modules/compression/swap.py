"""Module swapping, not model forks: replace a model's nn.Conv2d / nn.Linear layers in place.

    swap_modules(model, factory, skip=["first", "last"])

`factory(name, layer) -> new module | None` builds the replacement (None keeps the layer). Only
modules whose type is exactly nn.Conv2d or nn.Linear are candidates (an already quantized
QConv2d is not swapped twice). `skip` lists module names (as `model.named_modules()` spells
them, e.g. "features.0", "layer1.0.conv1") plus two tokens: "first" (the first Conv2d/Linear
in registration order: conv1 of a ResNet, the first FC of an MLP) and "last" (the last one: the
classifier). Skipped layers are left untouched (the same object). Works on any nn.Module,
torchvision's models included (registration order is their forward order).
"""
from __future__ import annotations

from typing import Callable, Iterable

from torch import nn

from .errors import ConfigError

TOKENS = ("first", "last")
Factory = Callable[[str, nn.Module], nn.Module | None]


def quantizable(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, module) of every exact nn.Conv2d / nn.Linear, in registration order."""
    return [(n, m) for n, m in model.named_modules() if type(m) in (nn.Conv2d, nn.Linear)]


def resolve_skip(model: nn.Module, skip: Iterable[str] = TOKENS) -> set[str]:
    """The module names that `skip` selects; an unknown name raises ConfigError (one line)."""
    layers = [n for n, _ in quantizable(model)]
    out = set()
    for s in skip:
        if s in TOKENS:
            if layers:
                out.add(layers[0] if s == "first" else layers[-1])
        elif s in layers:
            out.add(s)
        else:
            shown = ", ".join(layers[:8]) + (", ..." if len(layers) > 8 else "")
            raise ConfigError(f"method.skip={s}: not a Conv2d/Linear of the model; "
                              f"valid: first, last, {shown}")
    return out


def swap_modules(model: nn.Module, factory: Factory, skip: Iterable[str] = TOKENS) -> nn.Module:
    """Replace each candidate layer not in `skip` by `factory(name, layer)`; returns `model`."""
    skipped = resolve_skip(model, skip)
    for name, layer in quantizable(model):
        if name in skipped:
            continue
        new = factory(name, layer)
        if new is None or new is layer:
            continue
        if name == "":
            return new  # the model itself is a single layer
        parent_name, _, leaf = name.rpartition(".")
        setattr(model.get_submodule(parent_name), leaf, new)
    return model


def replace_module(model: nn.Module, name: str, new: nn.Module) -> None:
    """Put `new` where the submodule `name` (dotted, as named_modules spells it) is."""
    parent, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, attr, new)
