"""Quantization methods: each one a choice of quantizers per role, applied by module swapping.

    method=xnor bits=w1a1g32     ->  XNOR(bits={"w": 1, "a": 1, "g": 32}, skip=["first", "last"])

A method validates its bits triple at construction (one-line ConfigError naming the key, the
value and what is valid), swaps every Conv2d/Linear not in `skip` for a QConv2d/QLinear with its
quantizers, and exports/loads the packed format (pack.py). 32 bits for a role means that role
stays full precision.

| name                        | paper                            | W         | A        | G     |
|-----------------------------|----------------------------------|-----------|----------|-------|
| binaryconnect(_stochastic)  | Courbariaux et al. 2015          | 1         | 32       | 32    |
| bnn                         | Courbariaux, Hubara et al. 2016  | 1         | 1        | 32    |
| bwn / xnor                  | Rastegari et al. 2016            | 1         | 32 / 1   | 32    |
| dorefa                      | Zhou et al. 2016                 | 1..32     | 1..32    | 1..32 |
| twn / ttq                   | Li et al. 2016 / Zhu et al. 2017 | 2         | 32       | 32    |
| pow2                        | powers of two (INQ's codebook)   | 2..8      | 1..32    | 32    |
| uniform                     | k-bit symmetric uniform          | 1..32     | 1..32    | 32    |
| lqnet                       | Zhang et al. 2018                | 1..8, 32  | 1..8, 32 | 32    |
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import partial
from pathlib import Path

from torch import nn

from .errors import ConfigError
from . import quantizers as Q
from .learned_quantizers import LQQuantizer, TTQQuantizer
from .method import Method
from .pack import export_packed, load_packed
from .qlayers import QConv2d, QLayer, QLinear
from .swap import TOKENS, swap_modules

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
    """Base of the quantization methods: subclasses set VALID and the three role builders."""

    VALID: dict[str, Sequence[int]] = {"w": FULL, "a": FULL, "g": FULL}
    weight_clip: tuple[float, float] | None = None

    def __init__(self, name: str, bits: Mapping, skip: Sequence[str] = TOKENS,
                 input_bn: bool = False):
        super().__init__(name)
        self.bits = check_bits(name, bits, self.VALID)
        self.skip = list(skip)
        if not isinstance(input_bn, bool):
            raise ConfigError(f"method.input_bn={input_bn}: must be true or false")
        self.input_bn = input_bn

    # roles: each returns a quantizer (callable or module) for this layer, or None
    def weight_quant(self, layer: nn.Module):
        return None

    def act_quant(self, layer: nn.Module):
        return None

    def grad_quant(self, layer: nn.Module):
        return None

    # which Conv2d/Linear layers the method quantizes (besides `skip`): "all", or "pointwise"
    # (1x1 convs with groups=1 only: SSPQ's quantized point-wise convs)
    layers: str = "all"

    def selects(self, layer: nn.Module) -> bool:
        if self.layers == "all":
            return True
        return isinstance(layer, nn.Conv2d) and layer.kernel_size == (1, 1) and layer.groups == 1

    def _swap(self, name: str, layer: nn.Module, channels: dict[str, int]) -> nn.Module | None:
        if not self.selects(layer):
            return None
        cls = QConv2d if isinstance(layer, nn.Conv2d) else QLinear
        bn = channels.get(name, True) if self.input_bn else False
        return cls.from_float(layer, weight_quant=self.weight_quant(layer),
                              act_quant=self.act_quant(layer), grad_quant=self.grad_quant(layer),
                              weight_clip=self.weight_clip, input_bn=bn)

    def apply(self, model: nn.Module) -> nn.Module:
        channels = map_channels(model)
        model = swap_modules(model, partial(self._swap, channels=channels), self.skip)
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
        return quantized_bits(model, self.bits)

    def export(self, model: nn.Module, path: str | Path) -> Path:
        return export_packed(model, path)

    def load(self, model: nn.Module, path: str | Path) -> nn.Module:
        if not any(isinstance(m, QLayer) for m in model.modules()):
            model = self.apply(model)
        return load_packed(model, path)

    def __repr__(self) -> str:
        b = self.bits
        return f"{type(self).__name__}(W{b['w']}A{b['a']}G{b['g']}, skip={self.skip})"


def quantized_bits(model: nn.Module, bits: Mapping) -> dict[str, dict[str, int]]:
    """{name: {w, a, g}} of every quantized layer: the method's bits for each role its QLayer
    quantizes, 32 for the roles it leaves in float."""
    return {n: {"w": int(bits["w"]) if m.weight_quant is not None else 32,
                "a": int(bits["a"]) if m.act_quant is not None else 32,
                "g": int(bits["g"]) if m.grad_quant is not None else 32}
            for n, m in model.named_modules() if isinstance(m, QLayer)}


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


def _chan_dim(layer: nn.Module) -> int:
    return 1 if isinstance(layer, nn.Conv2d) else -1


class BinaryConnect(QuantMethod):
    """BinaryConnect (Courbariaux et al. 2015): binary weights (deterministic or stochastic),
    real-valued weights clipped to [-1, 1] after each update."""

    VALID = {"w": (1,), "a": (32,), "g": (32,)}
    weight_clip = (-1.0, 1.0)

    def __init__(self, bits, skip=TOKENS, input_bn: bool = False,
                 stochastic: bool = False, test_time: str = "real", name: str = "binaryconnect"):
        super().__init__(name, bits, skip, input_bn)
        if test_time not in ("real", "binary"):
            raise ConfigError(f"method.test_time={test_time}: valid: real, binary")
        self.stochastic, self.test_time = stochastic, test_time

    def weight_quant(self, layer):
        return Q.StochasticSign(self.test_time) if self.stochastic else Q.ste_sign

    def layer_bits(self, model: nn.Module) -> dict[str, dict[str, int]]:
        """Stochastic BinaryConnect tested with real weights (test_time=real, the paper's choice)
        deploys a float model: its layers count at 32 bits."""
        real = self.stochastic and self.test_time == "real"
        bits = super().layer_bits(model)
        return {n: b | {"w": 32} for n, b in bits.items()} if real else bits


class BNN(QuantMethod):
    """Binarized Neural Networks (Courbariaux, Hubara et al. 2016): sign weights and inputs,
    STE cancelled for |x| > 1, weights clipped to [-1, 1]."""

    VALID = {"w": (1,), "a": (1,), "g": (32,)}
    weight_clip = (-1.0, 1.0)

    def __init__(self, bits, skip=TOKENS, input_bn: bool = False, name: str = "bnn"):
        super().__init__(name, bits, skip, input_bn)

    def weight_quant(self, layer):
        return Q.bnn_sign

    def act_quant(self, layer):
        return Q.bnn_sign


class BWN(QuantMethod):
    """Binary-Weight-Networks (Rastegari et al. 2016): alpha sign(W) per output channel."""

    VALID = {"w": (1,), "a": (32,), "g": (32,)}

    def __init__(self, bits, skip=TOKENS, input_bn: bool = False, name: str = "bwn"):
        super().__init__(name, bits, skip, input_bn)

    def weight_quant(self, layer):
        return Q.bwn_weight


class XNOR(BWN):
    """XNOR-Net (Rastegari et al. 2016): BWN weights and sign(I) inputs scaled by K."""

    VALID = {"w": (1,), "a": (1,), "g": (32,)}

    def __init__(self, bits, skip=TOKENS, input_bn: bool = False, name: str = "xnor"):
        QuantMethod.__init__(self, name, bits, skip, input_bn)

    def act_quant(self, layer):
        return partial(Q.xnor_input, dim=_chan_dim(layer))


class DoReFa(QuantMethod):
    """DoReFa-Net (Zhou et al. 2016): k_w-bit weights, k_a-bit activations in [0, 1], k_g-bit
    gradients of each layer's output (stochastic rounding, per-sample max)."""

    def __init__(self, bits, skip=TOKENS, input_bn: bool = False, name: str = "dorefa",
                 layers: str = "all"):
        super().__init__(name, bits, skip, input_bn)
        if layers not in ("all", "pointwise"):
            raise ConfigError(f"method.layers={layers}: valid: all, pointwise")
        self.layers = layers

    def weight_quant(self, layer):
        return None if self.bits["w"] == 32 else partial(Q.dorefa_weight, k=self.bits["w"])

    def act_quant(self, layer):
        return None if self.bits["a"] == 32 else partial(Q.dorefa_act, k=self.bits["a"])

    def grad_quant(self, layer):
        return None if self.bits["g"] == 32 else partial(Q.dorefa_grad, k=self.bits["g"])


class TWN(QuantMethod):
    """Ternary Weight Networks (Li et al. 2016): {-alpha, 0, alpha}, Delta = 0.7 E|W|."""

    VALID = {"w": (2,), "a": (32,), "g": (32,)}

    def __init__(self, bits, skip=TOKENS, input_bn: bool = False, name: str = "twn"):
        super().__init__(name, bits, skip, input_bn)

    def weight_quant(self, layer):
        return Q.twn_weight


class TTQ(QuantMethod):
    """Trained Ternary Quantization (Zhu et al. 2017): {-W^n, 0, W^p} learned per layer."""

    VALID = {"w": (2,), "a": (32,), "g": (32,)}

    def __init__(self, bits, skip=TOKENS, input_bn: bool = False,
                 threshold: float = 0.05, name: str = "ttq"):
        super().__init__(name, bits, skip, input_bn)
        self.threshold = threshold

    def weight_quant(self, layer):
        return TTQQuantizer.from_weight(layer.weight, self.threshold)


class Pow2(QuantMethod):
    """Powers-of-two weights {0, +-2^n1, ..., +-2^(n1-L)} with 2L + 3 <= 2^w (L = 2^(w-1) - 2),
    k_a-bit uniform activations in [0, 1]."""

    VALID = {"w": range(2, 9), "a": FULL, "g": (32,)}

    def __init__(self, bits, skip=TOKENS, input_bn: bool = False, name: str = "pow2"):
        super().__init__(name, bits, skip, input_bn)

    def weight_quant(self, layer):
        return partial(Q.pow2_weight, levels=2 ** (self.bits["w"] - 1) - 2)

    def act_quant(self, layer):
        return None if self.bits["a"] == 32 else partial(Q.dorefa_act, k=self.bits["a"])


class Uniform(QuantMethod):
    """k_w-bit symmetric uniform weights (per-channel max scale), k_a-bit uniform activations
    in [0, 1]."""

    VALID = {"w": FULL, "a": FULL, "g": (32,)}

    def __init__(self, bits, skip=TOKENS, input_bn: bool = False, name: str = "uniform"):
        super().__init__(name, bits, skip, input_bn)

    def weight_quant(self, layer):
        return None if self.bits["w"] == 32 else partial(Q.uniform_weight, k=self.bits["w"])

    def act_quant(self, layer):
        return None if self.bits["a"] == 32 else partial(Q.dorefa_act, k=self.bits["a"])


class LQNet(QuantMethod):
    """LQ-Nets (Zhang et al. 2018): learned bases, per output channel for weights ({-1,1} codes)
    and per layer for activations ({0,1} codes), updated by QEM with a moving average."""

    VALID = {"w": (*range(1, 9), 32), "a": (*range(1, 9), 32), "g": (32,)}

    def __init__(self, bits, skip=TOKENS, input_bn: bool = False,
                 momentum: float = 0.9, name: str = "lqnet"):
        super().__init__(name, bits, skip, input_bn)
        self.momentum = momentum

    def weight_quant(self, layer):
        w = self.bits["w"]
        return None if w == 32 else LQQuantizer.for_weight(layer.weight, w, self.momentum)

    def act_quant(self, layer):
        a = self.bits["a"]
        return None if a == 32 else LQQuantizer.for_activation(a, self.momentum).to(layer.weight.device)
