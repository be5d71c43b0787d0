"""Quantizers with state: modules, so that their parameters and buffers are registered in the
layer that holds them (optimizer, state_dict, DDP, `.to(device)` all see them).

- `TTQQuantizer`: Trained Ternary Quantization (Zhu, Han, Mao, Dally 2017): learned scales W^p, W^n
  (nn.Parameters, trained by SGD with the paper's gradients).
- `LQQuantizer`: LQ-Nets (Zhang, Yang, Ye, Hua 2018): a learned basis v, updated during training
  by quantization-error minimisation (QEM), not by backpropagation (a buffer).

Both compute in float32 with autocast off (see quantizers.py).
"""
from __future__ import annotations

import itertools

import torch
from torch import nn

from . import fused
from .quantizers import float32_math, ste, use_reference

NORM_PPF_0_75 = 0.6745  # Phi^-1(0.75): the LQ-Nets reference code's basis initialisation
FUSED_MAX_BOUNDS = 7  # up to 3 bits, positions are counted by float passes (fused.lq_positions)


class _TernaryScaled(torch.autograd.Function):
    """Forward: W_t = W^p on {w > Delta}, -W^n on {w < -Delta}, 0 elsewhere (TTQ eq. 6).
    Backward (TTQ eq. 7, 8): dL/dW^p = sum_{I_p} g, dL/dW^n = -sum_{I_n} g (W^n enters with a
    minus sign; the paper writes eq. 7 for the magnitude), and for the latent weights
    dL/dw = W^p g on I_p, 1 * g on I_z, W^n g on I_n."""

    @staticmethod
    def forward(ctx, w, wp, wn, delta):
        pos, neg = w > delta, w < -delta
        ctx.save_for_backward(pos, neg, wp, wn)
        return torch.where(pos, wp, torch.where(neg, -wn, torch.zeros_like(w)))

    @staticmethod
    def backward(ctx, g):
        pos, neg, wp, wn = ctx.saved_tensors
        scale = torch.where(pos, wp, torch.where(neg, wn, torch.ones_like(g)))
        return g * scale, (g * pos).sum().reshape(wp.shape), -(g * neg).sum().reshape(wn.shape), None


class TTQQuantizer(nn.Module):
    """Trained Ternary Quantization (Zhu et al. 2017), one pair of scales per layer.

    Threshold Delta = t * max|w| (eq. 9, t = 0.05 in the paper), recomputed each forward and not
    differentiated. `from_weight` initialises W^p, W^n to the mean magnitude of the weights above
    (below) the threshold, so that training starts at the TWN-like ternary net.
    """

    def __init__(self, wp: float = 1.0, wn: float = 1.0, t: float = 0.05):
        super().__init__()
        self.t = t
        self.wp = nn.Parameter(torch.tensor(float(wp)))
        self.wn = nn.Parameter(torch.tensor(float(wn)))

    @classmethod
    def from_weight(cls, w: torch.Tensor, t: float = 0.05) -> "TTQQuantizer":
        w = w.detach().float()
        delta = t * w.abs().max()
        pos, neg = w > delta, w < -delta
        wp = (w * pos).sum() / pos.sum().clamp(min=1)
        wn = -(w * neg).sum() / neg.sum().clamp(min=1)
        return cls(float(wp), float(wn), t).to(w.device)

    @float32_math
    def forward(self, w: torch.Tensor) -> torch.Tensor:
        delta = (self.t * w.abs().max()).detach()
        return _TernaryScaled.apply(w, self.wp.float(), self.wn.float(), delta)

    def extra_repr(self) -> str:
        return f"t={self.t}"


def code_table(bits: int, signed: bool) -> torch.Tensor:
    """All 2^K code vectors b, (2^K, K): entries in {-1, 1} (signed) or {0, 1}."""
    b = torch.tensor(list(itertools.product((0.0, 1.0), repeat=bits)))
    return 2 * b - 1 if signed else b


def lq_quantize(x: torch.Tensor, basis: torch.Tensor, codes: torch.Tensor):
    """Nearest level per row: x (C, n), basis v (C, K), codes (2^K, K).

    Levels q_l = <v, b_l> (C, 2^K), sorted; the quantization intervals are bounded by the
    midpoints of consecutive levels (LQ-Nets eq. 4-5). Returns (q (C, n), code index (C, n)).
    """
    levels, order = (basis @ codes.T).sort(dim=1)
    bounds = ((levels[:, 1:] + levels[:, :-1]) / 2).contiguous()
    if bounds.shape[1] <= FUSED_MAX_BOUNDS and not use_reference():
        pos = fused.lq_positions(x, bounds)  # the same indices, 5-10x faster for a few levels
    else:
        pos = torch.searchsorted(bounds, x.contiguous())
    return levels.gather(1, pos), order.gather(1, pos)


