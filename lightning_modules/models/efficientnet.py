"""EfficientNet-B0 and compound scaling (Tan & Le, ICML 2019), built from torchvision's MBConv.

B0 is the documents' stage table (Tan & Le Table 1): conv 3x3 (32) | MBConv1 k3 16 x1 |
MBConv6 k3 24 x2 | MBConv6 k5 40 x2 | MBConv6 k3 80 x3 | MBConv6 k5 112 x3 | MBConv6 k5 192 x4 |
MBConv6 k3 320 x1 | conv 1x1 1280, pooling, FC. Compound scaling with coefficient phi (eq. 3,
alpha = 1.2, beta = 1.1, gamma = 1.15, alpha beta^2 gamma^2 ~ 2):

    depth      d = alpha^phi:  each stage's layers L_i -> ceil(L_i d)
    width      w = beta^phi:   each stage's channels C_i -> C_i w rounded to a multiple of 8
                               (at least 90% of C_i w: torchvision's _make_divisible)
    resolution r = gamma^phi:  the input side R -> round(R r)

so B1-B3 are phi = 1, 2, 3 of the same config. These are the paper's formula, not its released
B1-B3 (whose multipliers were rounded by hand: B1 is width 1.0, depth 1.1, 240 px). The
resolution is applied by resizing the input in `forward` (bilinear), from the data's image
size: 28 px Fashion-MNIST becomes 32 / 37 / 43 px for B1 / B2 / B3, 224 px ImageNet 258 / 296 /
341. `stem="small"` (auto below 64 px) makes the stem conv stride 1 (total stride 16).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
import torchvision.models.efficientnet as tve
from torch import nn

from .torchvision_nets import _conv_like, _small

ALPHA, BETA, GAMMA = 1.2, 1.1, 1.15
# (expand ratio, kernel, stride, in channels, out channels, layers): Tan & Le Table 1, stages 2-8
B0 = [(1, 3, 1, 32, 16, 1), (6, 3, 2, 16, 24, 2), (6, 5, 2, 24, 40, 2), (6, 3, 2, 40, 80, 3),
      (6, 5, 1, 80, 112, 3), (6, 5, 2, 112, 192, 4), (6, 3, 1, 192, 320, 1)]


def compound(phi: float, image_size: int) -> dict:
    """The multipliers and the scaled numbers of the formula, per stage."""
    d, w, r = ALPHA ** phi, BETA ** phi, GAMMA ** phi
    return {"depth_mult": d, "width_mult": w, "resolution": round(image_size * r),
            "channels": [tve.MBConvConfig.adjust_channels(c, w) for *_, c, _ in B0],
            "layers": [math.ceil(n * d) for *_, n in B0],
            "stem": tve.MBConvConfig.adjust_channels(32, w)}


class EfficientNet(nn.Module):
    def __init__(self, in_channels: int = 3, image_size: int = 224, num_classes: int = 1000,
                 phi: float = 0, dropout: float = 0.2, stochastic_depth: float = 0.2,
                 resize_input: bool = True, stem: str = "auto"):
        super().__init__()
        c = compound(phi, image_size)
        self.phi, self.resolution = phi, c["resolution"] if resize_input else image_size
        setting = [tve.MBConvConfig(*row, width_mult=c["width_mult"], depth_mult=c["depth_mult"])
                   for row in B0]
        self.net = tve.EfficientNet(setting, dropout=dropout, stochastic_depth_prob=stochastic_depth,
                                    num_classes=num_classes)
        first = self.net.features[0][0]
        small = _small(stem, self.resolution)
        if small or in_channels != 3:
            self.net.features[0][0] = _conv_like(first, in_channels, stride=1 if small else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.resolution or x.shape[-2] != self.resolution:
            x = F.interpolate(x, size=(self.resolution, self.resolution), mode="bilinear",
                              align_corners=False)
        return self.net(x)

    def extra_repr(self) -> str:
        return f"phi={self.phi}, resolution={self.resolution}"
