"""Post-training quantization (PTQ) of a finished FP32 run: no training, only calibration.

    method=ptq bits=w4a8g32 method.init_from=<fp32 run> method.observer=mse method.rounding=adaround

The trained float weights (`init_from`, a run reference the harness resolves to a state dict,
lightning_modules/earlier_runs.py) are loaded, the selected Conv2d/Linear layers (select.py rules,
QuantMethod) become QConv2d/QLinear with two `FakeQuant` quantizers, and `calibrate(model,
batches)` sets their scales and zero points from N training-split batches instead of fitting
(run.py draws them with `calibration_seed` and refuses N outside 1..the split's full batches):

- activations (each quantized layer's input): unsigned affine k_a-bit, q = clamp(round(x / s) +
  z, 0, 2^k_a - 1), x_q = (q - z) s, the range [lo, hi] (lo <= 0 <= hi) from the `observer` over
  the float net's inputs to the layer on all N batches;
- weights: symmetric signed k_w-bit, narrow range q in [-(2^(k_w-1) - 1), 2^(k_w-1) - 1] (zero
  point 0; 2^k_w - 1 levels, so 2 bits is ternary), per output channel (`per_channel`) or per
  tensor, the range from `weight_observer` (minmax or mse), then rounded to nearest or by
  AdaRound (`rounding`).

Observers, and which library computes them (all ranges become (s, z) through torch's
`_calculate_qparams`, one rounding convention for every observer):

- minmax: torch.ao.quantization's MinMaxObserver / PerChannelMinMaxObserver (exact running min and
  max; in process on torch tensors, on the model's device).
- mse: the range [f lo, f hi] (f in 1/100, 2/100, ..., 1 of the min-max range) whose uniform
  quantization has the least squared error, per channel for weights (exact, on the weights) and
  per tensor for activations (on the 2048-bin histogram that torch.ao's HistogramObserver keeps
  over all batches, each bin at its centre). HistogramObserver's own min/max search was tried and
  not used: it is greedy (it stops at the first step that raises the error), it moves min and max
  independently for an affine grid (for a symmetric weight grid the larger side then decides:
  Laplace weights at 4 bits came out at the min-max range, 3.6x the best error of the grid), and
  it assumes 2^8 target levels whatever quant_min/quant_max say.
- percentile, entropy: ONNX Runtime's `HistogramCollector` (onnxruntime.quantization.calibrate),
  the collector behind its PercentileCalibrater / EntropyCalibrater. It works on numpy arrays
  alone (`collect({name: array})`, `compute_collection_result()`), so no ONNX model is built: the
  activations are handed over batch by batch. percentile: the (100 - p)/2 % and (100 + p)/2 %
  points of a 2048-bin histogram (asymmetric, clipped to the observed min/max); entropy:
  TensorRT's KL-divergence threshold over the histogram, with `num_quantized_bins` = the grid's
  levels over the histogram's [-T, T] (2^k_a, or 2^(k_a+1) for a non-negative input whose
  levels all lie in [0, T]). Its progress print() lines are swallowed.
- torch.ao has no percentile or entropy observer, and torchao (not installed) targets GPU int
  kernels rather than observers for fake quantization, hence the split.

AdaRound (Nagel et al. 2020, "Up or Down? Adaptive Rounding for Post-Training Quantization"):
torch 2.14 no longer ships torch.ao's experimental AdaRound and no maintained package for it is
installed, so it is written here, following the paper and its reference code (BRECQ's
AdaRoundQuantizer): per quantized layer, in order, W~ = s (clamp(floor(W / s) + h(V) + z, qmin,
qmax) - z) with the rectified sigmoid h(V) = clamp(sigmoid(V) (zeta - gamma) + gamma, 0, 1),
zeta = 1.1, gamma = -0.1, V initialised so that h(V) = W/s - floor(W/s) (W~ starts at W); Adam on
V alone minimises ||W x - W~ x||^2 (summed over output channels, mean over samples and positions;
x the layer's input in the float net on the calibration batches, `batch_size` samples per step)
+ lambda sum(1 - |2 h(V) - 1|^beta), the regulariser off for the first `warmup` fraction of the
iterations, then beta annealed linearly from beta_start (20) to beta_end (2). The result rounds
each weight down or up (h(V) >= 0.5, i.e. V >= 0), never further, and is written into the weight
itself (on its grid point), so the weight quantizer's nearest rounding reproduces it exactly.

The file is the packed export (pack.py): each weight at its k_w-bit codes, the activation
quantizers' scale and zero point among the float32 values, so a reload (and the deploy step)
runs the same fake-quantized net.
"""
from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Mapping, Sequence
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.ao.quantization.observer import (HistogramObserver, MinMaxObserver,
                                            PerChannelMinMaxObserver)

