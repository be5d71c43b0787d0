"""Quantizers: pure functions with an explicit pseudo-gradient (straight-through estimator).

Each docstring gives the forward, the backward and the paper. Conventions:

- `ste(x, q)` returns `q` in the forward pass *exactly* and passes the gradient to `x` unchanged:
  it is `q.detach() + (x - x.detach())`, the exact-valued form of `x + (q - x).detach()` (the
  latter can land one ulp off the level, which would break "2^k distinct levels" and the
  bit-exact packed export). `ste(x, q, lo, hi)` passes the gradient only where lo <= x <= hi.
- Every quantizer computes in float32 with autocast disabled (`@float32_math`), even when called
  under `torch.autocast`; its output is float32 (the next conv/linear is cast by autocast again).
- "Per output channel" means over dim 0 of a weight (conv: O x I x kh x kw, linear: O x I).

The stateful, learned quantizers (TTQ, LQ-Nets) are modules in `learned.py`.

Each function body here is the reference implementation (autograd ops, easy to check against the
paper). Training runs the fused version of the hot ones (`fused.py`: the same values and
gradients in fewer passes, see `fused_as`); `with reference_quantizers():` runs these bodies.
"""
from __future__ import annotations

import contextlib
import functools

import torch
import torch.nn.functional as F
from torch import nn

from . import fused as _fused
from .fused import _channel_dims

_REFERENCE = [False]  # a list: one mutable flag shared by every quantizer


@contextlib.contextmanager
def reference_quantizers(on: bool = True):
    """Run the reference bodies (`on`) or the fused versions inside the block."""
    before, _REFERENCE[0] = _REFERENCE[0], on
    try:
        yield
    finally:
        _REFERENCE[0] = before


def use_reference() -> bool:
    """True inside `reference_quantizers()` and while tracing (the ONNX exporter traces the
    reference ops; the fused autograd.Functions have no ONNX symbolic)."""
    return _REFERENCE[0] or torch.jit.is_tracing()


def fused_as(fast):
    """Decorator: the function runs `fast` (same signature, same values and gradients, see
    fused.py) unless `use_reference()`; the body it decorates stays the reference (`.reference`)."""
    def wrap(ref):
        @functools.wraps(ref)
        def dispatch(*args, **kwargs):
            return (ref if use_reference() else fast)(*args, **kwargs)
        dispatch.reference = ref
        return dispatch
    return wrap


