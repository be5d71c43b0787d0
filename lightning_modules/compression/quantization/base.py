"""The base of the quantization methods: a bits triple checked against what the method can do,
quantizers chosen per role, and module swapping (every Conv2d/Linear the method selects becomes a
QConv2d/QLinear with them); the file is the packed format (pack.py). The concrete methods
(methods.py) only say which quantizer each role gets.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import partial
from pathlib import Path

from torch import nn

from ..errors import ConfigError
from ..method import Method
from ..select import DEFAULT_QUANT_RULES, choose, parse
from ..swap import swap_modules
from .pack import export_packed, load_packed
from .qlayers import QConv2d, QLayer, QLinear

FULL = range(1, 33)


def _describe(valid: Sequence[int]) -> str:
    v = sorted(valid)
    runs, start = [], v[0]
    for a, b in zip(v, v[1:] + [None]):
        if b != a + 1:
            runs.append(str(a) if a == start else f"{start}..{a}")
            start = b
    return ", ".join(runs)


def check_bits(method: str, bits: Mapping, valid: Mapping[str, Sequence[int]]) -> dict[str, int]:
    """bits {w, a, g} -> dict of ints, or ConfigError: 'bits.w=3: not valid for method xnor; valid: 1'."""
    if not isinstance(bits, Mapping):
        raise ConfigError(f"bits={bits!r}: must be a mapping with keys w, a, g")
    out = {}
    for key in ("w", "a", "g"):
        value = bits.get(key)
        ok = isinstance(value, int) and not isinstance(value, bool) and value in valid[key]
        if not ok:
            raise ConfigError(f"bits.{key}={value}: not valid for method {method}; "
                              f"valid: {_describe(valid[key])}")
        out[key] = value
    return out


class QuantMethod(Method):
    """Base of the quantization methods: subclasses set VALID and the three role builders.

    bits: the method's (W,A,G) triple; layers: which layers, at which bits (select.py rules,
    later override earlier; a rule's `bits` gives its layers their own triple: mixed precision,
    each layer's bits checked against VALID); input_bn: BatchNorm before each quantized layer."""

    VALID: dict[str, Sequence[int]] = {"w": FULL, "a": FULL, "g": FULL}
    weight_clip: tuple[float, float] | None = None

    def __init__(self, name: str, bits: Mapping, layers: Sequence[Mapping] = DEFAULT_QUANT_RULES,
                 input_bn: bool = False):
        super().__init__(name)
        self.bits = check_bits(name, bits, self.VALID)
        self.rules = parse(layers, "method.layers")
        for i, r in enumerate(self.rules):
            if "bits" in r.settings:
                try:
                    check_bits(name, {**self.bits, **r.settings["bits"]}, self.VALID)
                except ConfigError as e:
                    raise ConfigError(f"method.layers[{i}].{e}") from None
        if not isinstance(input_bn, bool):
            raise ConfigError(f"method.input_bn={input_bn}: must be true or false")
        self.input_bn = input_bn

    # roles: each returns a quantizer (callable or module) for this layer at its bits, or None
    def weight_quant(self, layer: nn.Module, bits: Mapping[str, int]):
        return None

    def act_quant(self, layer: nn.Module, bits: Mapping[str, int]):
        return None

    def grad_quant(self, layer: nn.Module, bits: Mapping[str, int]):
        return None

    def _swap(self, name: str, layer: nn.Module, plan: dict, channels: dict[str, int]) -> nn.Module:
        bits = {**self.bits, **plan[name].get("bits", {})}
        cls = QConv2d if isinstance(layer, nn.Conv2d) else QLinear
        bn = channels.get(name, True) if self.input_bn else False
        q = cls.from_float(layer, weight_quant=self.weight_quant(layer, bits),
                           act_quant=self.act_quant(layer, bits), grad_quant=self.grad_quant(layer, bits),
                           weight_clip=self.weight_clip, input_bn=bn)
        q.bits = {"w": bits["w"] if q.weight_quant is not None else 32,
                  "a": bits["a"] if q.act_quant is not None else 32,
                  "g": bits["g"] if q.grad_quant is not None else 32}
        return q

    def apply(self, model: nn.Module) -> nn.Module:
        plan = choose(model, self.rules)
        model = swap_modules(model, partial(self._swap, plan=plan, channels=map_channels(model)), plan)
        for m in model.modules():
            if isinstance(m, QLayer):
                m.clip_()
        return model

    def after_step(self, model: nn.Module, lr: float) -> None:
        """Latent weights back into `weight_clip` after every step (BinaryConnect, BNN)."""
        if self.weight_clip is not None:
            for m in model.modules():
                if isinstance(m, QLayer):
                    m.clip_()

    def layer_bits(self, model: nn.Module) -> dict[str, dict[str, int]]:
        return quantized_bits(model)

    def export(self, model: nn.Module, path: str | Path) -> Path:
        return export_packed(model, path)

    def load(self, model: nn.Module, path: str | Path) -> nn.Module:
        if not any(isinstance(m, QLayer) for m in model.modules()):
            model = self.apply(model)
        return load_packed(model, path)

    def __repr__(self) -> str:
        b = self.bits
        return f"{type(self).__name__}(W{b['w']}A{b['a']}G{b['g']}, {len(self.rules)} layer rules)"


def quantized_bits(model: nn.Module) -> dict[str, dict[str, int]]:
    """{name: {w, a, g}} of every quantized layer, as its method swapped it in (`QLayer.bits`: the
    layer's own triple, 32 for the roles it leaves in float)."""
    return {n: dict(m.bits) for n, m in model.named_modules() if isinstance(m, QLayer)}


def map_channels(model: nn.Module) -> dict[str, int]:
    """Linear layers whose input is a flattened conv map -> the map's channel count: the
    out_channels C of the last Conv2d registered before the layer, when C divides in_features
    (LeNet-5's ip1: 800 = 50 x 4 x 4; a ResNet's fc after global pooling: C = in_features)."""
    out, last = {}, None
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            last = m.out_channels
        elif isinstance(m, nn.Linear) and last and m.in_features % last == 0:
            out[name] = last
    return out


def chan_dim(layer: nn.Module) -> int:
    return 1 if isinstance(layer, nn.Conv2d) else -1