def qem_basis(x: torch.Tensor, idx: torch.Tensor, codes: torch.Tensor, ridge: float = 1e-6):
    """LQ-Nets QEM step (eq. 6, Algorithm 1): with the codes B fixed, the basis minimising
    ||B^T v - x||^2 per row is v = (B B^T)^-1 B x. B is never materialised: B B^T = sum_l n_l b_l b_l^T
    and B x = sum_l s_l b_l with n_l, s_l the count and the sum of x over the elements coded l.
    `ridge` (relative to n) keeps the system solvable when a code direction is unused."""
    n_codes = codes.shape[0]
    counts = torch.zeros(x.shape[0], n_codes, device=x.device).scatter_add_(1, idx, torch.ones_like(x))
    sums = torch.zeros(x.shape[0], n_codes, device=x.device).scatter_add_(1, idx, x)
    btb = torch.einsum("cl,lk,lm->ckm", counts, codes, codes)
    eye = torch.eye(codes.shape[1], device=x.device) * ridge * x.shape[1]
    return torch.linalg.solve(btb + eye, (sums @ codes).unsqueeze(-1)).squeeze(-1)


class LQQuantizer(nn.Module):
    """LQ-Nets learnable quantizer (Zhang et al. 2018), K bits.

    Forward: q = <v, b> with b in {-1, 1}^K (`signed`, weights) or {0, 1}^K (activations after a
    ReLU, as in the paper), the code of each element being the nearest of the 2^K levels. One
    basis per output channel for weights (`channels` = O, rows = dim 0), one per layer for
    activations (`channels` = 1). While training, each forward also runs one QEM step on the
    input and moves the basis towards its solution: v <- m v + (1 - m) v_QEM (m = `momentum`,
    0.9 in the reference code). Backward: STE, identity for weights, 1 inside [min, max level]
    and 0 outside for activations (a choice: the paper does not specify the clip).
    """

    def __init__(self, bits: int, channels: int = 1, signed: bool = True, momentum: float = 0.9,
                 basis: torch.Tensor | None = None):
        super().__init__()
        self.bits, self.signed, self.momentum = bits, signed, momentum
        if basis is None:
            base = NORM_PPF_0_75 * 2 / (2 ** bits - 1)
            basis = (base * 2.0 ** torch.arange(bits)).expand(channels, bits)
        self.register_buffer("basis", basis.detach().float().clone().reshape(channels, bits))
        self.register_buffer("codes", code_table(bits, signed), persistent=False)

    @classmethod
    def for_weight(cls, w: torch.Tensor, bits: int, momentum: float = 0.9) -> "LQQuantizer":
        """Per-channel basis v_j = 2^j * 0.6745 std(w_c) / 2^(K-1) (the reference init, with the
        measured std in place of He's sqrt(2/n))."""
        rows = w.detach().float().reshape(w.shape[0], -1)
        base = NORM_PPF_0_75 * rows.std(dim=1, keepdim=True).clamp(min=1e-8) / 2 ** (bits - 1)
        basis = base * 2.0 ** torch.arange(bits, device=w.device)
        return cls(bits, w.shape[0], signed=True, momentum=momentum, basis=basis).to(w.device)

    @classmethod
    def for_activation(cls, bits: int, momentum: float = 0.9) -> "LQQuantizer":
        return cls(bits, 1, signed=False, momentum=momentum)

    def levels(self) -> torch.Tensor:
        """The 2^K levels of each channel, sorted: (C, 2^K)."""
        return (self.basis @ self.codes.T).sort(dim=1).values

    @float32_math
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.detach().reshape(self.basis.shape[0], -1)
        levels = None if self.signed else self.levels()  # the clip range (before the QEM step)
        q, idx = lq_quantize(rows, self.basis, self.codes)
        if self.training:
            with torch.no_grad():
                new = qem_basis(rows, idx, self.codes)
                self.basis.mul_(self.momentum).add_((1 - self.momentum) * new)
        q = q.reshape(x.shape)
        if use_reference():
            return ste(x, q) if self.signed else ste(x, q, levels[:, 0].min(), levels[:, -1].max())
        if self.signed:
            return fused.straight_through(x, q)
        return fused.clipped(x, q, levels[:, 0].min(), levels[:, -1].max())

    def extra_repr(self) -> str:
        return (f"bits={self.bits}, channels={self.basis.shape[0]}, signed={self.signed}, "
                f"momentum={self.momentum}")
