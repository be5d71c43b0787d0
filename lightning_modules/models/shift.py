"""Shift instead of spatial convolution: ShiftNet (Wu et al. 2017) and Active Shift (Jeon & Kim 2018).

- `Shift` (Wu et al., "Shift: A Zero FLOP, Zero Parameter Alternative to Spatial Convolutions",
  arXiv 2017, CVPR 2018): the channels are split into K^2 equal groups; group (i, j) is moved by
  (i - K//2, j - K//2) pixels, zeros shifted in. out[c, y, x] = in[c, y + dy_c, x + dx_c]. It is
  a depthwise conv whose kernels are one-hot (`one_hot_kernel`), but computed here by strided
  copies into a zero tensor (its gradient: the opposite shift): no multiply, no parameter
  (FLOP counters see none).
- `ActiveShift` (Jeon & Kim, "Constructing Fast Network through Deconstruction of Convolution",
  NeurIPS 2018, ASL): each channel c has a learnable, real-valued shift (a_c, b_c);
  out[c, y, x] = in[c, y + a_c, x + b_c] by bilinear interpolation (zeros outside), so the
  shifts get gradients. Bilinear interpolation costs 4 multiply-adds per output value
  (grid_sample, which torch.utils.flop_counter does not count); 2 C parameters.
- `ShiftResNet` (Wu et al., CIFAR experiments): the CIFAR ResNet of He et al. with every basic
  block's two 3x3 convs replaced by a Conv-Shift-Conv module: 1x1 conv (expansion eps) -> BN ->
  ReLU -> shift -> 1x1 conv (stride) -> BN, option-A shortcuts as in `resnet_cifar`.
"""
from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F
from torch import nn

from .resnet_cifar import ShortcutA


def shift_offsets(kernel_size: int = 3, dilation: int = 1) -> list[tuple[int, int]]:
    """The K^2 (dy, dx) offsets of Wu et al.'s shift, row-major over the K x K grid."""
    r = kernel_size // 2
    return [((i - r) * dilation, (j - r) * dilation)
            for i, j in itertools.product(range(kernel_size), repeat=2)]


