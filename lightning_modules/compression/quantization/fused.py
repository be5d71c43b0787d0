"""Fused quantizers: the forward and straight-through backward of `quantizers.py` in fewer passes.

The reference quantizers build their STE out of autograd ops (`q.detach() + (x - x.detach())`,
`torch.where` masks): every step pays two or three extra full-size passes forward and as many
backward, and on this CPU `torch.where` and comparisons into bool tensors run 10-30x slower than
a float multiply (they are not vectorised). The fused versions here

- compute the quantized value on a detached input with in-place ops on fresh temporaries,
- attach the pseudo-gradient with one autograd.Function (`straight_through`) that returns q and
  passes g back, times a float 0/1 mask when the STE is clipped (the only thing saved),
- build every mask and sign from float ops (sign, clamp, subtraction), never from bool tensors,
- give XNOR-Net's scaled sign (`bwn_weight`, `xnor_input`) a hand-written backward that is the
  autograd derivative of the reference, term by term.

Outputs equal the reference's bit for bit, and so do the gradients, with one caveat: where the
reference writes +0.0 into a masked-out gradient, `g * 0` can give -0.0 (same value, equal under
`torch.equal`, no effect on any optimizer). NaN inputs are not handled the same way (the reference
signs NaN to -1). `quantizers.reference_quantizers()` switches every quantizer back to the
reference for comparison (tests/compression/test_fused_quantizers.py) and benchmarking.
"""
from __future__ import annotations

import torch


def _channel_dims(w: torch.Tensor) -> tuple[int, ...]:
    return tuple(range(1, w.dim())) if w.dim() > 1 else (0,)


def sign_pm1(x: torch.Tensor) -> torch.Tensor:
    """+1 where x >= 0 (-0.0 included), -1 below: sign(sign(x) + 1/2), two float passes."""
    return x.sign().add_(0.5).sign_()


def inside(x: torch.Tensor, lo: float | torch.Tensor, hi: float | torch.Tensor) -> torch.Tensor:
    """1.0 where lo <= x <= hi, else 0.0 (float): 1 - |sign(clamp(x) - x)|. clamp(x) - x is 0
    exactly inside and never 0 outside (the difference of two distinct floats). Tensor bounds
    become Python floats on CPU (the same float32 values; a clamp with tensor bounds is ~10x
    slower there)."""
    if x.device.type == "cpu":
        lo, hi = (float(v) if torch.is_tensor(v) else v for v in (lo, hi))
    return x.clamp(lo, hi).sub_(x).sign_().abs_().neg_().add_(1)


def _needs_grad(x: torch.Tensor) -> bool:
    return x.requires_grad and torch.is_grad_enabled()


class _StraightThrough(torch.autograd.Function):
    """Forward: q. Backward: dL/dx = dL/dq, times `mask` when one is given."""

    @staticmethod
    def forward(ctx, x, q, mask):
        ctx.save_for_backward(mask)
        return q

    @staticmethod
    def backward(ctx, g):
        (mask,) = ctx.saved_tensors
        return (g if mask is None else g * mask), None, None


def straight_through(x: torch.Tensor, q: torch.Tensor, mask: torch.Tensor | None = None):
    """`quantizers.ste(x, q)` (mask None) or `ste(x, q, lo, hi)` (mask = `inside(x, lo, hi)`):
    q, computed without autograd, with the pseudo-gradient to x attached."""
    return _StraightThrough.apply(x, q, mask) if _needs_grad(x) else q


def clipped(x: torch.Tensor, q: torch.Tensor, lo, hi) -> torch.Tensor:
    """q with the gradient passed to x only where lo <= x <= hi (the mask made only if needed)."""
    return straight_through(x, q, inside(x.detach(), lo, hi)) if _needs_grad(x) else q


# --- binary ----------------------------------------------------------------------------------

def ste_sign(w):
    return straight_through(w, sign_pm1(w.detach()))


def bnn_sign(x):
    return clipped(x, sign_pm1(x.detach()), -1.0, 1.0)


def stochastic_sign(w, generator=None):
    """u < p as sign(sign(p - u) - 1/2): p - u > 0 exactly when p > u; the same draws as the
    reference (one torch.rand of w's shape)."""
    u = torch.rand(w.shape, generator=generator, device=w.device, dtype=w.dtype)
    p = w.detach().add(1).div_(2).clamp_(0, 1)
    return straight_through(w, p.sub_(u).sign_().sub_(0.5).sign_())


class _ScaledSign(torch.autograd.Function):
    """alpha * sign(x) with alpha = mean |x| over `dims` (BWN weights: the channel dims; XNOR
    inputs: A = mean over channels, returned separately). Backward, as autograd would compute it
    through the reference's ops: g_x = (g_q alpha) 1[|x| <= 1] + (S / n) sgn(x), with
    S = sum over `dims` of g_q sign(x) for BWN, S = g_A for XNOR's A."""

    @staticmethod
    def forward(ctx, x, dims, separate):
        a = x.abs()
        alpha = a.mean(dim=dims, keepdim=True)
        s = sign_pm1(x)
        ctx.dims, ctx.separate, ctx.n = dims, separate, a.numel() // alpha.numel()
        if any(ctx.needs_input_grad):
            mask = a.sub_(1).clamp_(min=0).sign_().neg_().add_(1)  # 1[|x| <= 1], a reused
            ctx.save_for_backward(x, alpha, s, mask)
        return (s, alpha) if separate else s * alpha  # s is saved: a new tensor

    @staticmethod
    def backward(ctx, *grads):
        x, alpha, s, mask = ctx.saved_tensors
        if ctx.separate:
            g_s, g_alpha = grads
            g_x = None if g_s is None else g_s * mask
        else:
            g_s = grads[0]
            g_x = (g_s * alpha).mul_(mask)
            g_alpha = (g_s * s).sum(dim=ctx.dims, keepdim=True)
        if g_alpha is not None:
            # autograd's d|x|/dx is sgn(x); for real x sgn and sign are the same values, and sign
            # is the faster kernel (timeit, 500x800 weight, 2-core EPYC: 53 us against sgn's 213 us)
            via_alpha = x.sign().mul_(g_alpha / ctx.n)
            g_x = via_alpha if g_x is None else g_x.add_(via_alpha)
        return g_x, None, None


