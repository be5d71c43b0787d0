"""ONNX export of a harness net, quantized layers on ONNX Runtime's integer kernels.

    info = export_onnx(net, (3, 32, 32), "net.onnx")       # {"layers": {"layers.0.conv1": "int8"}, ...}
    logits = run(ort_session("net.onnx"), x)

A QConv2d / QLinear whose weights AND inputs lie on uniform integer grids of at most 8 bits runs
as (NCHW, the trained scales carried over, no calibration):

    x -> [input_bn] -> codes q_a (uint8) -> ConvInteger / MatMulInteger(q_a - z_a, m_w) (int32)
      -> Cast(float) -> Mul(s_a s_w per output channel) -> [Mul(K), XNOR] -> Add(bias)

so the int32 accumulator sum (q_a - z_a) m_w is exactly the dot product of the float simulation's
codes (no output requantisation: QLinearConv/QLinearMatMul would round the output to 8 bits).
The grids (n = 2^k - 1):

- activations, `dorefa_act` k <= 8: round(clip(x, 0, 1) n) / n -> q_a = QuantizeLinear(Clip(x n,
  0, n), scale 1, zp 0) = round-half-even(clip(x n, 0, n)), torch.round's rounding on the same
  float32 product (clip(x, 0, 1) n == clip(x n, 0, n) exactly); s_a = 1/n, z_a = 0.
- activations, `bnn_sign` / `xnor_input`: sign(x) with sign(0) = +1 -> q_a = Where(x >= 0, 2, 0),
  z_a = 1, s_a = 1 (ONNX Sign maps 0 to 0, so it is not used); XNOR's K = mean_c |x| conv box
  stays float, as in the layer.
- activations, "affine" (one step s, codes lo..hi around a zero point z): LSQ's `LSQQuantizer`
  round(clamp(x/s, -Q_N, Q_P)) (unsigned Q_N = 0, or signed: the first batch had a negative
  value) and PTQ's `FakeQuant` clamp(round(x/s) + z, 0, qmax) - z = round(clamp(x/s, -z, qmax -
  z)) (z an integer) -> q_a = QuantizeLinear(Clip(Div(x, s), lo, hi), scale 1, zp z), torch's
  float32 quotient and rounding (half to even) in the same order; z_a = z (LSQ: Q_N), s_a = s.
  Not LSQ+'s offset beta (torch pads the conv input with 0, not beta; the codes would need
  z = -beta/s an integer), nor per-channel activation steps.
- activations, `PACTQuantizer` k <= 8: round(clip(x, 0, alpha) (n / alpha)) (alpha / n) -> q_a =
  QuantizeLinear(Mul(Clip(x, 0, alpha), float32(n / alpha)), scale 1, zp 0), z_a = 0, s_a =
  float32(alpha / n).
- weights: codes m_w (MatMulInteger: int8, zero point 0; ConvInteger: uint8 m_w + 128, zero
  point 128, its fast path), checked by rebuilding W_q = layer.quantized_weight()
  from them with the quantizer's own float32 formula (equality, else the layer stays float):
  `dorefa_weight` k = 1: E|w| sign(w), m in {-1, 1}, s_w = E|w|; k in 2..7: 2 (q / n) - 1,
  m = 2q - n in [-n, n], s_w = 1/n; `uniform_weight` k <= 7: s_c (2r - n) / n, m = 2r - n odd,
  s_w = s_c / n per output channel; `bwn_weight`, `bnn_sign`, `ste_sign`, `twn_weight`:
  alpha_c {-1, (0,) 1}, s_w = alpha_c (1 for the signs); `LSQQuantizer` round(clamp(w/s, -Q_N,
  Q_P)) s, m in [-Q_N, Q_P], s_w = s (per tensor or per output channel); `FakeQuant` (zero
  point 0) (clamp(round(w/s), qmin, qmax)) s, m the codes, s_w = s. A reloaded layer (no
  quantizer) whose values are integer multiples of one scale per tensor or per row (pack.py's
  `row_scales`: LSQ's and PTQ's files) gets m = W_q / s_row.
- a QLinear whose u8 input codes times int8 weight codes could overflow AVX2's int16 pair sums
  (2 max q_a max |m| > 32767, e.g. 8-bit activations with 8-bit weights) stays float.

Everything else (DoReFa/uniform 8-bit weights, whose odd codes span [-255, 255]; TTQ, pow2,
LQ-Nets; LSQ+ with an offset; any layer with float inputs) exports as float Conv/Gemm with W_q
baked in, its act quantizer as float ops (a module quantizer: traced as it is); the returned
dict and the file's metadata say which and why.
The TorchScript exporter is used: an autograd.Function's `symbolic` emits the integer subgraph
node by node (the dynamo exporter would need an onnxscript custom-op translation for the same).
"""
from __future__ import annotations