def float32_math(fn):
    """Run `fn` with autocast off and its floating-point tensor arguments cast to float32."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        dev = next((a.device.type for a in args if torch.is_tensor(a)), "cpu")
        args = [a.float() if torch.is_tensor(a) and a.is_floating_point() else a for a in args]
        with torch.autocast(dev, enabled=False):
            return fn(*args, **kwargs)
    return wrapper


def ste(x: torch.Tensor, q: torch.Tensor, lo: float | None = None, hi: float | None = None):
    """Forward: q (exactly). Backward: dL/dx = dL/dq, times 1[lo <= x <= hi] when a range is given."""
    if lo is not None or hi is not None:
        inside = torch.ones_like(x, dtype=torch.bool)
        inside = inside if lo is None else inside & (x >= lo)
        inside = inside if hi is None else inside & (x <= hi)
        x = torch.where(inside, x, x.detach())  # gradient 1 on [lo, hi] (closed), 0 outside
    return q.detach() + (x - x.detach())


def _sign(x: torch.Tensor) -> torch.Tensor:
    """sign with sign(0) = +1 (so that the result is always in {-1, +1})."""
    return torch.where(x >= 0, 1.0, -1.0).to(x.dtype)


# --- binary ----------------------------------------------------------------------------------

@float32_math
@fused_as(_fused.ste_sign)
def ste_sign(w: torch.Tensor) -> torch.Tensor:
    """BinaryConnect, deterministic (Courbariaux, Bengio, David 2015, eq. 1).

    Forward: w_b = +1 if w >= 0 else -1. Backward: dL/dw = dL/dw_b (identity; BinaryConnect keeps
    the real-valued w bounded by clipping it to [-1, 1] after each update instead).
    """
    return ste(w, _sign(w))


def hard_sigmoid(x: torch.Tensor) -> torch.Tensor:
    """sigma(x) = clip((x + 1) / 2, 0, 1) (Courbariaux et al. 2015, eq. 3)."""
    return ((x + 1) / 2).clamp(0, 1)


@float32_math
@fused_as(_fused.stochastic_sign)
def stochastic_sign(w: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """BinaryConnect, stochastic (Courbariaux et al. 2015, eq. 2).

    Forward: w_b = +1 with probability p = hard_sigmoid(w), else -1. Backward: identity (STE).
    Uses the global RNG unless `generator` is given.
    """
    u = torch.rand(w.shape, generator=generator, device=w.device, dtype=w.dtype)
    return ste(w, torch.where(u < hard_sigmoid(w), 1.0, -1.0).to(w.dtype))


class StochasticSign(nn.Module):
    """`stochastic_sign` while training. In eval mode (Courbariaux et al. 2015, Sec. 2.6):
    test_time="real" uses the real-valued weights, as the paper did for stochastic
    BinaryConnect ("at test-time the noise is removed", like dropout; the file then holds float32
    weights), test_time="binary" the deterministic sign (a 1-bit deployable net, option (1))."""

    def __init__(self, test_time: str = "real"):
        super().__init__()
        if test_time not in ("real", "binary"):
            raise ValueError(f"test_time={test_time!r}; valid: real, binary")
        self.test_time = test_time

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        if self.training:
            return stochastic_sign(w)
        return w if self.test_time == "real" else ste_sign(w)

    def extra_repr(self) -> str:
        return f"test_time={self.test_time}"


@float32_math
@fused_as(_fused.bnn_sign)
def bnn_sign(x: torch.Tensor) -> torch.Tensor:
    """BNN sign (Courbariaux, Hubara et al. 2016, "Binarized Neural Networks", eq. 1 and 4).

    Forward: +1 if x >= 0 else -1. Backward: g_x = g_q * 1[|x| <= 1] (STE cancelled outside).
    """
    return ste(x, _sign(x), -1.0, 1.0)


@float32_math
@fused_as(_fused.bwn_weight)
def bwn_weight(w: torch.Tensor) -> torch.Tensor:
    """Binary-Weight-Network weights (Rastegari et al. 2016, XNOR-Net, eq. 4 and Sec. 3.1).

    Forward: W ~ alpha * sign(W), alpha = mean |W| over each output channel (l1-norm / n).
    Backward: the derivative of alpha(W) * sign(W), with the BNN STE for sign:
    dL/dW_i = alpha 1[|W_i| <= 1] g_i + sign(W_i) / n * sum_j sign(W_j) g_j  (per channel).
    """
    alpha = w.abs().mean(dim=_channel_dims(w), keepdim=True)
    return alpha * bnn_sign(w)


@float32_math
@fused_as(_fused.xnor_input)
def xnor_input(x: torch.Tensor, dim: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """XNOR-Net input binarization (Rastegari et al. 2016, Sec. 3.2, Fig. 2).

    Forward: returns (sign(I), A) with A = mean over channels (`dim`) of |I|. The layer turns A
    into the output scale K = A * k (k the 1/(w h) box filter of its kernel, `xnor_scale`), and
    computes (sign(I) conv sign(W)) * K * alpha. Backward: BNN STE for sign, autograd for A.
    """
    return bnn_sign(x), x.abs().mean(dim=dim, keepdim=True)


@float32_math
def xnor_scale(a: torch.Tensor, kernel_size, stride=1, padding=0, dilation=1) -> torch.Tensor:
    """K = A conv k, k = 1/(kh kw) everywhere: the mean of A over each receptive field, zero
    padded like the input (one conv, vectorised over batch and positions)."""
    kh, kw = (kernel_size, kernel_size) if isinstance(kernel_size, int) else kernel_size
    box = torch.full((1, 1, kh, kw), 1.0 / (kh * kw), device=a.device, dtype=a.dtype)
    return F.conv2d(a, box, stride=stride, padding=padding, dilation=dilation)


# --- DoReFa ----------------------------------------------------------------------------------

@float32_math
@fused_as(_fused.quantize_k)
def quantize_k(r: torch.Tensor, k: int) -> torch.Tensor:
    """DoReFa quantize_k (Zhou et al. 2016, eq. 5) for r in [0, 1].

    Forward: round((2^k - 1) r) / (2^k - 1): 2^k levels. Backward: identity (STE).
    """
    n = float(2 ** k - 1)
    return ste(r, torch.round(r * n) / n)


@float32_math
@fused_as(_fused.dorefa_weight)
def dorefa_weight(w: torch.Tensor, k: int) -> torch.Tensor:
    """DoReFa weights (Zhou et al. 2016, eq. 7 and 9).

    k = 1: forward E(|w|) * sign(w), E over the whole tensor and not differentiated; backward
    identity. k > 1: forward 2 quantize_k(tanh(w) / (2 max|tanh(w)|) + 1/2) - 1 (2^k levels in
    [-1, 1]); backward through tanh and max by autograd, STE through the rounding. k = 32: w.
    """
    if k >= 32:
        return w
    if k == 1:
        return ste(w, w.abs().mean().detach() * _sign(w))
    t = torch.tanh(w)
    return 2 * quantize_k(t / (2 * t.abs().max()) + 0.5, k) - 1


@float32_math
@fused_as(_fused.dorefa_act)
def dorefa_act(x: torch.Tensor, k: int) -> torch.Tensor:
    """DoReFa activations (Zhou et al. 2016, eq. 10): forward quantize_k(clip(x, 0, 1));
    backward 1 inside [0, 1], 0 outside. Also the k-bit unsigned uniform activation quantizer."""
    c = x.clamp(0.0, 1.0)
    n = float(2 ** k - 1)
    return ste(x, c if k >= 32 else torch.round(c * n) / n, 0.0, 1.0)


class _DoReFaGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, k):
        ctx.k = k
        return x.clone()  # not a view: the next layer may modify it in place (ReLU(inplace))

    @staticmethod
    def backward(ctx, g):
        dtype, n = g.dtype, float(2 ** ctx.k - 1)
        with torch.autocast(g.device.type, enabled=False):
            g = g.float()
            dims = tuple(range(1, g.dim())) if g.dim() > 1 else (0,)
            m = g.abs().amax(dim=dims, keepdim=True)
            m = torch.where(m > 0, m, torch.ones_like(m))
            noise = (torch.rand_like(g) - 0.5) / n
            r = (g / (2 * m) + 0.5 + noise).clamp(0.0, 1.0)
            q = 2 * m * (torch.round(r * n) / n - 0.5)
        return q.to(dtype), None


@float32_math
def dorefa_grad(x: torch.Tensor, k: int) -> torch.Tensor:
    """DoReFa gradient quantizer (Zhou et al. 2016, eq. 12), applied to a layer's output.

    Forward: identity. Backward: dr <- 2 max|dr| [quantize_k(dr / (2 max|dr|) + 1/2 + N(k)) - 1/2],
    N(k) ~ U(-0.5, 0.5) / (2^k - 1), the argument clipped to [0, 1]. max|dr| is taken over each
    sample (all dims but the batch dim 0), as the paper's reference code (`fg` in
    dorefa.py) does. The noise makes the rounding stochastic, so E[dr_q] = dr (unbiased), and
    each sample's gradient takes at most 2^k values. k = 32: identity in both passes.
    """
    return x if k >= 32 else (_DoReFaGrad if use_reference() else _fused.DoReFaGrad).apply(x, k)


# --- ternary ---------------------------------------------------------------------------------

@float32_math
@fused_as(_fused.twn_weight)
def twn_weight(w: torch.Tensor) -> torch.Tensor:
    """Ternary Weight Networks (Li, Zhang, Liu 2016, eq. 9-11), per layer.

    Forward: Delta = 0.7 E|W|; alpha = mean of |W_i| over |W_i| > Delta; W_t = alpha * sign(W)
    where |W| > Delta, else 0. Backward: identity (STE) to the full-precision W.
    """
    a = w.abs()
    mask = a > 0.7 * a.mean()
    alpha = (a * mask).sum() / mask.sum().clamp(min=1)
    return ste(w, alpha * _sign(w) * mask)


# --- fixed codebooks -------------------------------------------------------------------------

def nearest(x: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """The nearest codebook value (linear distance; ties go to the larger value)."""
    cb = codebook.sort().values
    return cb[torch.bucketize(x, (cb[1:] + cb[:-1]) / 2, right=True)]


def pow2_codebook(levels: int, top: int | torch.Tensor = 0, device=None) -> torch.Tensor:
    """{0, +-2^top, +-2^(top-1), ..., +-2^(top-levels)}: 2 (levels + 1) + 1 values."""
    mags = 2.0 ** (torch.arange(-levels, 1, device=device, dtype=torch.float32) + top)
    return torch.cat([-mags, torch.zeros(1, device=device), mags])


@float32_math
@fused_as(_fused.pow2_weight)
def pow2_weight(w: torch.Tensor, levels: int, scale: bool = True) -> torch.Tensor:
    """Powers-of-two codebook (shift-only multiplications; INQ, Zhou et al. 2017, eq. 1-2).

    Forward: the nearest value in {0, +-2^n1, ..., +-2^(n1-L)} (L = `levels`), nearest in the
    linear domain (not in log2). n1 = floor(log2(4 max|W| / 3)) per layer when `scale` (INQ's
    rule, so the largest weights land on 2^n1), else n1 = 0: {0, +-1, ..., +-2^-L}.
    Backward: identity (STE).
    """
    top = torch.floor(torch.log2(4 * w.abs().max().clamp(min=1e-30) / 3)).detach() if scale else 0
    return ste(w, nearest(w, pow2_codebook(levels, top, w.device)))


@float32_math
@fused_as(_fused.uniform_weight)
def uniform_weight(w: torch.Tensor, k: int) -> torch.Tensor:
    """k-bit symmetric uniform weights, per output channel.

    Forward: s = max|W| per output channel; q = s (2 quantize_k((W/s + 1)/2) - 1): the 2^k levels
    s {-1, -1 + 2/(2^k-1), ..., 1}, symmetric about 0 (a mid-rise grid: 0 is not a level, k = 1
    gives s sign(W)). Backward: identity (STE; |W| <= s always). k = 32: w.
    """
    if k >= 32:
        return w
    s = w.abs().amax(dim=_channel_dims(w), keepdim=True).clamp(min=1e-12).detach()
    n = float(2 ** k - 1)
    # (2 r - n) / n is exactly antisymmetric in r <-> n - r, so the levels are exactly +-pairs
    return ste(w, s * ((2 * torch.round((w / s + 1) / 2 * n) - n) / n))
