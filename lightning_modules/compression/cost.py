"""Compute cost of a (quantized) model: multiply-adds per layer, BOPs, effective FLOPs.

- MACs of a conv: (output values per sample) x (C_in / groups) x K_h x K_w; of a linear layer:
  out_features x in_features (biases and BatchNorm not counted; torch.utils.flop_counter counts
  the same products and reports 2 FLOPs per multiply-add).
- Bits are per layer (`{name: {w, a, g}}`, the method's `layer_bits(model)`), so a mixed
  precision model is counted at each layer's own bits; `uniform_bits` spreads one triple.
- BOPs (binary operations), as the binary-network papers report them (Rastegari et al. 2016,
  XNOR-Net; Zhou et al. 2016, DoReFa-Net's bit convolution kernels; Liu et al. 2018, Bi-Real
  Net): a layer whose weights AND inputs are both quantized (W < 32 and A < 32 bits) computes
  its dot products with AND/XNOR + popcount over bit planes, W x A of them per multiply-add:

      BOPs(layer) = MACs(layer) x W x A

  A layer with only quantized weights (BinaryConnect, BWN, DoReFa W1A32) still multiplies real
  activations: it is counted in FLOPs, not BOPs.
- Effective FLOPs: the papers' OPs = FLOPs + BOPs / 64 (a 64-bit CPU does 64 binary operations
  in one instruction; Bi-Real Net's OPs). Those papers count a multiply-add as one FLOP; this
  harness counts it as 2 (flop_counter), so in harness units

      flops_effective = (flops - 2 MACs(binary layers)) + 2 BOPs / 64

  which keeps the papers' 64:1 ratio (a 1x1-bit layer costs 1/64 of its float cost). For a
  full-precision net flops_effective = flops and bops = 0.
"""
from __future__ import annotations

import copy
from collections.abc import Mapping

import torch
from torch import nn

from .quantization.qlayers import QLayer


def layer_macs(model: nn.Module, input_shape: tuple[int, ...]) -> dict[str, int]:
    """Multiply-adds of one forward pass of every Conv2d / Linear (QConv2d, QLinear included),
    by module name, for an input of `input_shape` (batch dim included; MACs are per batch)."""
    out: dict[str, int] = {}
    hooks = []

    def hook(name):
        def fn(m, inp, y):
            if isinstance(m, nn.Conv2d):
                kh, kw = m.kernel_size
                out[name] = out.get(name, 0) + y.numel() * (m.in_channels // m.groups) * kh * kw
            else:
                out[name] = out.get(name, 0) + y.numel() * m.in_features
        return fn

    for name, m in model.named_modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            hooks.append(m.register_forward_hook(hook(name)))
    try:
        with torch.no_grad():
            model(torch.zeros(input_shape))
    finally:
        for h in hooks:
            h.remove()
    return out


FP = {"w": 32, "a": 32, "g": 32}


def uniform_bits(model: nn.Module, bits: Mapping | None) -> dict[str, dict[str, int]]:
    """{layer name: {w, a, g}} of a method with one bits triple for all its quantized layers:
    each QLayer computes at `bits` for the roles it quantizes, 32 for the others; float layers
    are left out (they compute at 32). A Method's `layer_bits(model)` may return this."""
    if bits is None:
        return {}
    return {name: {r: int(bits[r]) if getattr(m, q) is not None else 32
                   for r, q in (("w", "weight_quant"), ("a", "act_quant"), ("g", "grad_quant"))}
            for name, m in model.named_modules() if isinstance(m, QLayer)}


def cost(model: nn.Module, input_shape: tuple[int, ...], bits: Mapping[str, Mapping] | None,
         flops: int) -> dict:
    """{"bops", "flops_effective", "layers"} of one sample (`input_shape` without the batch dim)
    for a model whose flop_counter FLOPs are `flops`. `bits`: {layer name: {w, a, g}} (the
    method's `layer_bits(model)`); a layer it leaves out computes at 32 bits. "layers": one row
    per Conv2d / Linear, in forward order: name, type, bits, params (weight + bias), macs, bops."""
    net = copy.deepcopy(model).cpu().float().eval()
    macs = layer_macs(net, (1, *input_shape))
    bits = bits or {}
    if not all(isinstance(v, Mapping) for v in bits.values()):
        raise TypeError(f"cost(bits={dict(bits)}): needs {{layer name: {{w, a, g}}}}; "
                        "spread one triple with uniform_bits(model, bits)")
    bops = binary_macs = 0
    rows = []
    for name, n in macs.items():
        m = net.get_submodule(name)
        b = {**FP, **{r: int(v) for r, v in bits.get(name, {}).items()}}
        layer_bops = n * b["w"] * b["a"] if b["w"] < 32 and b["a"] < 32 else 0
        if layer_bops:
            bops += layer_bops
            binary_macs += n
        params = m.weight.numel() + (m.bias.numel() if m.bias is not None else 0)
        rows.append({"name": name, "type": type(m).__name__, "bits": b, "params": int(params),
                     "macs": int(n), "bops": int(layer_bops)})
    return {"bops": int(bops), "flops_effective": int(round(flops - 2 * binary_macs + 2 * bops / 64)),
            "layers": rows}