import collections
import copy
import json
import os
import tempfile
import warnings
from pathlib import Path

import onnx
import onnxruntime as ort
import torch
import torch.nn.functional as F
from torch import nn

from ..compression.quantization import quantizers as Q
from ..compression.quantization.lsq import LSQQuantizer, PACTQuantizer
from ..compression.quantization.pack import row_scales
from ..compression.quantization.ptq import FakeQuant
from ..compression.quantization.qlayers import QConv2d, QLayer, QLinear

PRODUCER = "lightweight_bench"


def _func(q):
    """The function behind a quantizer (a functools.partial's func) and its keyword args."""
    return getattr(q, "func", q), dict(getattr(q, "keywords", {}) or {})


def _name(q) -> str:
    f, _ = _func(q)
    return getattr(f, "__name__", type(f).__name__)


def act_grid(act_quant) -> tuple[str, object] | str:
    """("dorefa", n) for k-bit `dorefa_act` (k <= 8), ("sign", 1) for `bnn_sign`, ("xnor", dim)
    for `xnor_input`, ("affine", (s, z, lo, hi)) for LSQ and FakeQuant, ("pact", (alpha, n / alpha,
    alpha / n)) for PACT (float32 values); otherwise the reason the input stays float."""
    if act_quant is None:
        return "float activations"
    if isinstance(act_quant, (LSQQuantizer, FakeQuant, PACTQuantizer)):
        return _module_act_grid(act_quant)
    f, kw = _func(act_quant)
    if f is Q.dorefa_act:
        k = kw.get("k", 32)
        return ("dorefa", 2 ** k - 1) if k <= 8 else f"{k}-bit activations do not fit uint8"
    if f is Q.bnn_sign:
        return ("sign", 1)
    if f is Q.xnor_input:
        return ("xnor", kw.get("dim", 1))
    return f"activation quantizer {_name(act_quant)} has no recognised integer grid"


def _module_act_grid(q: nn.Module) -> tuple[str, tuple] | str:
    """The grid of an LSQ / FakeQuant / PACT activation quantizer (see act_grid), or why none."""
    name = type(q).__name__
    if isinstance(q, PACTQuantizer):
        if q.bits > 8:
            return f"{q.bits}-bit PACT activations do not fit uint8"
        n, alpha = float(2 ** q.bits - 1), q.alpha.detach().float().cpu()
        if not alpha > 0:
            return f"PACT alpha={float(alpha)} is not positive"
        return ("pact", (float(alpha), float(n / alpha), float(alpha / n)))
    step = (q.step if isinstance(q, LSQQuantizer) else q.scale).detach().float().cpu()
    if step.numel() != 1:
        return f"{name} has {step.numel()} activation steps: per-channel activation scales"
    if isinstance(q, LSQQuantizer):
        if q.offset is not None:
            return "LSQ+ offset beta: torch pads the conv input with 0, not beta (no integer zero point)"
        if not q._ready:
            return "LSQ activation step not initialised"
        qn, qp = q.range()
        z, lo, hi = qn, -qn, qp
    else:
        zp = q.zero_point.detach().float().cpu()
        if zp.numel() != 1 or zp.item() != round(zp.item()) or not q.qmin <= zp.item() <= q.qmax:
            return f"{name} zero point {zp.flatten().tolist()[:4]} is not one integer code of its grid"
        lo, hi = q.qmin - int(zp.item()), q.qmax - int(zp.item())  # round(clamp(x/s, lo, hi)) = codes - z
        z = -lo  # the uint8 code of 0: codes - qmin
    if not step.item() > 0:
        return f"{name} activation step {step.item()} is not positive"
    if lo + z < 0 or hi + z > 255:
        return f"{name} codes {lo + z}..{hi + z} do not fit uint8"
    return ("affine", (step.item(), z, lo, hi))


