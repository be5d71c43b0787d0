"""The methods of Polino, Pascanu & Alistarh 2018 built on the quantizers of polino.py.

- `PolinoQuant` (at="train"): b-bit uniform weights in the forward pass from the start, full
  precision shadow weights updated straight-through (quantized distillation's quantizer part);
  at="end": the net trains in full precision and `finalize` quantizes it ("PM Quant.").
- `LearnedPoints`: differentiable quantization's quantizer part, the 2^b points of each layer
  learned by gradient descent, the weights (from a trained student) fixed.

Quantized distillation and differentiable quantization are compositions with the `kd` part
(conf/method/quantized_distillation.yaml, differentiable_quantization.yaml).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from torch import nn

from ..errors import ConfigError
from ..method import Method, state_mismatch
from ..select import ALL, choose, parse
from ..swap import swap_modules
from .base import check_bits, quantized_bits
from .polino import VALID_BITS, PointsQuantizer, UniformQuantizer, export_codes, load_codes
from .qlayers import QConv2d, QLayer, QLinear


def _check_bucket(bucket_size, key: str = "method") -> int | None:
    ok = bucket_size is None or (isinstance(bucket_size, int) and not isinstance(bucket_size, bool)
                                 and bucket_size >= 1)
    if not ok:
        raise ConfigError(f"{key}.bucket_size={bucket_size}: must be null (one bucket: the whole "
                          "tensor) or an integer >= 1 (weights per bucket)")
    return bucket_size


def _check_bool(key: str, value) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{key}={value}: must be true or false")
    return value


def swap_quantized(model: nn.Module, make_quant, rules, w: int) -> nn.Module:
    """Every Conv2d/Linear the rules select -> QConv2d/QLinear with weight_quant=make_quant(layer,
    bits) at its own weight bits (a rule's bits.w, else `w`)."""
    plan = choose(model, rules)

    def factory(name, layer):
        bits = plan[name].get("bits", {}).get("w", w)
        cls = QConv2d if isinstance(layer, nn.Conv2d) else QLinear
        q = cls.from_float(layer, weight_quant=make_quant(layer, bits))
        q.bits = {"w": bits, "a": 32, "g": 32}
        return q
    return swap_modules(model, factory, plan)


def _rules(name: str, layers, w: int, key: str):
    """The parsed `layers` rules, each rule's own bits.w checked (1..16; a and g stay 32)."""
    rules = parse(layers, f"{key}.layers")
    for i, r in enumerate(rules):
        if "bits" in r.settings:
            try:
                check_bits(name, {"w": w, "a": 32, "g": 32, **r.settings["bits"]}, VALID_BITS)
            except ConfigError as e:
                raise ConfigError(f"{key}.layers[{i}].{e}") from None
    return rules


class _CodesFile(Method):
    """What both methods share: the layers' bits, and the file of b-bit codes (export_codes),
    loaded into a fresh model swapped to the quantized layers (`_swap_for_load`)."""

    def _swap_for_load(self, model: nn.Module) -> nn.Module:
        raise NotImplementedError

    def layer_bits(self, model: nn.Module) -> dict[str, dict[str, int]]:
        return quantized_bits(model)

    def export(self, model: nn.Module, path: str | Path) -> Path:
        return export_codes(model, path)

    def load(self, model: nn.Module, path: str | Path) -> nn.Module:
        if not any(isinstance(m, QLayer) for m in model.modules()):
            model = self._swap_for_load(model)
        return load_codes(model, path)


class PolinoQuant(_CodesFile):
    """Uniform b-bit weights, bucketed min-max scaling (Polino et al. 2018, Sec. 2.1).

    at="train": the forward pass uses the quantized weights from the start (the straight-through
    gradient updates full-precision shadow weights; quantized distillation's quantizer part,
    `stochastic` rounding while training optional); at="end": the net trains in full precision
    and `finalize` quantizes it ("PM Quant.", the paper's baseline: `method=pm_quant`).
    Exported as b-bit codes (`export_codes`)."""

    def __init__(self, bits: Mapping, bucket_size: int | None = None, stochastic: bool = False,
                 at: str = "train", layers: Sequence[Mapping] = ALL, key: str = "method",
                 name: str = "polino_quant"):
        super().__init__(name)
        self.bits = check_bits(name, bits, VALID_BITS)
        self.bucket_size = _check_bucket(bucket_size, key)
        self.rules = _rules(name, layers, self.bits["w"], key)
        self.stochastic = _check_bool(f"{key}.stochastic", stochastic)
        if at not in ("train", "end"):
            raise ConfigError(f"{key}.at={at}: valid: train (quantized forward while training), "
                              "end (quantize after training)")
        self.at = at

    def _swap(self, model: nn.Module, stochastic: bool) -> nn.Module:
        return swap_quantized(model, lambda layer, w: UniformQuantizer(w, self.bucket_size, stochastic),
                              self.rules, self.bits["w"])

    def apply(self, model: nn.Module) -> nn.Module:
        return self._swap(model, self.stochastic) if self.at == "train" else model

    def finalize(self, model: nn.Module) -> nn.Module:
        return self._swap(model, False) if self.at == "end" else model

    def _swap_for_load(self, model: nn.Module) -> nn.Module:
        return self._swap(model, False)

    def __repr__(self) -> str:
        return f"PolinoQuant(W{self.bits['w']}, bucket_size={self.bucket_size}, at={self.at})"


class LearnedPoints(_CodesFile):
    """Differentiable quantization's quantizer part (Polino et al. 2018, Sec. 2.2): each layer's
    2^b points are learned by gradient descent (on the distillation loss of the `kd` part). As in
    the paper (and its reference code) the weights come from a trained full-precision student
    (`start_from`: its state dict, handed over by the harness from an earlier run) and stay fixed:
    only the points train; `train_weights=true` also trains the weights (STE), e.g. from scratch."""

    def __init__(self, bits: Mapping, bucket_size: int | None = 256, points_init: str = "quantiles",
                 start_from: Mapping | None = None, train_weights: bool = False,
                 layers: Sequence[Mapping] = ALL, key: str = "method", name: str = "learned_points"):
        super().__init__(name)
        self.bits = check_bits(name, bits, VALID_BITS)
        self.bucket_size, self.key = _check_bucket(bucket_size, key), key
        self.rules = _rules(name, layers, self.bits["w"], key)
        if points_init not in ("quantiles", "uniform"):
            raise ConfigError(f"{key}.points_init={points_init}: valid: quantiles, uniform")
        self.points_init = points_init
        self.train_weights = _check_bool(f"{key}.train_weights", train_weights)
        self.start_from = None if start_from is None else dict(start_from)

    def _swap(self, model: nn.Module) -> nn.Module:
        return swap_quantized(
            model, lambda layer, w: PointsQuantizer.for_weight(
                layer.weight, w, self.bucket_size, self.points_init, self.train_weights),
            self.rules, self.bits["w"])

    def apply(self, model: nn.Module) -> nn.Module:
        if self.start_from is None and not self.train_weights:
            raise ConfigError(f"{self.key}.start_from=null: with train_weights=false the weights stay as "
                              "initialised; valid: the run name, run directory or model file of a "
                              f"trained full-precision student (or set {self.key}.train_weights=true)")
        if self.start_from is not None:
            if (k := state_mismatch(model, self.start_from)) is not None:
                raise ConfigError(f"{self.key}.start_from: its weights do not fit this model ({k}); valid: "
                                  "a full-precision run (fp32 or kd) of the same model")
            model.load_state_dict(self.start_from)
        model = self._swap(model)
        if not self.train_weights:
            for name, p in model.named_parameters():
                p.requires_grad_(name.endswith("weight_quant.points"))
        return model

    def _swap_for_load(self, model: nn.Module) -> nn.Module:
        return self._swap(model)
