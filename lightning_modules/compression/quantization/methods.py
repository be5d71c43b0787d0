"""Quantization methods: each one a choice of quantizers per role, applied by module swapping.

    method=xnor bits=w1a1g32     ->  XNOR(bits={"w": 1, "a": 1, "g": 32}, layers=[rules])

A method validates its bits triple at construction (one-line ConfigError naming the key, the
value and what is valid), swaps every Conv2d/Linear its `layers` rules select (select.py; by default all but the first
conv and the classifier) for a QConv2d/QLinear with its
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
| lsq / lsq_plus              | Esser / Bhalgat et al. 2020      | 2..8, 32  | 2..8, 32 | 32    |
| pact                        | Choi et al. 2018, DoReFa weights | 1..32     | 1..32    | 32    |
"""
from __future__ import annotations

from collections.abc import Mapping
from functools import partial

from torch import nn

from ..errors import ConfigError
from ..select import DEFAULT_QUANT_RULES
from . import quantizers as Q
from .base import FULL, QuantMethod, chan_dim
from .learned import LQQuantizer, TTQQuantizer
from .lsq import LSQQuantizer, PACTQuantizer

class BinaryConnect(QuantMethod):
    """BinaryConnect (Courbariaux et al. 2015): binary weights (deterministic or stochastic),
    real-valued weights clipped to [-1, 1] after each update."""

    VALID = {"w": (1,), "a": (32,), "g": (32,)}
    weight_clip = (-1.0, 1.0)

    def __init__(self, bits, layers=DEFAULT_QUANT_RULES, input_bn: bool = False,
                 stochastic: bool = False, test_time: str = "real", name: str = "binaryconnect"):
        super().__init__(name, bits, layers, input_bn)
        if test_time not in ("real", "binary"):
            raise ConfigError(f"method.test_time={test_time}: valid: real, binary")
        self.stochastic, self.test_time = stochastic, test_time

    def weight_quant(self, layer, bits):
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

    def __init__(self, bits, layers=DEFAULT_QUANT_RULES, input_bn: bool = False, name: str = "bnn"):
        super().__init__(name, bits, layers, input_bn)

    def weight_quant(self, layer, bits):
        return Q.bnn_sign

    def act_quant(self, layer, bits):
        return Q.bnn_sign


class BWN(QuantMethod):
    """Binary-Weight-Networks (Rastegari et al. 2016): alpha sign(W) per output channel."""

    VALID = {"w": (1,), "a": (32,), "g": (32,)}

    def __init__(self, bits, layers=DEFAULT_QUANT_RULES, input_bn: bool = False, name: str = "bwn"):
        super().__init__(name, bits, layers, input_bn)

    def weight_quant(self, layer, bits):
        return Q.bwn_weight


class XNOR(BWN):
    """XNOR-Net (Rastegari et al. 2016): BWN weights and sign(I) inputs scaled by K."""

    VALID = {"w": (1,), "a": (1,), "g": (32,)}

    def __init__(self, bits, layers=DEFAULT_QUANT_RULES, input_bn: bool = False, name: str = "xnor"):
        QuantMethod.__init__(self, name, bits, layers, input_bn)

    def act_quant(self, layer, bits):
        return partial(Q.xnor_input, dim=chan_dim(layer))


class DoReFa(QuantMethod):
    """DoReFa-Net (Zhou et al. 2016): k_w-bit weights, k_a-bit activations in [0, 1], k_g-bit
    gradients of each layer's output (stochastic rounding, per-sample max)."""

    def __init__(self, bits, layers=DEFAULT_QUANT_RULES, input_bn: bool = False, name: str = "dorefa"):
        super().__init__(name, bits, layers, input_bn)

    def weight_quant(self, layer, bits):
        return None if bits["w"] == 32 else partial(Q.dorefa_weight, k=bits["w"])

    def act_quant(self, layer, bits):
        return None if bits["a"] == 32 else partial(Q.dorefa_act, k=bits["a"])

    def grad_quant(self, layer, bits):
        return None if bits["g"] == 32 else partial(Q.dorefa_grad, k=bits["g"])


class TWN(QuantMethod):
    """Ternary Weight Networks (Li et al. 2016): {-alpha, 0, alpha}, Delta = 0.7 E|W|."""

    VALID = {"w": (2,), "a": (32,), "g": (32,)}

    def __init__(self, bits, layers=DEFAULT_QUANT_RULES, input_bn: bool = False, name: str = "twn"):
        super().__init__(name, bits, layers, input_bn)

    def weight_quant(self, layer, bits):
        return Q.twn_weight


class TTQ(QuantMethod):
    """Trained Ternary Quantization (Zhu et al. 2017): {-W^n, 0, W^p} learned per layer."""

    VALID = {"w": (2,), "a": (32,), "g": (32,)}

    def __init__(self, bits, layers=DEFAULT_QUANT_RULES, input_bn: bool = False,
                 threshold: float = 0.05, name: str = "ttq"):
        super().__init__(name, bits, layers, input_bn)
        self.threshold = threshold

    def weight_quant(self, layer, bits):
        return TTQQuantizer.from_weight(layer.weight, self.threshold)