def group_sizes(channels: int, groups: int) -> list[int]:
    """Channels per shift group: as equal as possible, the first groups one larger."""
    return [channels // groups + (g < channels % groups) for g in range(groups)]


def _shift(x: torch.Tensor, offsets, sizes, sign: int = 1) -> torch.Tensor:
    """out[:, group, y, x] = x[:, group, y + sign dy, x + sign dx], zeros shifted in: one
    zero-filled tensor and one strided copy per group."""
    out = torch.zeros_like(x)
    h, w = x.shape[-2:]
    c0 = 0
    for (dy, dx), n in zip(offsets, sizes):
        dy, dx = sign * dy, sign * dx
        if abs(dy) < h and abs(dx) < w:
            out[:, c0:c0 + n, max(0, -dy):h - max(0, dy), max(0, -dx):w - max(0, dx)] = \
                x[:, c0:c0 + n, max(0, dy):h - max(0, -dy), max(0, dx):w - max(0, -dx)]
        c0 += n
    return out


class _ShiftFn(torch.autograd.Function):
    """The shift and its adjoint: the gradient of a zero-filled shift by (dy, dx) is the
    zero-filled shift of the output gradient by (-dy, -dx). (Autograd through nine slices would
    allocate and sum nine input-sized zero tensors in the backward pass.)"""

    @staticmethod
    def forward(ctx, x, offsets, sizes):
        ctx.offsets, ctx.sizes = offsets, sizes
        return _shift(x, offsets, sizes)

    @staticmethod
    def backward(ctx, g):
        return _shift(g, ctx.offsets, ctx.sizes, -1), None, None


class Shift(nn.Module):
    """Wu et al.'s zero-FLOP, zero-parameter shift (see the module docstring)."""

    def __init__(self, channels: int, kernel_size: int = 3, dilation: int = 1):
        super().__init__()
        self.channels, self.kernel_size, self.dilation = channels, kernel_size, dilation
        self.offsets = shift_offsets(kernel_size, dilation)
        self.sizes = group_sizes(channels, len(self.offsets))
        self.pad = (kernel_size // 2) * dilation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] != self.channels:
            raise ValueError(f"Shift({self.channels}) got {x.shape[1]} channels")
        return _ShiftFn.apply(x, self.offsets, self.sizes)

    def one_hot_kernel(self) -> torch.Tensor:
        """The same shift as a depthwise conv kernel (C, 1, K, K), one 1 per channel (the
        documents' Fig. 2c): F.conv2d(x, k, padding=pad, dilation=dilation, groups=C) == shift(x)."""
        k, r = self.kernel_size, self.kernel_size // 2
        kernel = torch.zeros(self.channels, 1, k, k)
        c0 = 0
        for (dy, dx), n in zip(self.offsets, self.sizes):
            kernel[c0:c0 + n, 0, r + dy // self.dilation, r + dx // self.dilation] = 1.0
            c0 += n
        return kernel

    def extra_repr(self) -> str:
        return f"{self.channels}, kernel_size={self.kernel_size}, dilation={self.dilation}"


class ActiveShift(nn.Module):
    """Jeon & Kim 2018's active shift layer: per-channel learnable fractional shifts, bilinear.

    `theta` (C, 2) holds (dy, dx) in pixels, initialised uniformly in [-init, init]. `stride`
    samples every stride-th output position (the paper's strided ASL)."""

    def __init__(self, channels: int, stride: int = 1, init: float = 1.0):
        super().__init__()
        self.channels, self.stride = channels, stride
        self.theta = nn.Parameter(torch.empty(channels, 2).uniform_(-init, init))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        s = self.stride
        ys = torch.arange(0, h, s, device=x.device, dtype=x.dtype)
        xs = torch.arange(0, w, s, device=x.device, dtype=x.dtype)
        theta = self.theta.to(x.dtype)
        # sampling positions in pixels, per channel: (C, Ho, Wo)
        py = ys[None, :, None] + theta[:, 0, None, None]
        px = xs[None, None, :] + theta[:, 1, None, None]
        py, px = torch.broadcast_tensors(py, px)
        # grid_sample's normalised coordinates (align_corners=True: -1 and 1 are pixel centres)
        grid = torch.stack([2 * px / max(w - 1, 1) - 1, 2 * py / max(h - 1, 1) - 1], -1)
        grid = grid.expand(n, -1, -1, -1, -1).reshape(n * c, *grid.shape[1:])
        out = F.grid_sample(x.reshape(n * c, 1, h, w), grid, mode="bilinear",
                            padding_mode="zeros", align_corners=True)
        return out.reshape(n, c, *out.shape[-2:])

    def extra_repr(self) -> str:
        return f"{self.channels}, stride={self.stride}"


def make_shift(kind: str, channels: int, kernel_size: int = 3) -> nn.Module:
    if kind == "fixed":
        return Shift(channels, kernel_size)
    if kind == "active":
        return ActiveShift(channels)
    raise ValueError(f"shift={kind!r}; valid: fixed, active")


class ShiftBlock(nn.Module):
    """Conv-Shift-Conv (Wu et al.): 1x1 (in -> eps*out) -> BN -> ReLU -> shift ->
    1x1 (stride) -> BN, + shortcut, ReLU."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1, expansion: float = 6,
                 shift: str = "fixed", kernel_size: int = 3):
        super().__init__()
        mid = max(1, int(round(planes * expansion)))
        self.conv1 = nn.Conv2d(in_planes, mid, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.shift = make_shift(shift, mid, kernel_size)
        self.conv2 = nn.Conv2d(mid, planes, 1, stride, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = (ShortcutA(in_planes, planes, stride)
                         if stride != 1 or in_planes != planes else nn.Identity())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.shift(F.relu(self.bn1(self.conv1(x))))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ShiftResNet(nn.Module):
    """ShiftResNet-(6n+2) for CIFAR (Wu et al. 2017): CifarResNet's layout with
    Conv-Shift-Conv blocks. Per block 2 eps C^2 weights instead of the basic block's 18 C^2, so
    eps < 9 has fewer parameters than the ResNet of the same depth. `shift="active"` uses
    Jeon & Kim's active shift instead (the documents' "Active Shift" net)."""

    def __init__(self, depth: int = 20, in_channels: int = 3, image_size: int = 32,
                 num_classes: int = 10, width: int = 16, expansion: float = 6,
                 shift: str = "fixed", kernel_size: int = 3):
        super().__init__()
        if depth < 8 or (depth - 2) % 6:
            raise ValueError(f"depth={depth}: a CIFAR (Shift)ResNet has depth 6n+2 (8, 14, 20, 56, ...)")
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(in_channels, width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        layers, in_planes = [], width
        for stage, planes in enumerate((width, 2 * width, 4 * width)):
            for i in range(n):
                layers.append(ShiftBlock(in_planes, planes, 2 if stage > 0 and i == 0 else 1,
                                         expansion, shift, kernel_size))
                in_planes = planes
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(in_planes, num_classes)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.layers(F.relu(self.bn1(self.conv1(x))))
        return self.fc(F.adaptive_avg_pool2d(out, 1).flatten(1))
