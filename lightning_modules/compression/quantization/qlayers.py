"""Quantized layers: nn.Conv2d / nn.Linear that take their quantizers by role (Brevitas style).

    QConv2d(..., weight_quant=bwn_weight, act_quant=xnor_input, grad_quant=None)

- `weight_quant(W) -> W_q`: applied to the full-precision (latent) weight each forward; the
  optimizer updates the latent W. None = full precision.
- `act_quant(x) -> x_q`, or `(x_q, A)` for a scaled binarization (XNOR-Net): A is a map of input
  magnitudes (N, 1, H, W) that the layer turns into its output scale K = A * box(kernel)
  (`quantizers.xnor_scale`); y = (x_q conv W_q) * K + bias. None = full precision.
- `grad_quant(y) -> y`: identity forward, quantizes the gradient of the layer output in the
  backward pass (DoReFa's `fg`), so dW, dx and db are all computed from it. None = exact.
- `input_bn=True`: a BatchNorm over the input channels runs first, so the layer is XNOR-Net's
  block BatchNorm -> BinActiv -> BinConv (a pooling layer after it completes the paper's order);
  BNN and DoReFa nets likewise normalise before the sign / the [0, 1] clip. Default False.
  A QLinear fed by a flattened conv map takes `input_bn=C` (its channel count): the BatchNorm is
  per channel of the map (`ChannelBatchNorm`), as BatchNorm2d before the flatten.
- `weight_clip=(lo, hi)`: `clip_()` clamps the latent weight into it (BinaryConnect, BNN clip
  to [-1, 1] after every optimizer step; a callback calls clip_).

Quantizers are any callables; one with parameters or state (TTQ, LQ-Nets) is an nn.Module and
is registered as a submodule. The layers know nothing about methods.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .quantizers import xnor_scale

Quant = Callable[[torch.Tensor], torch.Tensor] | nn.Module | None


class QuantMixin:
    """The role plumbing shared by QConv2d and QLinear."""

    def _set_quant(self, weight_quant: Quant, act_quant: Quant, grad_quant: Quant,
                   weight_clip: tuple[float, float] | None, input_bn: bool | None) -> None:
        self.weight_quant, self.act_quant, self.grad_quant = weight_quant, act_quant, grad_quant
        self.input_bn = None
        if isinstance(input_bn, bool) or input_bn is None:
            input_bn = bool(input_bn)
        if isinstance(self, nn.Conv2d) and input_bn:
            self.input_bn = nn.BatchNorm2d(self.in_channels, device=self.weight.device)
        elif input_bn is True:
            self.input_bn = nn.BatchNorm1d(self.in_features, device=self.weight.device)
        elif input_bn:  # an int: the input is a flattened map of that many channels
            self.input_bn = ChannelBatchNorm(int(input_bn), self.in_features, self.weight.device)
        self.weight_clip = None if weight_clip is None else tuple(float(v) for v in weight_clip)
        # the bits each role computes with (32: float), set by the method that swapped it in (its
        # cost, BOPs and record row); a plain attribute, not state: the file stores the codes
        self.bits = {"w": 32, "a": 32, "g": 32}

    def quantized_weight(self) -> torch.Tensor:
        """The weight the forward pass uses (float32 when quantized)."""
        return self.weight if self.weight_quant is None else self.weight_quant(self.weight)

    def _quant_input(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.input_bn is not None:
            x = self.input_bn(x)
        if self.act_quant is None:
            return x, None
        out = self.act_quant(x)
        return out if isinstance(out, tuple) else (out, None)

    def _finish(self, y: torch.Tensor, scale: torch.Tensor | None, bias_dims: int) -> torch.Tensor:
        if scale is not None:
            y = y * scale
            if self.bias is not None:
                y = y + self.bias.reshape(-1, *([1] * bias_dims))
        return y if self.grad_quant is None else self.grad_quant(y)

    @torch.no_grad()
    def clip_(self) -> None:
        """Clamp the latent weight into `weight_clip` (a no-op without one)."""
        if self.weight_clip is not None:
            self.weight.clamp_(*self.weight_clip)

    @classmethod
    def _roles(cls, kwargs: dict) -> dict:
        return {k: kwargs.pop(k, None) for k in ("weight_quant", "act_quant", "grad_quant", "weight_clip",
                                            "input_bn")}

    def _quant_repr(self) -> str:
        def name(q):
            return getattr(q, "__name__", None) or getattr(getattr(q, "func", None), "__name__", None) \
                or type(q).__name__
        parts = [f"{r}={name(getattr(self, r))}" for r in ("weight_quant", "act_quant", "grad_quant")
                 if getattr(self, r) is not None and not isinstance(getattr(self, r), nn.Module)]
        if self.weight_clip is not None:
            parts.append(f"weight_clip={self.weight_clip}")
        return ", ".join(parts)


class ChannelBatchNorm(nn.BatchNorm1d):
    """BatchNorm of a flattened (N, C*H*W) conv map per channel C, as BatchNorm2d before the
    flatten would (a conv net's normalisation, C floats of state instead of C*H*W)."""

    def __init__(self, channels: int, features: int, device=None):
        if features % channels:
            raise ValueError(f"{features} features are not a map of {channels} channels")
        super().__init__(channels, device=device)
        self.features = features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.reshape(x.shape[0], self.num_features, -1)).reshape(x.shape)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, features={self.features}"


