"""Quantizers with learned ranges: LSQ, LSQ+ and PACT (their methods: methods.py).

    method=lsq bits=w2a2g32       ->  LSQ(bits={"w": 2, "a": 2, "g": 32}, layers=[rules])

- `LSQQuantizer`: Learned Step Size Quantization (Esser et al. 2020): v_q = round(clamp(v/s,
  -Q_N, Q_P)) s with the step s an nn.Parameter, trained with the paper's gradient (eq. 3)
  scaled by g = 1/sqrt(N Q_P) (Sec. 2.2). With `offset` (LSQ+, Bhalgat et al. 2020) an
  activation offset beta is learned too: v_q = round(clamp((v - beta)/s, 0, Q_P)) s + beta.
- `PACTQuantizer`: PACT (Choi et al. 2018): y = clip(x, 0, alpha), k-bit uniform on [0, alpha],
  alpha an nn.Parameter with the PACT gradient 1[x >= alpha] and an L2 decay (`PACT.after_step`).

The quantizers are modules (as learned.py's), so the optimizer, the state dict, DDP and
`.to(device)` see their parameters. Forward values are exact levels (k s + beta, k alpha / n):
the packed export stores the weights at their bits (pack.py) and reloads them bit-identically.
"""
from __future__ import annotations

import math

import torch
import torch.distributed as dist
from torch import nn

from .quantizers import float32_math


def lsq_range(bits: int, signed: bool) -> tuple[int, int]:
    """(Q_N, Q_P) of LSQ: signed data -2^(b-1)..2^(b-1)-1, unsigned 0..2^b-1 (Esser et al. Sec. 2)."""
    return (2 ** (bits - 1), 2 ** (bits - 1) - 1) if signed else (0, 2 ** bits - 1)