def _grid(f, k: int, w: torch.Tensor):
    """(m, W_q rebuilt from m by `f`'s own float32 formula, s_w) for quantizer function `f` at
    k bits, or None when `f` has no integer grid."""
    dims = tuple(range(1, w.dim()))
    chan = w.abs().amax(dim=dims, keepdim=True)
    chan = torch.where(chan > 0, chan, torch.ones_like(chan))
    n = 2 ** k - 1
    if f is Q.dorefa_weight and k == 1:
        s = w.abs().max()
        m = torch.round(w / s)
        return m, s * m, s.expand(w.shape[0])
    if f is Q.dorefa_weight and k < 32:
        q = torch.round((w + 1) / 2 * n)
        return 2 * q - n, 2 * (q / n) - 1, torch.full((w.shape[0],), 1.0 / n)
    if f is Q.uniform_weight and k < 32:
        r = torch.round((w / chan + 1) / 2 * n)
        return 2 * r - n, chan * ((2 * r - n) / n), chan.flatten() / n
    if f in (Q.bwn_weight, Q.bnn_sign, Q.ste_sign, Q.twn_weight):
        s = chan if f is not Q.twn_weight else w.abs().max().expand_as(chan)
        return torch.round(w / s), s * torch.round(w / s), s.flatten()
    if f is row_scales:
        return _scaled_grid(k, w)
    return None


def _module_grid(q: nn.Module, w: torch.Tensor):
    """(m, W_q rebuilt by the module's own float32 formula, s_w (O,)) for an LSQ / FakeQuant
    weight quantizer (the codes of W_q itself: each is a fixed point of the formula), or the
    reason there is none."""
    if isinstance(q, LSQQuantizer):
        if q.offset is not None:
            return "LSQ+ weight offset has no integer zero point"
        s = q.step.detach().float().cpu()
        s = s.reshape(-1, *([1] * (w.dim() - 1))) if s.dim() else s
        qn, qp = q.range()
        m = torch.round((w / s).clamp(-qn, qp))
        return m, m * s, s.flatten().expand(w.shape[0])
    s, zp = q.scale.detach().float().cpu(), q.zero_point.detach().float().cpu()
    if zp.abs().max() > 0:
        return f"FakeQuant weight zero point {zp.flatten().tolist()[:4]} is not 0"
    m = torch.clamp(torch.round(w / s) + zp, q.qmin, q.qmax)
    return m, (m - zp) * s, s.flatten().expand(w.shape[0])


def _scaled_grid(k: int, w: torch.Tensor):
    """(m, s m, s (O,)) for values that are integer multiples of one scale per tensor or per
    output row (pack.py's `row_scales`: exact, else None); for rows, the scale max |w_c| /
    (2^(k-1) - 1) (a symmetric grid's largest code) is tried before the smallest |value|."""
    w2d = w.reshape(w.shape[0], -1)
    s = row_scales(w2d.reshape(1, -1))
    if s is not None:
        s = s.expand(w.shape[0])
    else:
        s = row_scales(w2d, w2d.abs().amax(dim=1) / max(1, 2 ** (k - 1) - 1))
    if s is None:
        return None
    s = s.reshape(-1, *([1] * (w.dim() - 1)))
    m = torch.round(w / s)
    return m, s * m, s.flatten()


# a layer reloaded from its packed export holds W_q itself (load_packed drops the weight
# quantizer): the grids tried on its values, at the layer's declared weight bits
VALUE_GRIDS = (Q.bwn_weight, Q.twn_weight, Q.dorefa_weight, Q.uniform_weight, row_scales)


