"""CIFAR-style ResNet of He et al. 2016 (Sec. 4.2): depth = 6n + 2.

Three stages of n basic blocks with 16, 32, 64 channels, stride 2 at the start of stages 2 and 3,
global average pooling and one FC layer. Shortcuts are option A (identity with zero-padded
channels and stride-2 subsampling, no parameters) as in the paper's CIFAR experiments.
ResNet-20 (n=3, 0.27M parameters) is the paper's CIFAR net; ResNet-8 (n=1) is the CPU bench net.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ShortcutA(nn.Module):
    """Parameter-free shortcut: subsample by `stride` and zero-pad the new channels."""

    def __init__(self, in_planes: int, planes: int, stride: int):
        super().__init__()
        self.stride, self.pad = stride, planes - in_planes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, ::self.stride, ::self.stride]
        return F.pad(x, (0, 0, 0, 0, self.pad // 2, self.pad - self.pad // 2))


class BasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = (ShortcutA(in_planes, planes, stride)
                         if stride != 1 or in_planes != planes else nn.Identity())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    def __init__(self, depth: int = 20, in_channels: int = 3, image_size: int = 32,
                 num_classes: int = 10, width: int = 16):
        super().__init__()
        if depth < 8 or (depth - 2) % 6:
            raise ValueError(f"depth={depth}: a CIFAR ResNet has depth 6n+2 (8, 14, 20, 32, 44, 56, 110)")
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(in_channels, width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        layers, in_planes = [], width
        for stage, planes in enumerate((width, 2 * width, 4 * width)):
            for i in range(n):
                stride = 2 if stage > 0 and i == 0 else 1
                layers.append(BasicBlock(in_planes, planes, stride))
                in_planes = planes
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(in_planes, num_classes)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layers(out)
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.fc(out)

    def channel_groups(self) -> list[tuple[str, str | None, str]]:
        """Channels structured pruning may remove, as (producer, its BatchNorm, consumer): a
        block's output channels are tied to its parameter-free shortcut and the stem, so only
        the inner channels of each block (conv1 -> bn1 -> conv2)."""
        return [(f"layers.{i}.conv1", f"layers.{i}.bn1", f"layers.{i}.conv2")
                for i in range(len(self.layers))]