class QConv2d(QuantMixin, nn.Conv2d):
    def __init__(self, *args, **kwargs):
        roles = self._roles(kwargs)
        super().__init__(*args, **kwargs)
        self._set_quant(**roles)

    @classmethod
    def from_float(cls, m: nn.Conv2d, **roles) -> "QConv2d":
        """A QConv2d with `m`'s geometry, device, dtype and a copy of its weights."""
        q = cls(m.in_channels, m.out_channels, m.kernel_size, m.stride, m.padding, m.dilation,
                m.groups, m.bias is not None, m.padding_mode, device=m.weight.device,
                dtype=m.weight.dtype, **roles)
        _copy_params(m, q)
        return q

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, a = self._quant_input(x)
        w = self.quantized_weight()
        if a is None:
            return self._finish(self._conv_forward(x, w, self.bias), None, 2)
        k = xnor_scale(a, self.kernel_size, self.stride, self.padding, self.dilation)
        return self._finish(self._conv_forward(x, w, None), k, 2)

    def extra_repr(self) -> str:
        return ", ".join(s for s in (super().extra_repr(), self._quant_repr()) if s)


class QLinear(QuantMixin, nn.Linear):
    def __init__(self, *args, **kwargs):
        roles = self._roles(kwargs)
        super().__init__(*args, **kwargs)
        self._set_quant(**roles)

    @classmethod
    def from_float(cls, m: nn.Linear, **roles) -> "QLinear":
        q = cls(m.in_features, m.out_features, m.bias is not None, device=m.weight.device,
                dtype=m.weight.dtype, **roles)
        _copy_params(m, q)
        return q

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """For a scaled act quantizer, A = mean |x| over the features already is the linear
        layer's K (its "kernel" covers the whole input)."""
        x, a = self._quant_input(x)
        w = self.quantized_weight()
        if a is None:
            return self._finish(F.linear(x, w, self.bias), None, 0)
        return self._finish(F.linear(x, w), a, 0)

    def extra_repr(self) -> str:
        return ", ".join(s for s in (super().extra_repr(), self._quant_repr()) if s)


QLayer = (QConv2d, QLinear)


@torch.no_grad()
def _copy_params(src: nn.Module, dst: nn.Module) -> None:
    dst.weight.copy_(src.weight)
    if src.bias is not None:
        dst.bias.copy_(src.bias)
    if dst.input_bn is not None:
        dst.input_bn.to(src.weight.dtype)
    dst.train(src.training)


def compile_quantized(net: nn.Module, **options) -> nn.Module:
    """`torch.compile` (inductor) the forward of every QConv2d / QLinear in `net`, in place
    (`nn.Module.compile`), and return `net`: the quantizers, the conv/linear and the STE backward
    of each layer become one fused graph; the float layers around them stay eager, so an FP32 net
    is unchanged. `options` go to torch.compile. The first step of each layer pays the compile
    (a C++ compiler is needed on CPU), and train/eval and a new batch size compile again once.

    All layers of a class share one code object (`forward`), so dynamo's per-code recompile limit
    (8 by default) would count every layer, mode and shape together and silently leave the
    layers past it eager: the limit is raised by 4 per layer compiled here."""
    layers = [m for m in net.modules() if isinstance(m, QLayer)]
    if layers:
        config = torch._dynamo.config
        config.recompile_limit = config.recompile_limit + 4 * len(layers)
    for m in layers:
        m.compile(**options)
    return net
