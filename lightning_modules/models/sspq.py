"""SSPQ: Spatial Shift, Point-wise Quantization (the documents' "Compact Network Design" study).

The block is MobileNetV2's inverted residual (Sandler et al. 2018) with its depthwise 3x3 conv
replaced by an active shift (Jeon & Kim 2018):

    1x1 conv (C_in -> t C_out) -> BN -> ReLU -> ActiveShift (stride) -> 1x1 conv (-> C_out) -> BN
    (+ the input when stride 1 and C_in == C_out: linear bottleneck, no ReLU after the add)

All weights but the stem conv and the classifier are in the point-wise (1x1) convs, so
quantizing those is where the storage goes: the documents' chain ResNet-50 97.49 MB -> active
shift 84.74 MB -> inverted residual 54.41 MB -> SSPQ 9.79 MB. The quantization is NOT built
into this net: `method=sspq` (conf/method/sspq.yaml) is the project's DoReFa method restricted
to 1x1 convs (`layers: pointwise`), so the same net with `method=fp32` is the unquantized
inverted-residual row, every other method composes with it as with any model, and the export
is the packed file of pack.py. The BatchNorm after each 1x1 conv is the documents' "BatchNorm
after quantization to reduce quantization error".

- `sspq`: ResNet-50 scale: stage widths 64/128/256/512 with 3/4/6/3 blocks (ResNet-50's
  bottleneck widths and depths), expansion 4 (so the wide side is ResNet-50's 256..2048), a
  1x1 head conv to 2048 and the FC, 7x7/2 stem + max-pool for ImageNet-size inputs;
- `sspq_small`: the CIFAR ResNet-20 layout, 16/32/64 channels, 3 blocks per stage.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .shift import ActiveShift
from .torchvision_nets import _small


class SSPQBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int = 1, expansion: float = 4):
        super().__init__()
        mid = int(round(cout * expansion))
        self.expand = nn.Conv2d(cin, mid, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.shift = ActiveShift(mid, stride)
        self.project = nn.Conv2d(mid, cout, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.shift(F.relu(self.bn1(self.expand(x))))
        out = self.bn2(self.project(out))
        return x + out if self.residual else out


class SSPQNet(nn.Module):
    def __init__(self, in_channels: int = 3, image_size: int = 224, num_classes: int = 1000,
                 widths: Sequence[int] = (64, 128, 256, 512), blocks: Sequence[int] = (3, 4, 6, 3),
                 expansion: float = 4, head: int | None = 2048, stem: str = "auto"):
        super().__init__()
        if len(widths) != len(blocks):
            raise ValueError(f"widths={list(widths)} and blocks={list(blocks)}: "
                             "one block count per stage")
        if _small(stem, image_size):
            self.stem = nn.Sequential(nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False),
                                      nn.BatchNorm2d(widths[0]), nn.ReLU(inplace=True))
        else:
            self.stem = nn.Sequential(nn.Conv2d(in_channels, widths[0], 7, 2, 3, bias=False),
                                      nn.BatchNorm2d(widths[0]), nn.ReLU(inplace=True),
                                      nn.MaxPool2d(3, 2, 1))
        layers, cin = [], widths[0]
        for stage, (c, n) in enumerate(zip(widths, blocks)):
            for i in range(n):
                layers.append(SSPQBlock(cin, c, 2 if stage > 0 and i == 0 else 1, expansion))
                cin = c
        self.layers = nn.Sequential(*layers)
        self.head = (nn.Sequential(nn.Conv2d(cin, head, 1, bias=False), nn.BatchNorm2d(head),
                                   nn.ReLU(inplace=True)) if head else nn.ReLU())
        self.fc = nn.Linear(head or cin, num_classes)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.head(self.layers(self.stem(x)))
        return self.fc(out.mean((2, 3)))