from ..errors import ConfigError
from ..method import state_mismatch
from ..select import DEFAULT_QUANT_RULES, choose
from ..swap import swap_modules
from .base import FULL, QuantMethod, map_channels
from .pack import load_packed
from .qlayers import QConv2d, QLayer
from .quantizers import float32_math, ste

log = logging.getLogger("harness")

OBSERVERS = ("minmax", "percentile", "mse", "entropy")
WEIGHT_OBSERVERS = ("minmax", "mse")
ROUNDINGS = ("nearest", "adaround")
BITS = (*range(2, 9), 32)  # uniform integer grids of 2..8 bits (1 bit is a sign, not a uniform grid); 32: float
ADAROUND = {"iterations": 10000, "lr": 1e-3, "batch_size": 32, "lam": 0.01, "beta_start": 20.0,
            "beta_end": 2.0, "warmup": 0.2}
ZETA, GAMMA = 1.1, -0.1  # the rectified sigmoid's stretch (Nagel et al. 2020, Sec. 4.1)


def act_grid(k: int) -> tuple[int, int]:
    """(qmin, qmax) of an unsigned k-bit activation grid."""
    return 0, 2 ** k - 1


def weight_grid(k: int) -> tuple[int, int]:
    """(qmin, qmax) of a symmetric, narrow-range signed k-bit weight grid."""
    return -(2 ** (k - 1) - 1), 2 ** (k - 1) - 1


class FakeQuant(nn.Module):
    """x -> (clamp(round(x / s) + z, qmin, qmax) - z) s, uniform at the calibrated scale s and
    zero point z (float32 buffers: in the state dict, the packed file and the deploy twin), per
    tensor or per output channel (`channels`: s and z of shape (C, 1, ..., 1) over dim 0).
    Backward: straight-through (no training uses it; it keeps the layer differentiable)."""

    def __init__(self, qmin: int, qmax: int, channels: int | None = None, dims: int = 0):
        super().__init__()
        self.qmin, self.qmax = int(qmin), int(qmax)
        shape = () if channels is None else (channels, *([1] * (dims - 1)))
        self.register_buffer("scale", torch.ones(shape))
        self.register_buffer("zero_point", torch.zeros(shape))

    def codes(self, x: torch.Tensor) -> torch.Tensor:
        return torch.clamp(torch.round(x / self.scale) + self.zero_point, self.qmin, self.qmax)

    @float32_math  # in float32 under autocast too, as every quantizer (quantizers.py)
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ste(x, (self.codes(x) - self.zero_point) * self.scale)

    @torch.no_grad()
    def set_qparams(self, scale: torch.Tensor, zero_point: torch.Tensor) -> None:
        self.scale.copy_(scale.reshape(self.scale.shape).float())
        self.zero_point.copy_(zero_point.reshape(self.zero_point.shape).float())

    def extra_repr(self) -> str:
        return f"q in [{self.qmin}, {self.qmax}], {'per tensor' if self.scale.dim() == 0 else 'per channel'}"


# --- observers ---------------------------------------------------------------------------------

def _dtype(qmin: int) -> torch.dtype:
    return torch.qint8 if qmin < 0 else torch.quint8


def _scheme(qmin: int, per_channel: bool):
    if qmin < 0:
        return torch.per_channel_symmetric if per_channel else torch.per_tensor_symmetric
    return torch.per_channel_affine if per_channel else torch.per_tensor_affine


