"""Model compression via distillation and quantization (Polino, Pascanu & Alistarh 2018).

Three methods on one quantizer, all weights-only (activations and gradients stay float32); the
two distillation methods are compositions (conf/method/*.yaml) of the `kd` part (distill.py) and
a quantizer part from here (`PolinoQuant`, `LearnedPoints`):

| name                          | training                                   | weights at test / export    |
|-------------------------------|--------------------------------------------|-----------------------------|
| pm_quant                      | normal (cross-entropy, full precision)     | uniform b bits, at finalize |
| quantized_distillation        | distillation loss, b-bit weights forward,  | uniform b bits              |
|                               | full-precision shadow weights updated (STE)|                             |
| differentiable_quantization   | distillation loss, the 2^b points p of     | p, per layer (scaled per    |
|                               | each layer learned by SGD, weights fixed   | bucket)                     |

The scaling (Sec. 2.1): the weights of a layer are flattened and cut into buckets of
`bucket_size` consecutive values (null: one bucket, the whole tensor); each bucket is scaled to
[0, 1] by its own min and max, v = (w - beta) / alpha with beta = min, alpha = max - min.
Uniform quantization puts v on the 2^b levels k / (2^b - 1), k = 0 .. 2^b - 1, by deterministic
rounding (nearest level, ties to even) or stochastic rounding (up with probability equal to the
distance from the level below: unbiased, E[Q(v)] = v); then w_q = alpha Q(v) + beta.

Which layers: every Conv2d/Linear not in `skip` (module names, or the tokens first / last, as the
other quantization methods); the default skips none, so the small MLP students are quantized
throughout. The exported file (`export_codes`) holds each quantized layer as b-bit codes
(pack.py's bit packing), alpha and beta per bucket and the 2^b-entry level table: b + 64 /
bucket_size bits per weight. (pack.py's `export_packed` factors w_q into per-row or per-tensor
codebooks of distinct values; a row spanning several buckets of 2^b affine levels each needs a
codebook of all of them, which at 8 bits with buckets of 256 is no smaller than float32.)
Loading rebuilds w_q with the forward pass's own arithmetic: identical predictions.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .. import container
from ..errors import FileFormatError
from ..method import load_state
from .pack import pack_bits, unpack_bits
from .qlayers import QLayer
from .quantizers import float32_math, ste

VALID_BITS = {"w": range(1, 17), "a": (32,), "g": (32,)}


# --- the quantizers --------------------------------------------------------------------------

def buckets(w: torch.Tensor, bucket_size: int | None):
    """Flatten w into (B, d) buckets (the last one padded with its last value, which changes no
    min or max) and scale each to [0, 1]: returns (v, alpha, beta), alpha = max - min (1 where a
    bucket is constant, as the reference code), beta = min, each (B, 1)."""
    flat = w.reshape(-1)
    d = flat.numel() if bucket_size is None else int(bucket_size)
    pad = -flat.numel() % d
    if pad:
        flat = torch.cat([flat, flat[-1:].expand(pad)])
    b = flat.reshape(-1, d)
    beta = b.amin(dim=1, keepdim=True)
    alpha = b.amax(dim=1, keepdim=True) - beta
    alpha = torch.where(alpha > 1e-12, alpha, torch.ones_like(alpha))
    return (b - beta) / alpha, alpha, beta


def unbucket(b: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Inverse of the flattening in `buckets`: drop the padding, restore like's shape."""
    return b.reshape(-1)[:like.numel()].reshape(like.shape)