def weight_grid(layer: nn.Module) -> tuple[torch.Tensor, torch.Tensor] | str:
    """(m int8 (O, ...), s_w float (O,)) with W_q == the quantizer's float32 formula of (m, s_w)
    exactly, or the reason there is none (see the module docstring for the grids). A layer
    without a weight quantizer but with `bits["w"]` <= 8 (reloaded from the packed file) is
    checked against each grid of VALUE_GRIDS in turn: exact equality is the test either way."""
    wq = layer.weight_quant
    w = layer.quantized_weight().detach().float()
    if wq is None:
        k = int(getattr(layer, "bits", {}).get("w", 32))
        if k > 8:
            return "float weights"
        for f in VALUE_GRIDS:
            got = _grid(f, k, w)
            if got is not None and torch.equal(got[1], w) and -128 <= got[0].min() and got[0].max() <= 127:
                return got[0].to(torch.int8), got[2].float()
        return f"{k}-bit weights on no integer grid that fits int8"
    if isinstance(wq, (LSQQuantizer, FakeQuant)):
        got, label = _module_grid(wq, w), type(wq).__name__
        if isinstance(got, str):
            return got
    else:
        f, kw = _func(wq)
        got, label = _grid(f, kw.get("k", 32), w), _name(wq)
        if got is None:
            return f"weight quantizer {label} has no integer grid"
    m, rebuilt, s_w = got
    if not torch.equal(rebuilt, w):
        return f"weights of {label} are not on the claimed grid"
    if m.min() < -128 or m.max() > 127:
        return f"weight codes span [{int(m.min())}, {int(m.max())}]: do not fit int8"
    return m.to(torch.int8), s_w.float()


class _IntegerOp(torch.autograd.Function):
    """Forward: the float simulation (codes conv/matmul m, times s_a s_w), for tracing.
    ONNX: codes -> integer conv/matmul -> Cast -> Mul(s_a s_w) (K and the bias follow outside).

    "linear": MatMulInteger(q (N, I), m (I, O) int8), ORT's u8s8 GEMM. "conv": ConvInteger with
    uint8 weights m + 128, zero point 128: ORT 1.32's ConvInteger runs ~6x slower with int8
    weights (u8u8 is its fast path); it pads with the zero point z_a (code 0, as torch does)."""

    @staticmethod
    def forward(ctx, x, w, m, scale, spec):
        layout, act, n, kernel, stride, padding, dilation, groups = spec
        codes = _signed_codes(x, act, n)
        if layout == "linear":
            return codes @ m.t() * scale
        return F.conv2d(codes, m, None, stride, padding, dilation, groups) * scale.reshape(-1, 1, 1)

    @staticmethod
    def symbolic(g, x, w, m, scale, spec):
        layout, act, n, kernel, stride, padding, dilation, groups = spec

        def const(v, dtype):
            return g.op("Constant", value_t=torch.tensor(v, dtype=dtype))

        def f32(v):
            return const(float(v), torch.float32)

        if act == "dorefa":
            c = g.op("Mul", x, f32(n))
            if n < 255:  # QuantizeLinear's uint8 saturation already clips to [0, 255]
                c = g.op("Clip", c, f32(0), f32(n))
            z = 0
            q = g.op("QuantizeLinear", c, f32(1), const(0, torch.uint8))
        elif act == "affine":  # round(clamp(x / s, lo, hi)) + z: torch's quotient, then its rounding
            s_a, z, lo, hi = n
            c = g.op("Clip", g.op("Div", x, f32(s_a)), f32(lo), f32(hi))
            q = g.op("QuantizeLinear", c, f32(1), const(z, torch.uint8))
        elif act == "pact":  # round(clip(x, 0, alpha) (n / alpha))
            alpha, inv, _ = n
            z = 0
            c = g.op("Mul", g.op("Clip", x, f32(0), f32(alpha)), f32(inv))
            q = g.op("QuantizeLinear", c, f32(1), const(0, torch.uint8))
        else:
            z = 1
            q = g.op("Where", g.op("GreaterOrEqual", x, const(0.0, torch.float32)),
                     const(2, torch.uint8), const(0, torch.uint8))
        zp = const(z, torch.uint8)
        if layout == "conv":
            y = g.op("ConvInteger", q, w, zp, const(128, torch.uint8), strides_i=list(stride),
                     pads_i=list(padding) * 2, dilations_i=list(dilation), group_i=groups,
                     kernel_shape_i=list(kernel))
        else:
            y = g.op("MatMulInteger", q, w, zp, const(0, torch.int8))
        return g.op("Mul", g.op("Cast", y, to_i=onnx.TensorProto.FLOAT), scale)