def qparams(lo: torch.Tensor, hi: torch.Tensor, qmin: int, qmax: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, zero_point) of the range [lo, hi] (per channel when 1-d) on the grid [qmin, qmax]:
    symmetric (z = 0) for a signed grid, affine for an unsigned one, as torch's observers compute
    them (the range is widened to contain 0)."""
    lo, hi = torch.as_tensor(lo, dtype=torch.float32), torch.as_tensor(hi, dtype=torch.float32)
    obs = MinMaxObserver(dtype=_dtype(qmin), qscheme=_scheme(qmin, False), quant_min=qmin, quant_max=qmax)
    if lo.dim():
        obs = PerChannelMinMaxObserver(0, dtype=_dtype(qmin), qscheme=_scheme(qmin, True),
                                       quant_min=qmin, quant_max=qmax)
    scale, zp = obs._calculate_qparams(lo.cpu(), hi.cpu())
    return scale.float().reshape(lo.shape), zp.float().reshape(lo.shape)


class Observer:
    """A range observer over the batches it sees: `observe(x)` each, then `range()` -> (lo, hi)
    (1-d over dim 0 when `per_channel`) and `qparams()` -> (scale, zero_point) on [qmin, qmax]."""

    def __init__(self, kind: str, qmin: int, qmax: int, per_channel: bool = False,
                 percentile: float = 99.99, bins: int = 2048):
        self.kind, self.qmin, self.qmax, self.per_channel = kind, qmin, qmax, per_channel
        self.percentile, self.bins = percentile, bins
        self.torch_obs: list[nn.Module] = []
        self.collector = None
        self.lo = self.hi = None  # the observed min / max (ORT's collector keeps its own too)

    def _torch_observer(self, per_channel: bool) -> nn.Module:
        kw = {"dtype": _dtype(self.qmin), "qscheme": _scheme(self.qmin, per_channel),
              "quant_min": self.qmin, "quant_max": self.qmax}
        if self.kind == "mse" and not self.per_channel:
            return HistogramObserver(bins=self.bins, **kw)  # only its histogram is used
        return PerChannelMinMaxObserver(0, **kw) if per_channel else MinMaxObserver(**kw)

    @torch.no_grad()
    def observe(self, x: torch.Tensor) -> None:
        x = x.detach().float()
        if self.kind in ("percentile", "entropy"):
            self._collect(x)
            return
        if self.kind == "mse" and self.per_channel:  # weights: the values themselves, per channel
            self.values = x.reshape(x.shape[0], -1)
        if not self.torch_obs:
            self.torch_obs = [self._torch_observer(self.per_channel).to(x.device)]
        self.torch_obs[0](x)

    def _collect(self, x: torch.Tensor) -> None:
        from onnxruntime.quantization.calibrate import HistogramCollector
        lo, hi = x.min(), x.max()
        self.lo = lo if self.lo is None else torch.minimum(self.lo, lo)
        self.hi = hi if self.hi is None else torch.maximum(self.hi, hi)
        if self.collector is None:
            self.collector = HistogramCollector(method=self.kind, symmetric=False, num_bins=self.bins,
                                                num_quantized_bins=0, percentile=self.percentile,
                                                scenario="same")
        with contextlib.redirect_stdout(io.StringIO()):
            self.collector.collect({"x": x.cpu().numpy().astype(np.float32)})

    def range(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.kind in ("percentile", "entropy"):
            if self.kind == "entropy":  # the grid's levels over the histogram's [-T, T]
                levels = (self.qmax - self.qmin + 1) * (2 if self.lo >= 0 else 1)
                hist = self.collector.histogram_dict["x"][0]
                self.collector.num_quantized_bins = min(levels, len(hist))
            with contextlib.redirect_stdout(io.StringIO()):
                lo, hi = self.collector.compute_collection_result()["x"][:2]
            return torch.tensor(float(lo)), torch.tensor(float(hi))
        obs = self.torch_obs[0]
        if self.kind != "mse":
            return obs.min_val, obs.max_val
        if self.per_channel:
            return mse_range(self.values, None, obs.min_val, obs.max_val, self.qmin, self.qmax)
        lo, hi, hist = obs.min_val, obs.max_val, obs.histogram
        width = (hi - lo) / len(hist)
        centres = lo + width * (torch.arange(len(hist), device=hist.device) + 0.5)
        return mse_range(centres[None], hist[None], lo[None], hi[None], self.qmin, self.qmax, channels=False)

    def qparams(self) -> tuple[torch.Tensor, torch.Tensor]:
        return qparams(*self.range(), self.qmin, self.qmax)


def mse_range(values: torch.Tensor, counts: torch.Tensor | None, lo: torch.Tensor, hi: torch.Tensor,
              qmin: int, qmax: int, steps: int = 100, channels: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row of `values` (C, n) (each value counted `counts` times, or once): the range
    (f lo_c, f hi_c), f in {1/steps, ..., 1}, whose quantization on [qmin, qmax] has the least
    sum of squared errors. Returns (lo, hi) of shape (C,), or scalars when not `channels`."""
    lo, hi = lo.reshape(-1, 1).float(), hi.reshape(-1, 1).float()
    w = torch.ones_like(values) if counts is None else counts
    best = torch.full_like(lo, float("inf"))
    best_f = torch.ones_like(lo)
    for f in torch.arange(1, steps + 1, device=values.device) / steps:
        scale, zp = qparams(f * lo.flatten(), f * hi.flatten(), qmin, qmax)
        scale, zp = scale.to(values.device)[:, None], zp.to(values.device)[:, None]
        q = (torch.clamp(torch.round(values / scale) + zp, qmin, qmax) - zp) * scale
        err = (w * (q - values) ** 2).sum(1, keepdim=True)
        better = err < best
        best, best_f = torch.where(better, err, best), torch.where(better, f, best_f)
    lo, hi = (best_f * lo).flatten(), (best_f * hi).flatten()
    return (lo, hi) if channels else (lo[0], hi[0])


