"""Packed-bit inference for layers whose weights and inputs are both 1-bit, and the conversion of
a trained harness net into one that uses it.

Which layers (`to_binary`): a QConv2d/QLinear whose quantized weight is +-alpha_o in every output
row and whose input quantizer is
- `bnn_sign` (BNN, Courbariaux, Hubara et al. 2016): x_b = sign(x) in {-1, +1}, encoding "pm1";
- `xnor_input` (XNOR-Net, Rastegari et al. 2016): sign(x) and the output scale K (`xnor_scale`:
  A = mean_c |x| averaged over each receptive field, zero padded), encoding "pm1" with K;
- `dorefa_act` at k = 1 (DoReFa W1A1, Zhou et al. 2016; also `uniform` a1): x_b = round(clip(x,
  0, 1)) in {0, 1}, encoding "01".
The layer then computes the float simulation's y = (x_b conv sign(W)) * alpha_o * K + bias with
exact integer dot products (binary_kernels.c: pm1 dot = K_valid - 2 popcount(x XOR w), 01 dot =
2 popcount(x AND w) - popcount(x)); only the scaling rounds, so outputs agree to float32 rounding
(the simulation itself sums alpha-scaled products with rounding). Everything else stays in torch.

Layouts (`choose_layout`, override $LWB_BINARY_LAYOUT=channel|joint or `layout=`): "channel"
packs each pixel's channels (ceil(C/64) words per tap); "joint" packs the bits of a whole
receptive field (kh kw C bits -> ceil(kh kw C / 64) words, an im2col of bits), chosen when C % 64
!= 0 and C < 128 so that C = 16 or 32 does not waste 3/4 or 1/2 of each word; both exact, both
zero padded. ISA (`isa()`, override $LWB_BINARY_ISA=avx2 or `isa=`): "avx512" (AVX-512 VPOPCNTDQ,
compiled through target attributes and selected at run time) where the CPU has it, else "avx2".
Measured on the 2-core AMD EPYC (AVX-512 VPOPCNTDQ), 1 thread, median of interleaved ratios vs
torch FP32, load average 1.7-2.3, two runs: conv 3x3 256->256 14x14 batch 64 2.6-3.1x avx2 /
3.8-5.0x avx512; linear 4096x4096 batch 64 6.1-7.2x / 15-16x; XNOR ResNet-20 batch 256
0.85-0.98x / 1.13-1.19x, batch 1 1.1-1.2x / 1.3-1.4x (see binary_kernels.c).

The kernels are plain C called through ctypes, not a torch C++ extension: on this machine (2-core
AMD EPYC, another job on the second core) gcc builds binary_kernels.c in 1.1-1.3 s, while
`torch.utils.cpp_extension.load` of a one-function extension (an identity op) against
torch/extension.h took 32 s, and needs ninja.
The build is cached by the source's sha256 (`build`).
"""
from __future__ import annotations

import copy
import ctypes
import functools
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from torch import nn

from ..compression.quantization import quantizers as Q
from ..compression.quantization.qlayers import QConv2d, QLayer, QLinear

SOURCE = Path(__file__).with_name("binary_kernels.c")
FLAGS = ["-O3", "-march=haswell", "-mavx2", "-mpopcnt", "-fopenmp", "-shared", "-fPIC"]
ACTS = ("pm1", "01")
ISAS = ("avx512", "avx2")
LAYOUTS = ("channel", "joint")


class BinaryKernelUnavailable(RuntimeError):
    """The C kernels could not be built (no compiler, or the compile failed)."""