def _signed_codes(x: torch.Tensor, act: str, n) -> torch.Tensor:
    """q_a - z_a in float (the traced forward of _IntegerOp): the same values as its ONNX graph."""
    if act == "dorefa":  # (x * 1 is left out: the TorchScript peephole pass drops it and loses this op's block)
        return torch.clamp(x if n == 1 else x * n, 0, n).round()
    if act == "affine":
        return torch.clamp(x / n[0], n[2], n[3]).round()
    if act == "pact":
        return (x.clamp(0, n[0]) * n[1]).round()
    return torch.where(x >= 0, 1.0, -1.0)


def code_range(grid: tuple[str, object]) -> int:
    """The largest uint8 code q_a of an activation grid (act_grid's tuple)."""
    act, n = grid
    if act in ("sign", "xnor"):
        return 2
    return n if act == "dorefa" else n[1] + n[3] if act == "affine" else round(n[0] * n[1])  # pact: n


def times_s_a(s_w: torch.Tensor, grid: tuple[str, object]) -> torch.Tensor:
    """s_a s_w for an activation grid: s_w / n for DoReFa (s_a = 1/n), s_w s for LSQ / FakeQuant,
    s_w float32(alpha / n) for PACT, s_w for the signs (s_a = 1)."""
    act, n = grid
    if act == "dorefa":
        return s_w / n
    return s_w * n[0] if act == "affine" else s_w * n[2] if act == "pact" else s_w


