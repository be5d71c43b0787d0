"""Compact designs torchvision lacks: VGG-Small, MobileNetV1 (depthwise separable convolution)
and ShuffleNet (grouped 1x1 convolution + channel shuffle).

Cost per output position of a K x K layer from C to N channels (the documents' table, biases
left out; tests/test_compact_cost.py checks it against torch.utils.flop_counter):

    standard conv             N C K^2   multiply-adds,  N C K^2 weights
    depthwise separable       C K^2 + N C               C K^2 + N C weights
    grouped (g groups)        N C K^2 / g               N C K^2 / g weights

All nets take `in_channels`, `image_size`, `num_classes`; `stem="small"` (or `auto` below 64
pixels) replaces a stride-2 stem by stride 1 for 28x28 / 32x32 inputs.
"""
from __future__ import annotations

import torch
from torch import nn

from .torchvision_nets import _small


def conv_bn(cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1, relu: bool = True):
    layers = [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
    return nn.Sequential(*layers, nn.ReLU(inplace=True)) if relu else nn.Sequential(*layers)


class DepthwiseSeparable(nn.Sequential):
    """MobileNetV1's layer (Howard et al. 2017, Fig. 3): 3x3 depthwise conv (groups = C) -> BN ->
    ReLU, then 1x1 pointwise conv -> BN -> ReLU."""

    def __init__(self, cin: int, cout: int, stride: int = 1, k: int = 3):
        super().__init__(conv_bn(cin, cin, k, stride, groups=cin), conv_bn(cin, cout, 1))


class MobileNetV1(nn.Module):
    """MobileNetV1 (Howard et al. 2017, Table 1): conv 3x3/2 (32), 13 depthwise separable
    layers to 1024 channels, global pooling, FC. `width_mult` is the width multiplier alpha
    (every layer's channels x alpha; cost ~ alpha^2)."""

    CFG = [(64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2), *[(512, 1)] * 5,
           (1024, 2), (1024, 1)]  # (output channels, stride)

    def __init__(self, in_channels: int = 3, image_size: int = 224, num_classes: int = 1000,
                 width_mult: float = 1.0, stem: str = "auto"):
        super().__init__()
        w = lambda c: max(8, int(c * width_mult))  # noqa: E731
        layers, cin = [conv_bn(in_channels, w(32), 3, 1 if _small(stem, image_size) else 2)], w(32)
        for cout, stride in self.CFG:
            layers.append(DepthwiseSeparable(cin, w(cout), stride))
            cin = w(cout)
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x).mean((2, 3)))


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """ShuffleNet's channel shuffle (Zhang et al. 2018, Sec. 3.1): reshape the channels to
    (groups, C/groups), transpose, flatten, so the next grouped conv sees every group."""
    n, c, h, w = x.shape
    return x.reshape(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


class ShuffleUnit(nn.Module):
    """ShuffleNet unit (Zhang et al. 2018, Fig. 2 b/c): 1x1 grouped conv (bottleneck = out/4) ->
    BN -> ReLU -> channel shuffle -> 3x3 depthwise conv (stride) -> BN -> 1x1 grouped conv -> BN;
    stride 1: add the input; stride 2: concatenate a 3x3/2 average-pooled input. ReLU after."""

    def __init__(self, cin: int, cout: int, stride: int, groups: int, first_groups: int | None = None):
        super().__init__()
        self.stride, self.groups = stride, groups
        branch = cout - cin if stride == 2 else cout
        mid = cout // 4
        g1 = groups if first_groups is None else first_groups
        self.gconv1 = conv_bn(cin, mid, 1, groups=g1)
        self.dwconv = conv_bn(mid, mid, 3, stride, groups=mid, relu=False)
        self.gconv2 = conv_bn(mid, branch, 1, groups=groups, relu=False)
        self.shuffle_groups = g1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.gconv1(x)
        out = self.gconv2(self.dwconv(channel_shuffle(out, self.shuffle_groups)))
        if self.stride == 2:
            return torch.relu(torch.cat([nn.functional.avg_pool2d(x, 3, 2, 1), out], 1))
        return torch.relu(x + out)


class ShuffleNet(nn.Module):
    """ShuffleNet 1x (Zhang et al. 2018, Table 1) with g groups: conv 3x3/2 (24) + max-pool 3x3/2,
    stages of 4/8/4 units (the first of each with stride 2; stage 2's first 1x1 conv is not
    grouped: 24 input channels), global pooling, FC. `scale` multiplies the stage widths
    (ShuffleNet 0.5x, 0.25x)."""

    WIDTHS = {1: 144, 2: 200, 3: 240, 4: 272, 8: 384}  # stage-2 output channels per g

    def __init__(self, in_channels: int = 3, image_size: int = 224, num_classes: int = 1000,
                 groups: int = 3, scale: float = 1.0, repeats=(4, 8, 4), stem: str = "auto"):
        super().__init__()
        if groups not in self.WIDTHS:
            raise ValueError(f"groups={groups}; valid: {', '.join(map(str, self.WIDTHS))}")
        small = _small(stem, image_size)
        c0 = 24
        base = int(self.WIDTHS[groups] * scale) // (4 * groups) * 4 * groups  # mid divisible by g
        self.stem = nn.Sequential(conv_bn(in_channels, c0, 3, 1 if small else 2),
                                  nn.Identity() if small else nn.MaxPool2d(3, 2, 1))
        units, cin = [], c0
        for stage, n in enumerate(repeats):
            cout = base * 2 ** stage
            for i in range(n):
                first_groups = 1 if stage == 0 and i == 0 else None
                units.append(ShuffleUnit(cin, cout, 2 if i == 0 else 1, groups, first_groups))
                cin = cout
        self.stages = nn.Sequential(*units)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.stages(self.stem(x)).mean((2, 3)))


class VGGSmall(nn.Module):
    """VGG-Small, the CIFAR net of the quantization papers (Zhang et al. 2018, LQ-Nets; Cai et
    al. 2017): 2x conv 128 - pool - 2x conv 256 - pool - 2x conv 512 - pool - FC, 3x3 convs with
    BN + ReLU. `width` scales the channels."""

    def __init__(self, in_channels: int = 3, image_size: int = 32, num_classes: int = 10,
                 width: int = 128):
        super().__init__()
        layers, cin = [], in_channels
        for i, c in enumerate((width, width, 2 * width, 2 * width, 4 * width, 4 * width)):
            layers.append(conv_bn(cin, c))
            if i % 2:
                layers.append(nn.MaxPool2d(2))
            cin = c
        self.features = nn.Sequential(*layers)
        side = image_size // 8
        if side < 1:
            raise ValueError(f"image_size={image_size}: VGG-Small needs inputs of at least 8x8")
        self.fc = nn.Linear(cin * side * side, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x).flatten(1))

    def channel_groups(self) -> list[tuple[str, str | None, str]]:
        """(producer, BatchNorm, consumer) for structured pruning: each conv's channels (after
        its BN), read by the next conv, the last by fc (a channel owns side*side inputs)."""
        convs = [f"features.{i}" for i, m in enumerate(self.features) if isinstance(m, nn.Sequential)]
        return [(f"{a}.0", f"{a}.1", f"{b}.0" if b else "fc") for a, b in zip(convs, [*convs[1:], None])]