def _sum_to(t: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """A gradient of the broadcast result reduced to a parameter of `shape` (same rank or 0-d)."""
    if len(shape) == 0:
        return t.sum()
    dims = tuple(i for i, n in enumerate(shape) if n == 1 and t.shape[i] != 1)
    return t.sum(dim=dims, keepdim=True) if dims else t


def _all_reduce(t: torch.Tensor, how: str = "mean") -> torch.Tensor:
    """A 0-d `t` reduced over the ranks of a DDP run ("mean", "min", "max"): every rank starts
    from the same initial step although each saw its own first batch. Single process: `t`."""
    if not (dist.is_available() and dist.is_initialized()):
        return t
    t = t.reshape(1).clone()
    op = {"mean": dist.ReduceOp.SUM, "min": dist.ReduceOp.MIN, "max": dist.ReduceOp.MAX}[how]
    dist.all_reduce(t, op=op)
    return (t / dist.get_world_size() if how == "mean" else t)[0]


class _LSQRound(torch.autograd.Function):
    """Forward: u = (v - beta)/s, v_q = round(clamp(u, -Q_N, Q_P)) s + beta (beta None: 0).
    Backward (LSQ eq. 3 and 5, LSQ+ eq. 5), with I = {-Q_N < u < Q_P}:
    dL/dv = g_q 1[I] (STE); dL/ds = g sum g_q (round(u) - u on I, -Q_N for u <= -Q_N, Q_P for
    u >= Q_P); dL/dbeta = g sum g_q 1[not I]; sums over the elements each s (beta) covers."""

    @staticmethod
    def forward(ctx, v, s, beta, qn, qp, g):
        u = (v - beta) / s if beta is not None else v / s
        q = torch.round(u.clamp(-qn, qp)) * s
        ctx.save_for_backward(u, s, beta)
        ctx.qn, ctx.qp, ctx.g = qn, qp, g
        return q if beta is None else q + beta

    @staticmethod
    def backward(ctx, grad):
        u, s, beta = ctx.saved_tensors
        qn, qp, g = ctx.qn, ctx.qp, ctx.g
        below, above = u <= -qn, u >= qp
        inside = ~(below | above)
        ds = torch.where(below, -float(qn), torch.where(above, float(qp), torch.round(u) - u))
        gs = _sum_to(grad * ds * g, s.shape)
        gb = None if beta is None else _sum_to(grad * (~inside) * g, beta.shape)
        return grad * inside, gs, gb, None, None, None


def _sync_after_load(module: "LSQQuantizer", incompatible_keys) -> None:
    """After load_state_dict (a reloaded file, a resumed checkpoint): the python copies of the
    `initialized` / `signed` buffers follow the loaded values (a module function: picklable)."""
    module._sync()


class LSQQuantizer(nn.Module):
    """LSQ (Esser et al. 2020) / LSQ+ (Bhalgat et al. 2020) quantizer, `bits` in 2..8.

    Weights (`activations=False`): signed range, one step per layer or per output channel
    (`channels`), N = weights per step; initialised at apply (`for_weight`). Activations: one
    step per layer, N = features per sample; initialised from the first training batch (signed
    range if that batch has a negative value, e.g. a BatchNorm output, else unsigned: ReLU's).
    Initial step (LSQ): 2 mean|v| / sqrt(Q_P). With `offset` (LSQ+ activations): range
    0..2^b-1 and min-max initial values s = (max - min)/(2^b - 1), beta = min (the paper's
    min-max option, not its MSE-searched one). Gradient scale g = 1/sqrt(N Q_P) on s and beta.
    `initialized` and `signed` are buffers, so a reloaded or resumed net keeps its range.
    """

    def __init__(self, bits: int, channels: int = 1, activations: bool = False, offset: bool = False,
                 signed: bool = True):
        super().__init__()
        self.bits, self.activations = bits, activations
        self.step = nn.Parameter(torch.ones(channels) if channels > 1 else torch.ones(()))
        self.offset = nn.Parameter(torch.zeros(())) if offset else None
        self.register_buffer("initialized", torch.tensor(False))
        self.register_buffer("signed", torch.tensor(bool(signed) and not offset))
        self._ready, self._signed = False, bool(signed) and not offset  # python copies: no sync per step
        self.register_load_state_dict_post_hook(_sync_after_load)

    def _sync(self) -> None:
        self._ready, self._signed = bool(self.initialized), bool(self.signed)

    @classmethod
    def for_weight(cls, w: torch.Tensor, bits: int, per_channel: bool = False,
                   init: str = "lsq") -> "LSQQuantizer":
        """Step(s) from the weight: init "lsq" 2 mean|w| / sqrt(Q_P) (Esser et al.), "lsq_plus"
        max(|mu - 3 sigma|, |mu + 3 sigma|) / 2^(b-1) (Bhalgat et al. Sec. 3.4)."""
        rows = w.detach().float().reshape(w.shape[0] if per_channel else 1, -1)
        q = cls(bits, w.shape[0] if per_channel else 1).to(w.device)
        if init == "lsq":
            s = 2 * rows.abs().mean(dim=1) / math.sqrt(lsq_range(bits, True)[1])
        else:
            mu, sigma = rows.mean(dim=1), rows.std(dim=1)
            s = torch.maximum((mu - 3 * sigma).abs(), (mu + 3 * sigma).abs()) / 2 ** (bits - 1)
        q.set_(s.clamp(min=1e-8).reshape(q.step.shape))
        return q

    @classmethod
    def for_activation(cls, bits: int, offset: bool = False) -> "LSQQuantizer":
        return cls(bits, 1, activations=True, offset=offset)

    @torch.no_grad()
    def set_(self, step: torch.Tensor, offset: torch.Tensor | None = None, signed: bool | None = None):
        """Set the initial values and mark the quantizer initialised."""
        self.step.copy_(step)
        if offset is not None:
            self.offset.copy_(offset)
        if signed is not None:
            self.signed.fill_(signed)
        self.initialized.fill_(True)
        self._sync()

    def range(self) -> tuple[int, int]:
        return lsq_range(self.bits, self._signed)

    @torch.no_grad()
    def init_from(self, x: torch.Tensor) -> None:
        """Initial step (and offset) from an activation batch, averaged over DDP ranks."""
        x = x.detach().float()
        if self.offset is not None:
            lo, hi = _all_reduce(x.min(), "min"), _all_reduce(x.max(), "max")
            self.set_(((hi - lo) / (2 ** self.bits - 1)).clamp(min=1e-8), lo)
            return
        signed = bool(_all_reduce(x.min(), "min") < 0)
        qp = lsq_range(self.bits, signed)[1]
        mean = _all_reduce(x.abs().mean())
        self.set_((2 * mean / math.sqrt(qp)).clamp(min=1e-8), signed=signed)

    def grad_scale(self, x: torch.Tensor) -> float:
        """g = 1/sqrt(N Q_P): N the features per sample (activations) or weights per step."""
        n = x[0].numel() if self.activations else x.numel() // self.step.numel()
        return 1.0 / math.sqrt(n * self.range()[1])

    @float32_math
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and not self._ready:
            self.init_from(x)
        s = self.step.reshape(-1, *([1] * (x.dim() - 1))) if self.step.dim() else self.step
        qn, qp = self.range()
        return _LSQRound.apply(x, s, self.offset, qn, qp, self.grad_scale(x))

    def extra_repr(self) -> str:
        return (f"bits={self.bits}, steps={self.step.numel()}, activations={self.activations}, "
                f"offset={self.offset is not None}")


class _PACTQuant(torch.autograd.Function):
    """Forward: y = clip(x, 0, alpha), y_q = round(y n / alpha) alpha / n, n = 2^k - 1 (PACT eq. 1-2).
    Backward (eq. 3-4, STE through the rounding): dL/dx = g 1[0 <= x < alpha],
    dL/dalpha = sum g 1[x >= alpha]."""

    @staticmethod
    def forward(ctx, x, alpha, n):
        ctx.save_for_backward(x, alpha)
        y = torch.minimum(x.clamp(min=0.0), alpha)
        return torch.round(y * (n / alpha)) * (alpha / n)

    @staticmethod
    def backward(ctx, grad):
        x, alpha = ctx.saved_tensors
        gx = grad * ((x >= 0) & (x < alpha))
        return gx, (grad * (x >= alpha)).sum().reshape(alpha.shape), None


class PACTQuantizer(nn.Module):
    """PACT activations (Choi et al. 2018): k bits on [0, alpha], alpha learned per layer."""

    def __init__(self, bits: int, alpha: float = 10.0):
        super().__init__()
        self.bits = bits
        self.alpha = nn.Parameter(torch.tensor(float(alpha)))

    @float32_math
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _PACTQuant.apply(x, self.alpha, float(2 ** self.bits - 1))

    @torch.no_grad()
    def decay_(self, rate: float) -> None:
        """One step of the L2 penalty (lambda/2) alpha^2: alpha <- alpha (1 - lr lambda)."""
        self.alpha.mul_(1.0 - rate)

    def extra_repr(self) -> str:
        return f"bits={self.bits}"