def cache_dir() -> Path:
    """$LWB_KERNEL_CACHE, else $XDG_CACHE_HOME/lightweight_bench, else ~/.cache/lightweight_bench."""
    if os.environ.get("LWB_KERNEL_CACHE"):
        return Path(os.environ["LWB_KERNEL_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "lightweight_bench"


def build(force: bool = False) -> Path:
    """Compile binary_kernels.c (compiler $CC, default gcc) into the cache as
    binary_kernels-<sha256[:16]>.so and return its path; an existing one is reused unless `force`.
    Atomic: compiled to a temporary file in the same directory, then renamed."""
    src = SOURCE.read_bytes()
    out_dir = cache_dir()
    out = out_dir / f"binary_kernels-{hashlib.sha256(src).hexdigest()[:16]}.so"
    if out.exists() and not force:
        return out
    cc = os.environ.get("CC", "gcc")
    cmd = [cc, *FLAGS, str(SOURCE), "-o"]
    if shutil.which(cc) is None:
        raise BinaryKernelUnavailable(f"{' '.join(cmd)} {out}: compiler {cc!r} not found")
    out_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=out_dir)
    os.close(fd)
    try:
        done = subprocess.run([*cmd, tmp], capture_output=True, text=True)
        if done.returncode:
            lines = done.stderr.splitlines()
            first = next((ln for ln in lines if "error" in ln), lines[0] if lines else
                         f"exit status {done.returncode}")
            raise BinaryKernelUnavailable(f"{' '.join(cmd)} {out}: {first}")
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return out


@functools.cache
def load() -> ctypes.CDLL:
    """The kernel library (built on first use)."""
    lib = ctypes.CDLL(str(build()))
    i64, ptr, c_int = ctypes.c_int64, ctypes.c_void_p, ctypes.c_int
    lib.bk_pack.argtypes = [ptr, i64, i64, i64, i64, i64, i64, c_int, ptr, ptr, c_int]
    lib.bk_conv.argtypes = [ptr, i64, i64, i64, i64, ptr, i64, i64, i64, i64, i64, i64, i64, c_int,
                            ptr, ptr, ptr, ptr, i64, i64, i64, c_int, c_int]
    lib.bk_conv_joint.argtypes = [ptr, i64, i64, i64, i64, ptr, ptr, i64, i64, i64, i64, i64, i64,
                                  i64, c_int, ptr, ptr, ptr, ptr, i64, i64, i64, c_int, c_int]
    lib.bk_joint_weights.argtypes = [ptr, i64, i64, i64, ptr]
    lib.bk_avx512_supported.argtypes = []
    lib.bk_avx512_supported.restype = c_int
    lib.bk_pack.restype = lib.bk_conv.restype = lib.bk_conv_joint.restype = None
    lib.bk_joint_weights.restype = None
    return lib


def avx512_supported() -> bool:
    """Whether this CPU has AVX-512 F, BW and VPOPCNTDQ (asked of the kernel library at run time)."""
    return bool(load().bk_avx512_supported())


def isa(requested: str | None = None) -> str:
    """The kernel path that runs: "avx512" (AVX-512 VPOPCNTDQ) where the CPU has it, else "avx2".
    `requested` (or else $LWB_BINARY_ISA) may force "avx2"; asking for "avx512" on a CPU without
    it is an error."""
    want = requested or os.environ.get("LWB_BINARY_ISA") or None
    if want is not None and want not in ISAS:
        raise ValueError(f"isa={want!r} (LWB_BINARY_ISA); valid: {', '.join(ISAS)}")
    if want == "avx2":
        return "avx2"
    if avx512_supported():
        return "avx512"
    if want == "avx512":
        raise BinaryKernelUnavailable("isa avx512 asked for, but this CPU lacks AVX-512 VPOPCNTDQ")
    return "avx2"


def _isa_code(requested: str | None) -> int:
    return int(isa(requested) == "avx512")


def choose_layout(in_channels: int, requested: str | None = None) -> str:
    """The conv's packing: `requested`, else $LWB_BINARY_LAYOUT, else "joint" (bits of all taps
    and channels packed together) when in_channels is not a multiple of 64 and below 128, where
    the channel layout's per-tap words would be mostly padding; else "channel"."""
    want = requested or os.environ.get("LWB_BINARY_LAYOUT") or None
    if want is not None:
        if want not in LAYOUTS:
            raise ValueError(f"layout={want!r} (LWB_BINARY_LAYOUT); valid: {', '.join(LAYOUTS)}")
        return want
    return "joint" if in_channels % 64 and in_channels < 128 else "channel"


def joint_weight(packed_w: torch.Tensor, in_channels: int, taps: int) -> torch.Tensor:
    """Channel-layout packed weights (O, taps * ceil(C/64)) -> the joint layout (O, ceil(taps C /
    64)): tap t, channel c at bit t C + c."""
    o = packed_w.shape[0]
    out = torch.empty(o, _words(taps * in_channels), dtype=torch.int64)
    load().bk_joint_weights(packed_w.contiguous().data_ptr(), o, in_channels, taps, out.data_ptr())
    return out


def _ptr(t: torch.Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def _words(c: int) -> int:
    return (c + 63) // 64


def _check(x: torch.Tensor, what: str) -> None:
    if x.dtype != torch.float32 or x.device.type != "cpu" or not x.is_contiguous():
        raise ValueError(f"{what}: needs a contiguous float32 CPU tensor, got {x.dtype} on "
                         f"{x.device} (contiguous: {x.is_contiguous()})")


def _act01(act: str) -> int:
    if act not in ACTS:
        raise ValueError(f"act={act!r}; valid: {', '.join(ACTS)}")
    return int(act == "01")


def _pack(x: torch.Tensor, n: int, c: int, p: int, strides: tuple[int, int, int], act01: int,
          xnor: bool, threads: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """x (n, c, p) -> (packed (n, p, ceil(c/64)) words as int64, A = mean_c |x| (n, p) or None)."""
    packed = torch.empty(n, p, _words(c), dtype=torch.int64)
    a = torch.empty(n, p, dtype=torch.float32) if xnor else None
    load().bk_pack(x.data_ptr(), n, c, p, *strides, act01, packed.data_ptr(), _ptr(a), threads)
    return packed, a


def pack_weight(w_sign: torch.Tensor) -> torch.Tensor:
    """A (O, K) or (O, C, kh, kw) sign tensor -> (O, words) int64: bit = 1 where w >= 0 (+1),
    laid out (kh, kw, ceil(C/64)) per output channel for a conv, zero bits padding each C."""
    w = w_sign.detach().float().contiguous()
    o, c = w.shape[:2]
    p = w[0, 0].numel()
    return _pack(w, o, c, p, (c * p, p, 1), 0, False, 1)[0].reshape(o, -1)


def _out_params(alpha: torch.Tensor, bias: torch.Tensor | None, o: int) -> None:
    _check(alpha, "alpha")
    if alpha.numel() != o or (bias is not None and bias.numel() != o):
        raise ValueError(f"alpha ({alpha.numel()}) and bias must have one value per output ({o})")
    if bias is not None:
        _check(bias, "bias")


def binary_linear(x: torch.Tensor, packed_w: torch.Tensor, k: int, alpha: torch.Tensor,
                  bias: torch.Tensor | None, *, act: str, xnor: bool, threads: int,
                  isa: str | None = None) -> torch.Tensor:
    """y[n, o] = dot(x_b[n], sign(W)[o]) * alpha[o] * (mean_i |x[n, i]| if xnor else 1) + bias[o]
    for x (N, k) and packed_w = pack_weight(sign(W)) (O, ceil(k/64))."""
    _check(x, "binary_linear input")
    if x.dim() != 2 or x.shape[1] != k or packed_w.shape[1] != _words(k):
        raise ValueError(f"binary_linear: input {tuple(x.shape)} and packed weight "
                         f"{tuple(packed_w.shape)} do not fit k={k}")
    n, o = x.shape[0], packed_w.shape[0]
    _out_params(alpha, bias, o)
    packed, a = _pack(x, n, k, 1, (k, 1, 0), _act01(act), xnor, threads)
    y = torch.empty(n, o, dtype=torch.float32)
    # a 1 x n image under a 1 x 1 kernel: output pixel p is sample p, y[p, o] at p * o_count + o
    load().bk_conv(packed.data_ptr(), 1, k, 1, n, packed_w.contiguous().data_ptr(), o, 1, 1, 1, 1,
                   0, 0, _act01(act), _ptr(a), alpha.data_ptr(), _ptr(bias), y.data_ptr(), 0, 1, o,
                   threads, _isa_code(isa))
    return y


def _pair(v) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, int) else tuple(int(i) for i in v)


def binary_conv2d(x: torch.Tensor, packed_w: torch.Tensor, in_channels: int, kernel_size,
                  stride, padding, alpha: torch.Tensor, bias: torch.Tensor | None, *, act: str,
                  xnor: bool, threads: int, isa: str | None = None, layout: str | None = None,
                  joint_w: torch.Tensor | None = None) -> torch.Tensor:
    """The zero-padded conv (dilation 1, groups 1) y[n, o, p] = sum over in-bounds taps of
    dot(x_b, sign(W)[o]) * alpha[o] * (K[n, p] if xnor else 1) + bias[o], K = xnor_scale(mean_c |x|).
    `isa` / `layout`: see isa() and choose_layout(); joint_w: joint_weight(packed_w) if at hand."""
    _check(x, "binary_conv2d input")
    (kh, kw), (sh, sw), (ph, pw) = _pair(kernel_size), _pair(stride), _pair(padding)
    if x.dim() != 4 or x.shape[1] != in_channels or packed_w.shape[1] != kh * kw * _words(in_channels):
        raise ValueError(f"binary_conv2d: input {tuple(x.shape)} and packed weight "
                         f"{tuple(packed_w.shape)} do not fit {in_channels} channels, kernel {kh}x{kw}")
    n, c, h, w = x.shape
    oh, ow, o = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1, packed_w.shape[0]
    if oh < 1 or ow < 1:
        raise ValueError(f"binary_conv2d: input {h}x{w} is smaller than the kernel {kh}x{kw}")
    _out_params(alpha, bias, o)
    packed, a = _pack(x, n, c, h * w, (c * h * w, h * w, 1), _act01(act), xnor, threads)
    y = torch.empty(n, o, oh, ow, dtype=torch.float32)
    packed_w = packed_w.contiguous()
    if choose_layout(c, layout) == "joint":
        if joint_w is None:
            joint_w = joint_weight(packed_w, c, kh * kw)
        load().bk_conv_joint(packed.data_ptr(), n, c, h, w, packed_w.data_ptr(),
                             joint_w.contiguous().data_ptr(), o, kh, kw, sh, sw, ph, pw, _act01(act),
                             _ptr(a), alpha.data_ptr(), _ptr(bias), y.data_ptr(), o * oh * ow,
                             oh * ow, 1, threads, _isa_code(isa))
        return y
    load().bk_conv(packed.data_ptr(), n, c, h, w, packed_w.data_ptr(), o, kh, kw, sh, sw, ph, pw,
                   _act01(act), _ptr(a), alpha.data_ptr(), _ptr(bias), y.data_ptr(), o * oh * ow,
                   oh * ow, 1, threads, _isa_code(isa))
    return y


class _Binary(nn.Module):
    """Shared state of the binary layers: packed sign(W), alpha, bias, the input encoding, the
    XNOR flag, the layer's input BatchNorm (run in torch first) and the OpenMP thread count."""

    def __init__(self, layer: nn.Module, w_q: torch.Tensor, alpha: torch.Tensor, act: str, xnor: bool):
        super().__init__()
        _act01(act)
        self.act, self.xnor, self.threads = act, xnor, torch.get_num_threads()
        self.register_buffer("weight_bits", pack_weight(w_q))
        self.register_buffer("alpha", alpha.detach().float().contiguous())
        bias = None if layer.bias is None else layer.bias.detach().float().contiguous()
        self.register_buffer("bias", bias)
        self.input_bn = copy.deepcopy(layer.input_bn)

    def _input(self, x: torch.Tensor) -> torch.Tensor:
        if self.input_bn is not None:
            x = self.input_bn(x)
        return x.contiguous()

    def extra_repr(self) -> str:
        return f"act={self.act}, xnor={self.xnor}, threads={self.threads}"


class BinaryLinear(_Binary):
    def __init__(self, layer: QLinear, w_q: torch.Tensor, alpha: torch.Tensor, act: str, xnor: bool):
        super().__init__(layer, w_q, alpha, act, xnor)
        self.in_features, self.out_features = layer.in_features, layer.out_features

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self._input(x)
        lead = x.shape[:-1]
        y = binary_linear(x.reshape(-1, self.in_features), self.weight_bits, self.in_features,
                          self.alpha, self.bias, act=self.act, xnor=self.xnor, threads=self.threads)
        return y.reshape(*lead, self.out_features)

    def extra_repr(self) -> str:
        return f"{self.in_features}, {self.out_features}, {super().extra_repr()}"


class BinaryConv2d(_Binary):
    def __init__(self, layer: QConv2d, w_q: torch.Tensor, alpha: torch.Tensor, act: str, xnor: bool):
        super().__init__(layer, w_q, alpha, act, xnor)
        self.in_channels, self.out_channels = layer.in_channels, layer.out_channels
        self.kernel_size, self.stride, self.padding = layer.kernel_size, layer.stride, layer.padding
        taps = self.kernel_size[0] * self.kernel_size[1]
        self.register_buffer("joint_bits", joint_weight(self.weight_bits, self.in_channels, taps),
                             persistent=False)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return binary_conv2d(self._input(x), self.weight_bits, self.in_channels, self.kernel_size,
                             self.stride, self.padding, self.alpha, self.bias, act=self.act,
                             xnor=self.xnor, threads=self.threads, joint_w=self.joint_bits)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}, {super().extra_repr()}")


def _input_encoding(layer: nn.Module) -> tuple[str, bool] | str:
    """(act, xnor) for a 1-bit input quantizer, else the reason the layer stays in torch."""
    q = layer.act_quant
    fn = q.func if isinstance(q, functools.partial) else q
    if q is Q.bnn_sign:
        return "pm1", False
    if fn is Q.xnor_input:
        dim = q.keywords.get("dim", 1)
        want = 1 if isinstance(layer, QConv2d) else -1
        if q.args or dim != want:
            return f"xnor_input over dim {dim}, not the channel dim {want}"
        return "pm1", True
    if fn is Q.dorefa_act and q.keywords.get("k") == 1 and not q.args:
        return "01", False
    return f"inputs are not 1-bit (bits a{layer.bits['a']}, act_quant {layer._quant_repr() or None})"


def _geometry(layer: nn.Module) -> str | None:
    if isinstance(layer, QLinear):
        return None
    if isinstance(layer.padding, str) or layer.padding_mode != "zeros":
        return f"padding {layer.padding!r} mode {layer.padding_mode}: only numeric zero padding"
    if layer.groups != 1 or tuple(layer.dilation) != (1, 1):
        return f"groups {layer.groups}, dilation {tuple(layer.dilation)}: only groups 1, dilation 1"
    return None


@torch.no_grad()
def _convert(layer: nn.Module) -> nn.Module | str:
    """The binary module for a QConv2d/QLinear, or the reason it stays in torch."""
    enc = _input_encoding(layer)
    if isinstance(enc, str):
        return enc
    why = _geometry(layer)
    if why:
        return why
    # a layer reloaded from its packed export holds W_q itself (no weight quantizer): its
    # declared bits say 1, and the values are checked below either way
    if layer.weight_quant is None and layer.bits.get("w") != 1:
        return f"weights are float (bits w{layer.bits.get('w', 32)})"
    w_q = layer.quantized_weight().detach().float()
    rows = w_q.reshape(w_q.shape[0], -1).abs()
    alpha = rows.amax(dim=1)
    if not (alpha > 0).all() or not (rows == alpha[:, None]).all():
        return f"weights are not 1-bit (bits w{layer.bits['w']}): a row is not +-alpha"
    cls = BinaryConv2d if isinstance(layer, QConv2d) else BinaryLinear
    return cls(layer, w_q, alpha, *enc)


def to_binary(net: nn.Module) -> tuple[nn.Module, dict]:
    """A deep copy of `net` (in eval mode) in which every QConv2d/QLinear with 1-bit weights and
    1-bit inputs is a BinaryConv2d/BinaryLinear; every other conv/linear layer stays in torch.
    Returns (net, {"binary": [names], "torch": [names], "reasons": {name: why not binary}})."""
    net = copy.deepcopy(net).eval()
    report = {"binary": [], "torch": [], "reasons": {}}
    for name, layer in list(net.named_modules()):
        if isinstance(layer, QLayer):
            new = _convert(layer)
        elif isinstance(layer, (nn.Conv2d, nn.Linear)):
            new = "float layer (not quantized)"
        else:
            continue
        if isinstance(new, str):
            report["torch"].append(name)
            report["reasons"][name] = new
            continue
        report["binary"].append(name)
        if name == "":
            return new, report
        parent, _, attr = name.rpartition(".")
        setattr(net.get_submodule(parent), attr, new)
    return net, report


if __name__ == "__main__":
    if sys.argv[1:] != ["--build"]:
        sys.exit("usage: python -m lightning_modules.deploy.binary --build")
    print(build(force=False))