def bwn_weight(w):
    return _ScaledSign.apply(w, _channel_dims(w), False)


def xnor_input(x, dim=1):
    if not _needs_grad(x):
        return sign_pm1(x), x.abs().mean(dim=dim, keepdim=True)
    return _ScaledSign.apply(x, (dim,), True)


# --- DoReFa ----------------------------------------------------------------------------------

def quantize_k(r, k):
    n = float(2 ** k - 1)
    return straight_through(r, r.detach().mul(n).round_().div_(n))


def dorefa_weight(w, k):
    if k >= 32:
        return w
    if k == 1:
        m = w.detach().abs().mean()
        return straight_through(w, sign_pm1(w.detach()).mul_(m))
    t = torch.tanh(w)
    return 2 * quantize_k(t / (2 * t.abs().max()) + 0.5, k) - 1


def dorefa_act(x, k):
    c = x.detach().clamp(0.0, 1.0)
    if k < 32:
        n = float(2 ** k - 1)
        c = c.mul_(n).round_().div_(n)
    return clipped(x, c, 0.0, 1.0)


class DoReFaGrad(torch.autograd.Function):
    """`quantizers.dorefa_grad`'s Function, its backward as in-place passes on fresh temporaries
    (the same ops in the same order, the same random draws)."""

    @staticmethod
    def forward(ctx, x, k):
        ctx.k = k
        return x.clone()  # not a view: the next layer may modify it in place (ReLU(inplace))

    @staticmethod
    def backward(ctx, g):
        dtype, n = g.dtype, float(2 ** ctx.k - 1)
        with torch.autocast(g.device.type, enabled=False):
            g = g.float()
            m = g.abs().amax(dim=_channel_dims(g), keepdim=True)
            m = torch.where(m > 0, m, torch.ones_like(m))  # one value per sample: cheap
            noise = torch.rand_like(g).sub_(0.5).div_(n)
            r = g.div(2 * m).add_(0.5).add_(noise).clamp_(0.0, 1.0)
            q = r.mul_(n).round_().div_(n).sub_(0.5).mul_(2 * m)
        return q.to(dtype), None


# --- ternary and codebooks -------------------------------------------------------------------

def twn_weight(w):
    wd = w.detach()
    a = wd.abs()
    mask = (a - 0.7 * a.mean()).clamp_(min=0).sign_()  # 1[|w| > Delta]: a - Delta > 0 exactly then
    alpha = (a * mask).sum() / mask.sum().clamp(min=1)
    return straight_through(w, sign_pm1(wd).mul_(alpha).mul_(mask))


_EXP = 0x7F800000  # float32 exponent bits
_HALF = 0x00400000  # mantissa 1.5: adding it carries into the exponent from 1.5 * 2^e upwards


def pow2_weight(w, levels, scale=True):
    """Nearest of {0, +-2^(top-L), ..., +-2^top} by integer ops on the float bits, with the
    reference's ties (`nearest`: towards the larger value, i.e. up in magnitude for w > 0, down
    for w < 0): |w| rounds to 2^e or 2^(e+1) at 1.5 * 2^e by adding 1.5's mantissa and keeping the
    exponent; the magnitude is then clamped to [2^(top-L), 2^top] and zeroed below the midpoint
    2^(top-L-1)."""
    wd = w.detach()
    if scale:
        top = torch.floor(torch.log2(4 * wd.abs().max().clamp(min=1e-30) / 3))
    else:
        top = torch.zeros((), device=w.device)
    lo = 2.0 ** (top - levels)
    # the bounds' bits as Python ints: a clamp with tensor bounds is ~10x slower on CPU (one sync
    # per layer on a GPU)
    lo_bits, hi_bits, mid_bits = (int(v.view(torch.int32)) for v in (lo, 2.0 ** top, lo / 2))
    bits = wd.view(torch.int32)
    t = (bits & 0x7FFFFFFF).add_(bits >> 31)  # |w| bits, minus 1 where w < 0 (ties go down)
    r = (t + _HALF).bitwise_and_(_EXP).clamp_(lo_bits, hi_bits)  # 2^e or 2^(e+1), in range
    r.mul_(t.sub_(mid_bits).bitwise_right_shift_(31).add_(1))  # 0 below the midpoint lo / 2
    return straight_through(w, r.view(torch.float32).copysign_(wd))


def uniform_weight(w, k):
    if k >= 32:
        return w
    wd = w.detach()
    s = wd.abs().amax(dim=_channel_dims(w), keepdim=True).clamp(min=1e-12)
    n = float(2 ** k - 1)
    r = wd.div(s).add_(1).div_(2).mul_(n).round_()
    return straight_through(w, r.mul_(2).sub_(n).div_(n).mul_(s))


def lq_positions(x: torch.Tensor, bounds: torch.Tensor) -> torch.Tensor:
    """searchsorted(bounds, x) (left) for a few sorted bounds per row: the number of bounds below
    each x, counted with float passes (x - b > 0 exactly when x > b)."""
    pos = torch.zeros_like(x)
    for j in range(bounds.shape[1]):
        pos.add_((x - bounds[:, j:j + 1]).sign_().clamp_(min=0))
    return pos.long()
