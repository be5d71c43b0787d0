"""Module swapping, not model forks: replace a model's chosen layers in place.

    names = select.selected(select.plan(model, rules))   # which layers (compression/select.py)
    swap_modules(model, factory, names)

`factory(name, layer) -> new module | None` builds the replacement (None keeps the layer); the
layers not named are left untouched (the same objects). Works on any nn.Module, torchvision's
models included (`named_modules()` names, e.g. "features.0", "layer1.0.conv1").
"""
from __future__ import annotations

from typing import Callable, Iterable

from torch import nn

Factory = Callable[[str, nn.Module], nn.Module | None]


def swap_modules(model: nn.Module, factory: Factory, names: Iterable[str]) -> nn.Module:
    """Replace each layer in `names` by `factory(name, layer)`; returns `model` (the new module
    itself when the model is a single layer, name "")."""
    for name in list(names):
        layer = model.get_submodule(name)
        new = factory(name, layer)
        if new is None or new is layer:
            continue
        if name == "":
            return new
        replace_module(model, name, new)
    return model


def replace_module(model: nn.Module, name: str, new: nn.Module) -> None:
    """Put `new` where the submodule `name` (dotted, as named_modules spells it) is."""
    parent, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, attr, new)