class IntegerLayer(nn.Module):
    """The deploy form of an integer QConv2d/QLinear: input_bn, codes, integer conv/matmul,
    s_a s_w, [K], bias (the layer's forward, with its codes and scales made explicit)."""

    def __init__(self, layer: nn.Module, grid: tuple[str, object], m: torch.Tensor, s_w: torch.Tensor):
        super().__init__()
        act, n = grid
        self.input_bn, self.bias = layer.input_bn, layer.bias
        self.conv = isinstance(layer, QConv2d)
        self.xnor_dim = n if act == "xnor" else None
        codes = ("sign", 1) if act == "xnor" else grid
        scale = times_s_a(s_w, grid)
        if self.conv:
            self.spec = ("conv", *codes, layer.kernel_size, layer.stride, layer.padding, layer.dilation,
                         layer.groups)
            w, scale = (m.to(torch.int16) + 128).to(torch.uint8), scale.reshape(-1, 1, 1)
        else:
            self.spec = ("linear", *codes, (), (), (), (), 1)
            w = m.t().contiguous()  # MatMulInteger's B is (in, out)
        self.geometry = self.spec[3:7]
        self.register_buffer("w_int", w)
        self.register_buffer("m", m.float(), persistent=False)  # for the traced forward only
        self.register_buffer("scale", scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.input_bn is not None:
            x = self.input_bn(x)
        y = _IntegerOp.apply(x, self.w_int, self.m, self.scale, self.spec)
        if self.xnor_dim is not None:
            a = x.abs().mean(dim=self.xnor_dim, keepdim=True)
            y = y * (Q.xnor_scale(a, *self.geometry) if self.conv else a)
        return y if self.bias is None else y + self.bias.reshape(-1, *([1, 1] if self.conv else []))


def _dorefa_codes(x: torch.Tensor, n: int) -> torch.Tensor:
    return torch.round(x.clamp(0.0, 1.0) * n) / n


def _sign(x: torch.Tensor) -> torch.Tensor:
    return torch.where(x >= 0, 1.0, -1.0)


def _xnor(x: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    return _sign(x), x.abs().mean(dim=dim, keepdim=True)


def _float_layer(layer: nn.Module, grid) -> nn.Module:
    """The layer with W_q baked into its weight and a recognised act quantizer as plain float ops
    (an unrecognised one, e.g. LQ-Nets', is traced as it is)."""
    with torch.no_grad():
        layer.weight.copy_(layer.quantized_weight())
    layer.weight_quant, layer.grad_quant = None, None
    if isinstance(grid, tuple) and grid[0] in ("dorefa", "sign", "xnor"):  # else: the module, traced
        act, n = grid
        fns = {"dorefa": lambda x: _dorefa_codes(x, n), "sign": _sign, "xnor": lambda x: _xnor(x, n)}
        layer.act_quant = fns[act]
    return layer


def deploy_twin(net: nn.Module, integer: bool = True) -> tuple[nn.Module, dict, dict]:
    """An eval-mode float32 CPU copy of `net` whose quantized layers are IntegerLayers where both
    grids allow it, else float layers with W_q baked in; and {name: mode}, {name: reason}."""
    twin = copy.deepcopy(net).cpu().float().eval()
    layers, reasons = {}, {}
    for name, layer in list(twin.named_modules()):
        if not isinstance(layer, QLayer):
            continue
        grid = act_grid(layer.act_quant)
        weights = weight_grid(layer) if integer else "integer=False"
        if isinstance(layer, QConv2d) and (isinstance(layer.padding, str) or layer.padding_mode != "zeros"):
            weights = f"padding {layer.padding!r} ({layer.padding_mode}) is not zero padding"
        reason = next((r for r in (weights, grid) if isinstance(r, str)), None)
        if reason is None and isinstance(layer, QLinear) \
                and 2 * code_range(grid) * int(weights[0].abs().max()) > 32767:
            reason = "u8s8 pair sums may saturate int16 in AVX2 GEMM kernels"
        new = IntegerLayer(layer, grid, *weights) if reason is None else _float_layer(layer, grid)
        layers[name] = "fp32" if reason else "int8"
        if reason:
            reasons[name] = reason
        parent, _, child = name.rpartition(".")
        setattr(twin.get_submodule(parent) if parent else twin, child, new)
    return twin, layers, reasons


def export_onnx(net: nn.Module, input_shape, path, integer: bool = True, opset: int = 17) -> dict:
    """Export `net` (eval mode, float32, CPU; a copy) for inputs of per-sample shape
    `input_shape` (e.g. (3, 32, 32)), batch axis dynamic, input "input", output "logits".
    Returns {"file", "bytes", "layers": {name: "int8" | "fp32"}, "reasons": {name: why fp32},
    "opset"}; the file's metadata_props hold the producer and the layers and reasons as JSON."""
    twin, layers, reasons = deploy_twin(net, integer)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")  # atomic: a kill leaves no half file
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
            torch.onnx.export(twin, (torch.zeros(2, *input_shape),), str(tmp), dynamo=False, opset_version=opset,
                              input_names=["input"], output_names=["logits"],
                              dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
        model = onnx.load(str(tmp))
        model.producer_name = PRODUCER
        onnx.helper.set_model_props(model, {"producer": PRODUCER, "layers": json.dumps(layers),
                                            "reasons": json.dumps(reasons)})
        onnx.save(model, str(tmp))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return {"file": str(path), "bytes": path.stat().st_size, "layers": layers, "reasons": reasons,
            "opset": opset}


def ort_session(path_or_bytes, threads: int = 1, optimized_path=None) -> ort.InferenceSession:
    """An InferenceSession (CUDA first when available, then CPU), `threads` intra-op threads, one
    inter-op thread, all graph optimisations; `optimized_path` saves the optimised graph."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if optimized_path is not None:
        opts.optimized_model_filepath = str(optimized_path)
        opts.log_severity_level = 3  # not the "hardware specific optimised model" warning
    providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in ort.get_available_providers()]
    src = str(path_or_bytes) if isinstance(path_or_bytes, (str, os.PathLike)) else path_or_bytes
    return ort.InferenceSession(src, opts, providers=providers)


def run(session: ort.InferenceSession, x: torch.Tensor) -> torch.Tensor:
    """The logits of `session` for the batch `x` (float32, CPU)."""
    out = session.run(["logits"], {"input": x.detach().cpu().float().numpy()})[0]
    return torch.from_numpy(out)


def optimized_ops(path, threads: int = 1) -> collections.Counter:
    """Counter of the op types in the graph ONNX Runtime runs after its optimisations."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "optimized.onnx"
        ort_session(path, threads, optimized_path=out)
        return collections.Counter(node.op_type for node in onnx.load(str(out)).graph.node)