class Pow2(QuantMethod):
    """Powers-of-two weights {0, +-2^n1, ..., +-2^(n1-L)} with 2L + 3 <= 2^w (L = 2^(w-1) - 2),
    k_a-bit uniform activations in [0, 1]."""

    VALID = {"w": range(2, 9), "a": FULL, "g": (32,)}

    def __init__(self, bits, layers=DEFAULT_QUANT_RULES, input_bn: bool = False, name: str = "pow2"):
        super().__init__(name, bits, layers, input_bn)

    def weight_quant(self, layer, bits):
        return partial(Q.pow2_weight, levels=2 ** (bits["w"] - 1) - 2)

    def act_quant(self, layer, bits):
        return None if bits["a"] == 32 else partial(Q.dorefa_act, k=bits["a"])


class Uniform(QuantMethod):
    """k_w-bit symmetric uniform weights (per-channel max scale), k_a-bit uniform activations
    in [0, 1]."""

    VALID = {"w": FULL, "a": FULL, "g": (32,)}

    def __init__(self, bits, layers=DEFAULT_QUANT_RULES, input_bn: bool = False, name: str = "uniform"):
        super().__init__(name, bits, layers, input_bn)

    def weight_quant(self, layer, bits):
        return None if bits["w"] == 32 else partial(Q.uniform_weight, k=bits["w"])

    def act_quant(self, layer, bits):
        return None if bits["a"] == 32 else partial(Q.dorefa_act, k=bits["a"])


class LQNet(QuantMethod):
    """LQ-Nets (Zhang et al. 2018): learned bases, per output channel for weights ({-1,1} codes)
    and per layer for activations ({0,1} codes), updated by QEM with a moving average."""

    VALID = {"w": (*range(1, 9), 32), "a": (*range(1, 9), 32), "g": (32,)}

    def __init__(self, bits, layers=DEFAULT_QUANT_RULES, input_bn: bool = False,
                 momentum: float = 0.9, name: str = "lqnet"):
        super().__init__(name, bits, layers, input_bn)
        self.momentum = momentum

    def weight_quant(self, layer, bits):
        w = bits["w"]
        return None if w == 32 else LQQuantizer.for_weight(layer.weight, w, self.momentum)

    def act_quant(self, layer, bits):
        a = bits["a"]
        return None if a == 32 else LQQuantizer.for_activation(a, self.momentum).to(layer.weight.device)


LSQ_WIDTHS = (*range(2, 9), 32)  # LSQ / LSQ+: 2..8 bits (the papers': 2, 3, 4, 8), 32 = float


class LSQ(QuantMethod):
    """LSQ (Esser et al. 2020): weights and activations with learned step sizes, one per layer
    (`per_channel`: one per output channel for the weights)."""

    VALID = {"w": LSQ_WIDTHS, "a": LSQ_WIDTHS, "g": (32,)}
    weight_init = "lsq"

    def __init__(self, bits: Mapping, layers=DEFAULT_QUANT_RULES, input_bn: bool = False,
                 per_channel: bool = False, offset: bool = False, name: str = "lsq"):
        super().__init__(name, bits, layers, input_bn)
        for key, value in (("per_channel", per_channel), ("offset", offset)):
            if not isinstance(value, bool):
                raise ConfigError(f"method.{key}={value}: must be true or false")
        self.per_channel, self.offset = per_channel, offset

    def weight_quant(self, layer, bits):
        w = bits["w"]
        return None if w == 32 else LSQQuantizer.for_weight(layer.weight, w, self.per_channel, self.weight_init)

    def act_quant(self, layer, bits):
        a = bits["a"]
        return None if a == 32 else LSQQuantizer.for_activation(a, self.offset).to(layer.weight.device)


class LSQPlus(LSQ):
    """LSQ+ (Bhalgat et al. 2020): LSQ with a learned activation offset beta (`offset`, default
    on) and the weights' step initialised from mean and std (mu +- 3 sigma)."""

    weight_init = "lsq_plus"

    def __init__(self, bits: Mapping, layers=DEFAULT_QUANT_RULES, input_bn: bool = False,
                 per_channel: bool = False, offset: bool = True, name: str = "lsq_plus"):
        super().__init__(bits, layers, input_bn, per_channel, offset, name)


class PACT(DoReFa):
    """PACT (Choi et al. 2018): activations clipped at a learned alpha per layer (init `alpha`,
    the paper's 10) and quantized to k bits on [0, alpha]; DoReFa weights. After every optimizer
    step alpha <- alpha (1 - lr `alpha_decay`): the L2 regularisation of alpha, decoupled from
    the optimizer (whose own weight_decay, if any, also reaches alpha: one parameter group)."""

    VALID = {"w": FULL, "a": FULL, "g": (32,)}

    def __init__(self, bits: Mapping, layers=DEFAULT_QUANT_RULES, input_bn: bool = False,
                 alpha: float = 10.0, alpha_decay: float = 5e-4, name: str = "pact"):
        super().__init__(bits, layers, input_bn, name)
        for key, value, ok in (("alpha", alpha, "a number > 0"), ("alpha_decay", alpha_decay, "a number >= 0")):
            if isinstance(value, bool) or not isinstance(value, (int, float)) \
                    or not (value > 0 if key == "alpha" else value >= 0):
                raise ConfigError(f"method.{key}={value}: must be {ok}")
        self.alpha, self.alpha_decay = float(alpha), float(alpha_decay)

    def act_quant(self, layer, bits):
        a = bits["a"]
        return None if a == 32 else PACTQuantizer(a, self.alpha).to(layer.weight.device)

    def after_step(self, model: nn.Module, lr: float) -> None:
        super().after_step(model, lr)
        if self.alpha_decay:
            for m in model.modules():
                if isinstance(m, PACTQuantizer):
                    m.decay_(lr * self.alpha_decay)