def uniform_codes(v: torch.Tensor, bits: int, stochastic: bool = False,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """Scaled values v in [0, 1] -> level indices k in 0 .. n = 2^b - 1: round(v n) (nearest,
    ties to even) or floor(v n) + 1[u < v n - floor(v n)], u ~ U[0, 1) (stochastic)."""
    x = v * float(2 ** bits - 1)
    if not stochastic:
        return torch.round(x).long()
    lo = torch.floor(x)
    u = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    return (lo + (u < x - lo).to(x.dtype)).long()


def uniform_table(bits: int, device=None) -> torch.Tensor:
    """The 2^b uniform levels k / (2^b - 1) of the scaled domain."""
    return torch.arange(2 ** bits, dtype=torch.float32, device=device) / float(2 ** bits - 1)


def dequantize(k: torch.Tensor, alpha: torch.Tensor, beta: torch.Tensor, table: torch.Tensor,
               like: torch.Tensor) -> torch.Tensor:
    """w_q = alpha table[k] + beta per bucket, in like's shape. The forward pass and the file's
    loader both compute w_q with this function, so a loaded net is bit-identical."""
    return unbucket(alpha * table[k] + beta, like)


@float32_math
def polino_uniform(w: torch.Tensor, bits: int, bucket_size: int | None = None,
                   stochastic: bool = False, generator: torch.Generator | None = None) -> torch.Tensor:
    """Polino et al. 2018, Sec. 2.1: uniform quantization with bucketed min-max scaling.

    Forward: per bucket, v = (w - min) / (max - min); Q(v) = round(v n) / n (deterministic) or
    (floor(v n) + 1[u < v n - floor(v n)]) / n, u ~ U[0, 1) (stochastic), n = 2^b - 1; returns
    (max - min) Q(v) + min: at most 2^b values per bucket, min and max among them.
    Backward: identity to w (the gradient of the quantized weights updates the full-precision
    shadow weights, the paper's quantized distillation step).
    """
    v, alpha, beta = buckets(w.detach(), bucket_size)
    k = uniform_codes(v, bits, stochastic, generator)
    return ste(w, dequantize(k, alpha, beta, uniform_table(bits, w.device), w))


class UniformQuantizer(nn.Module):
    """`polino_uniform` as a weight quantizer: stochastic rounding (if chosen) while training,
    deterministic in eval mode (test and export see one fixed net). No state."""

    def __init__(self, bits: int, bucket_size: int | None = None, stochastic: bool = False):
        super().__init__()
        self.bits, self.bucket_size, self.stochastic = bits, bucket_size, stochastic

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return polino_uniform(w, self.bits, self.bucket_size, self.stochastic and self.training)

    @torch.no_grad()
    def encode(self, w: torch.Tensor):
        """The eval-mode w_q as (codes k (B, d), alpha (B, 1), beta (B, 1), table (2^b,))."""
        v, alpha, beta = buckets(w.detach().float(), self.bucket_size)
        return uniform_codes(v, self.bits), alpha, beta, uniform_table(self.bits, w.device)

    def extra_repr(self) -> str:
        return f"bits={self.bits}, bucket_size={self.bucket_size}, stochastic={self.stochastic}"


class PointsQuantizer(nn.Module):
    """Differentiable quantization (Polino et al. 2018, Sec. 2.2): 2^b learned points p per layer
    in the scaled domain, shared by the layer's buckets.

    Forward: per bucket v = (w - beta) / alpha as `buckets`; each v goes to its nearest point
    (the points sorted; ties to the lower one); w_q = alpha p_idx + beta.
    Backward: dL/dp_j = sum over the weights i assigned to p_j of alpha_i dL/dw_q,i (autograd
    through the gather). With `train_weights`, also identity to w (STE); else w gets nothing.
    """

    def __init__(self, points: torch.Tensor, bucket_size: int | None = None, train_weights: bool = False):
        super().__init__()
        self.points = nn.Parameter(points.detach().float().clone())
        self.bucket_size, self.train_weights = bucket_size, train_weights

    @classmethod
    def for_weight(cls, w: torch.Tensor, bits: int, bucket_size: int | None = None,
                   init: str = "quantiles", train_weights: bool = False) -> "PointsQuantizer":
        """Points initialised uniformly on [0, 1] or at the quantiles of the scaled weights."""
        levels = torch.linspace(0, 1, 2 ** bits, device=w.device)
        if init == "quantiles":
            v = buckets(w.detach().float(), bucket_size)[0].reshape(-1)
            levels = torch.quantile(v, levels)
        return cls(levels, bucket_size, train_weights)

    def _assign(self, w: torch.Tensor):
        v, alpha, beta = buckets(w.detach(), self.bucket_size)
        p = self.points.float().sort().values
        bounds = ((p[1:] + p[:-1]) / 2).detach().contiguous()
        return torch.bucketize(v.contiguous(), bounds), alpha, beta, p

    @float32_math
    def forward(self, w: torch.Tensor) -> torch.Tensor:
        wq = dequantize(*self._assign(w), w)
        return wq + (w - w.detach()) if self.train_weights else wq

    @torch.no_grad()
    def encode(self, w: torch.Tensor):
        """w_q as (codes (B, d), alpha (B, 1), beta (B, 1), the sorted points (2^b,))."""
        k, alpha, beta, p = self._assign(w.detach().float())
        return k, alpha, beta, p.detach()

    def extra_repr(self) -> str:
        return (f"points={self.points.numel()}, bucket_size={self.bucket_size}, "
                f"train_weights={self.train_weights}")


# --- the file: b-bit codes, two floats per bucket, the level table ----------------------------

KIND = "polino_codes"  # container.py kind (before it: a torch.save dict of format "polino-packed-1")


def export_codes(model: nn.Module, path: str | Path) -> Path:
    """Each layer quantized here stored as its eval-mode codes at b bits (pack.py's `pack_bits`),
    alpha and beta per bucket and its 2^b-entry level table (float32); the rest of the state
    dict as float32 tensors. ~ b + 64 / bucket_size bits per quantized weight."""
    path = Path(path)
    was = model.training
    model.eval()
    layers, codes, floats, pos_c, pos_f, skip = [], [], [], 0, 0, []
    try:
        for name, m in model.named_modules():
            if not (isinstance(m, QLayer) and isinstance(m.weight_quant, (UniformQuantizer, PointsQuantizer))):
                continue
            k, alpha, beta, table = m.weight_quant.encode(m.weight)
            bits = max(1, math.ceil(math.log2(table.numel())))
            packed = pack_bits(k.reshape(-1)[:m.weight.numel()].cpu().numpy(), bits)
            meta = {"name": name, "shape": list(m.weight.shape), "bits": bits, "bucket": k.shape[1],
                    "codes": [pos_c, packed.size]}
            for key, t in (("alpha", alpha), ("beta", beta), ("table", table)):
                meta[key] = [pos_f, t.numel()]
                floats.append(t.reshape(-1).float().cpu())
                pos_f += t.numel()
            codes.append(packed)
            layers.append(meta)
            pos_c += packed.size
            skip += [f"{name}.weight", f"{name}.weight_quant."]
    finally:
        model.train(was)
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()
             if k not in skip and not k.startswith(tuple(skip))}
    return container.write(path, KIND, {
        "layers": layers, "state": state,
        "codes": torch.from_numpy(np.concatenate(codes or [np.zeros(0, np.uint8)])),
        "floats": torch.cat(floats) if floats else torch.zeros(0)})