# --- AdaRound ----------------------------------------------------------------------------------

def rectified_sigmoid(v: torch.Tensor) -> torch.Tensor:
    """h(V) = clamp(sigmoid(V) (zeta - gamma) + gamma, 0, 1) (Nagel et al. 2020, eq. 23)."""
    return torch.clamp(torch.sigmoid(v) * (ZETA - GAMMA) + GAMMA, 0, 1)


def init_v(w: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """V with h(V) = W/s - floor(W/s): the soft-rounded weight starts at W."""
    rest = (w / scale - torch.floor(w / scale)).clamp(1e-6, 1 - 1e-6)
    return -torch.log((ZETA - GAMMA) / (rest - GAMMA) - 1)


def soft_weight(w: torch.Tensor, v: torch.Tensor, q: FakeQuant, hard: bool = False) -> torch.Tensor:
    """W~ = s (clamp(floor(W / s) + h(V) + z, qmin, qmax) - z); `hard`: h(V) -> 1[V >= 0]."""
    h = (v >= 0).to(w.dtype) if hard else rectified_sigmoid(v)
    return (torch.clamp(torch.floor(w / q.scale) + h + q.zero_point, q.qmin, q.qmax) - q.zero_point) * q.scale


def round_regulariser(v: torch.Tensor, beta: float) -> torch.Tensor:
    """sum(1 - |2 h(V) - 1|^beta): 0 only when every h(V) is 0 or 1 (eq. 24)."""
    return (1 - (2 * rectified_sigmoid(v) - 1).abs().pow(beta)).sum()


def beta_at(t: int, iterations: int, warmup: float, start: float, end: float) -> float | None:
    """The regulariser's beta at step t: None during warmup, then linear from start to end."""
    first = warmup * iterations
    if t < first:
        return None
    return end + (start - end) * max(0.0, 1 - (t - first) / max(1.0, iterations - first))


def _output(layer: nn.Module, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    if isinstance(layer, QConv2d):
        return layer._conv_forward(x, w, None)
    return F.linear(x, w)


def adaround(layer: nn.Module, x: torch.Tensor, iterations: int, lr: float, batch_size: int, lam: float,
             beta_start: float, beta_end: float, warmup: float, generator: torch.Generator) -> torch.Tensor:
    """V learned by AdaRound for a QConv2d/QLinear whose weight quantizer is calibrated, on its
    inputs x (N, ...); `soft_weight(W, V, quantizer, hard=True)` is W~ on the grid."""
    q, w = layer.weight_quant, layer.weight.detach()
    v = nn.Parameter(init_v(w, q.scale))
    opt = torch.optim.Adam([v], lr=lr)
    for t in range(iterations):
        idx = torch.randint(0, x.shape[0], (min(batch_size, x.shape[0]),), generator=generator)
        xb = x[idx.to(x.device)]
        with torch.no_grad():
            target = _output(layer, xb, w)
        rec = (_output(layer, xb, soft_weight(w, v, q)) - target).pow(2).sum(1).mean()
        beta = beta_at(t, iterations, warmup, beta_start, beta_end)
        loss = rec if beta is None else rec + lam * round_regulariser(v, beta)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return v.detach()


class _Stop(Exception):
    """Raised by a hook once it has the input it wanted: the rest of the forward is skipped."""


@torch.no_grad()
def layer_inputs(model: nn.Module, layer: nn.Module, batches) -> torch.Tensor:
    """The inputs `layer` receives on `batches` (the forward stops at the layer)."""
    seen = []

    def hook(module, args):
        seen.append(args[0].detach())
        raise _Stop

    handle = layer.register_forward_pre_hook(hook)
    try:
        for x in batches:
            try:
                model(x)
            except _Stop:
                pass
    finally:
        handle.remove()
    return torch.cat(seen)


@contextlib.contextmanager
def float_layers(model: nn.Module):
    """The QLayers run in float (quantizers detached) inside the block, restored after it."""
    saved = {m: (m.weight_quant, m.act_quant) for m in model.modules() if isinstance(m, QLayer)}
    try:
        for m in saved:
            m.weight_quant, m.act_quant = None, None
        yield
    finally:
        for m, (wq, aq) in saved.items():
            m.weight_quant, m.act_quant = wq, aq


# --- the method --------------------------------------------------------------------------------

def _choice(key: str, value, valid: Sequence[str]) -> str:
    if value not in valid:
        raise ConfigError(f"method.{key}={value}: valid: {', '.join(valid)}")
    return value


def _positive(key: str, value, kind=int) -> int | float:
    ok = not isinstance(value, bool) and isinstance(value, (int, float) if kind is float else int) and value > 0
    if not ok:
        raise ConfigError(f"method.{key}={value}: must be {'a number' if kind is float else 'an integer'} > 0")
    return kind(value)


class PTQ(QuantMethod):
    """`method=ptq`: see the module doc and conf/method/ptq.yaml for the keys."""

    VALID = {"w": BITS, "a": BITS, "g": FULL}  # g: nothing is trained, gradients are never quantized
    trains = False  # the harness calls `calibrate` instead of fitting

    def __init__(self, bits, layers=DEFAULT_QUANT_RULES, observer: str = "minmax",
                 weight_observer: str = "minmax", per_channel: bool = True, percentile: float = 99.99,
                 histogram_bins: int = 2048, calibration_batches: int = 32, calibration_seed: int = 0,
                 rounding: str = "nearest", adaround: Mapping | None = None,
                 init_from: Mapping | None = None, name: str = "ptq"):
        super().__init__(name, bits, layers, input_bn=False)
        self.observer = _choice("observer", observer, OBSERVERS)
        self.weight_observer = _choice("weight_observer", weight_observer, WEIGHT_OBSERVERS)
        self.rounding = _choice("rounding", rounding, ROUNDINGS)
        if not isinstance(per_channel, bool):
            raise ConfigError(f"method.per_channel={per_channel}: must be true or false")
        self.per_channel = per_channel
        if isinstance(percentile, bool) or not isinstance(percentile, (int, float)) or not 50 < percentile <= 100:
            raise ConfigError(f"method.percentile={percentile}: must be a number in (50, 100]")
        self.percentile = float(percentile)
        self.bins = _positive("histogram_bins", histogram_bins)
        self.calibration_batches = _positive("calibration_batches", calibration_batches)
        if isinstance(calibration_seed, bool) or not isinstance(calibration_seed, int):
            raise ConfigError(f"method.calibration_seed={calibration_seed}: must be an integer")
        self.calibration_seed = calibration_seed
        self.adaround = self._adaround(adaround or {})
        self.init_from = None if init_from is None else dict(init_from)

    @staticmethod
    def _adaround(opts: Mapping) -> dict:
        unknown = sorted(set(opts) - set(ADAROUND))
        if unknown:
            raise ConfigError(f"method.adaround.{unknown[0]}: unknown key; valid: {', '.join(ADAROUND)}")
        out = {**ADAROUND, **opts}
        for k in ("iterations", "batch_size"):
            _positive(f"adaround.{k}", out[k])
        for k in ("lr", "lam", "beta_start", "beta_end"):
            out[k] = _positive(f"adaround.{k}", out[k], float)
        w = out["warmup"]
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not 0 <= w < 1:
            raise ConfigError(f"method.adaround.warmup={w}: must be a number in [0, 1)")
        return out

    # roles: quantizers with placeholder qparams, set by `calibrate` (or loaded from the file)
    def weight_quant(self, layer, bits):
        if bits["w"] == 32:
            return None
        channels = layer.weight.shape[0] if self.per_channel else None
        return FakeQuant(*weight_grid(bits["w"]), channels, layer.weight.dim()).to(layer.weight.device)

    def act_quant(self, layer, bits):
        return None if bits["a"] == 32 else FakeQuant(*act_grid(bits["a"])).to(layer.weight.device)

    def apply(self, model: nn.Module) -> nn.Module:
        """The init_from weights loaded, the selected layers swapped (placeholder qparams)."""
        if self.init_from is None:
            raise ConfigError("method.init_from=None: ptq quantizes a trained net without training; "
                              "valid: a run name, run directory or model file of a finished fp32 run")
        if (key := state_mismatch(model, self.init_from)) is not None:
            raise ConfigError(f"method.init_from: its weights do not fit model {type(model).__name__} ({key})")
        model.load_state_dict(self.init_from)
        return self._swap_in(model)

    def _swap_in(self, model: nn.Module) -> nn.Module:
        plan = choose(model, self.rules)
        return swap_modules(model, partial(self._swap, plan=plan, channels=map_channels(model)), plan)

    def load(self, model: nn.Module, path: str | Path) -> nn.Module:
        """A fresh model -> the quantized layers swapped in, the file's weights and qparams
        (a later process has no init_from: nothing else is needed)."""
        if not any(isinstance(m, QLayer) for m in model.modules()):
            model = self._swap_in(model)
        return load_packed(model, path)

    @torch.no_grad()
    def calibrate(self, model: nn.Module, batches: Sequence) -> nn.Module:
        """Scales and zero points from `batches` ((x, y) pairs of the training split): activation
        ranges from the float net's layer inputs, weight ranges from the weights, then AdaRound
        when `rounding=adaround`. Returns the model in eval mode, quantized."""
        if not batches:
            raise ConfigError("method.calibration_batches: no calibration batches were given")
        was = model.training
        model.eval()
        device = next(model.parameters()).device
        xs = [(b[0] if isinstance(b, (tuple, list)) else b).to(device) for b in batches]
        layers = [(n, m) for n, m in model.named_modules() if isinstance(m, QLayer)]
        self._calibrate_acts(model, layers, xs)
        for name, m in layers:
            if m.weight_quant is not None:
                obs = Observer(self.weight_observer, m.weight_quant.qmin, m.weight_quant.qmax,
                               self.per_channel, bins=self.bins)
                obs.observe(m.weight)
                m.weight_quant.set_qparams(*obs.qparams())
        if self.rounding == "adaround":
            self._adaround_all(model, layers, xs)
        return model.train(was)

    def _calibrate_acts(self, model, layers, xs) -> None:
        observers = {m: Observer(self.observer, m.act_quant.qmin, m.act_quant.qmax,
                                 percentile=self.percentile, bins=self.bins)
                     for _, m in layers if m.act_quant is not None}
        if not observers:
            return
        handles = [m.register_forward_pre_hook(lambda mod, args: observers[mod].observe(args[0]))
                   for m in observers]
        try:
            with float_layers(model):
                for x in xs:
                    model(x)
        finally:
            for h in handles:
                h.remove()
        for m, obs in observers.items():
            m.act_quant.set_qparams(*obs.qparams())

    def _adaround_all(self, model, layers, xs) -> None:
        gen = torch.Generator().manual_seed(self.calibration_seed)
        for name, m in layers:
            if m.weight_quant is None:
                continue
            with float_layers(model):
                x = layer_inputs(model, m, xs)
            with torch.enable_grad():
                v = adaround(m, x, generator=gen, **self.adaround)
            wq = soft_weight(m.weight, v, m.weight_quant, hard=True)
            nearest = m.weight_quant(m.weight)
            log.info("adaround  %s: %.1f%% of the weights rounded away from nearest", name,
                     100 * (wq != nearest).float().mean().item())
            m.weight.copy_(wq)

    def __repr__(self) -> str:
        b = self.bits
        return (f"PTQ(W{b['w']}A{b['a']}, observer={self.observer}, weights={self.weight_observer}"
                f"{' per channel' if self.per_channel else ''}, rounding={self.rounding}, "
                f"{self.calibration_batches} batches)")