def load_codes(model: nn.Module, path: str | Path) -> nn.Module:
    """Load `export_codes`'s file into `model` (quantized by the same method: same layer names);
    each layer gets w_q as its weight and no weight quantizer; strict key checking."""
    blob = container.read(path, KIND)
    codes, floats, state, quantized = blob["codes"].numpy(), blob["floats"], dict(blob["state"]), []
    try:
        for meta in blob["layers"]:
            layer = model.get_submodule(meta["name"])
            if not isinstance(layer, QLayer):
                raise ValueError(f"{meta['name']} is a {type(layer).__name__}, not a quantized layer")
            alpha, beta, table = (floats[a:a + n] for a, n in (meta[k] for k in ("alpha", "beta", "table")))
            like = torch.empty(meta["shape"])
            (c0, cn), d = meta["codes"], meta["bucket"]
            k = torch.from_numpy(unpack_bits(codes[c0:c0 + cn], meta["bits"], like.numel()))
            k = torch.cat([k, k.new_zeros(-k.numel() % d)]).reshape(-1, d)
            state[meta["name"] + ".weight"] = dequantize(k, alpha[:, None], beta[:, None], table, like)
            quantized.append(layer)
    except (AttributeError, ValueError, RuntimeError, KeyError, TypeError, IndexError) as err:
        raise FileFormatError(f"{path}: does not match the model ({err})") from None
    for layer in quantized:
        layer.weight_quant = None
    return load_state(model, state, path)

