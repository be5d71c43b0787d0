"""torchvision's ImageNet nets, built for the run's data: `in_channels`, `image_size`, `num_classes`.

Weights are never downloaded (weights=None): every net trains from scratch. `stem` chooses the
input stage:

- `imagenet`: torchvision's net as published (AlexNet's 11x11/4 conv, ResNet's 7x7/2 conv +
  3x3/2 max-pool, ...), the first conv rebuilt only when `in_channels != 3`;
- `small`: the CIFAR-style stem for 28x28 / 32x32 inputs (a 3x3 stride-1 first conv and no
  stem pooling; VGG drops its 5th pool; classifiers shrunk to what the smaller map feeds), as in
  He et al. 2016 Sec. 4.2 and the CIFAR variants of these nets;
- `auto` (default): `small` below 64x64 pixels, `imagenet` otherwise.

| config          | net                                                                   |
|-----------------|-----------------------------------------------------------------------|
| alexnet         | Krizhevsky et al. 2012 (torchvision's one-GPU variant)                |
| vgg16           | Simonyan & Zisserman 2015, configuration D, with BatchNorm (vgg16_bn) |
| resnet18/50     | He et al. 2016                                                        |
| resnet_dilated  | ResNet-50, last stage dilated (rate 2) instead of strided (DeepLab)   |
| mobilenet_v2    | Sandler et al. 2018: inverted residual, linear bottleneck, width mult |
| densenet_bc     | Huang et al. 2017, DenseNet-BC: 1x1 bottleneck (4k), transitions x0.5 |
"""
from __future__ import annotations

import torchvision.models as tvm
from torch import nn
from torchvision.models.vgg import cfgs as vgg_cfgs, make_layers

STEMS = ("auto", "imagenet", "small")


def _small(stem: str, image_size: int) -> bool:
    if stem not in STEMS:
        raise ValueError(f"stem={stem!r}; valid: {', '.join(STEMS)}")
    return stem == "small" or (stem == "auto" and image_size < 64)


def _conv_like(c: nn.Conv2d, in_channels: int, kernel=None, stride=None, padding=None) -> nn.Conv2d:
    """`c` rebuilt with another input channel count (and, optionally, kernel/stride/padding)."""
    new = nn.Conv2d(in_channels, c.out_channels, kernel or c.kernel_size, stride or c.stride,
                    c.padding if padding is None else padding, c.dilation, c.groups, c.bias is not None)
    nn.init.kaiming_normal_(new.weight, mode="fan_out", nonlinearity="relu")  # torchvision's init
    if new.bias is not None:
        nn.init.zeros_(new.bias)
    return new


def alexnet(in_channels: int = 3, image_size: int = 224, num_classes: int = 1000,
            stem: str = "auto", dropout: float = 0.5) -> nn.Module:
    """Small stem: conv1 3x3/1 (64) keeps the three 3x3/2 max-pools (28 -> 2x2 map), the pooled
    map is 2x2 instead of 6x6, so fc6 is 1024 -> 4096 (23.5M parameters instead of 61M)."""
    m = tvm.alexnet(weights=None, num_classes=num_classes, dropout=dropout)
    if _small(stem, image_size):
        m.features[0] = _conv_like(m.features[0], in_channels, 3, 1, 1)
        m.avgpool = nn.AdaptiveAvgPool2d((2, 2))
        m.classifier[1] = nn.Linear(256 * 2 * 2, 4096)
    elif in_channels != 3:
        m.features[0] = _conv_like(m.features[0], in_channels)
    return m


class _VGGSmallInput(nn.Module):
    """VGG-16-BN features without the last max-pool, global pooling, one FC (the CIFAR VGG-16)."""

    def __init__(self, in_channels: int, num_classes: int):
        super().__init__()
        self.features = make_layers(vgg_cfgs["D"], batch_norm=True)[:-1]
        self.features[0] = _conv_like(self.features[0], in_channels)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(512, num_classes)

    def forward(self, x):
        return self.classifier(self.avgpool(self.features(x)).flatten(1))


def vgg16(in_channels: int = 3, image_size: int = 224, num_classes: int = 1000,
          stem: str = "auto") -> nn.Module:
    if _small(stem, image_size):
        return _VGGSmallInput(in_channels, num_classes)
    m = tvm.vgg16_bn(weights=None, num_classes=num_classes)
    if in_channels != 3:
        m.features[0] = _conv_like(m.features[0], in_channels)
    return m


def _resnet_stem(m: nn.Module, in_channels: int, small: bool) -> nn.Module:
    if small:
        m.conv1 = _conv_like(m.conv1, in_channels, 3, 1, 1)
        m.maxpool = nn.Identity()
    elif in_channels != 3:
        m.conv1 = _conv_like(m.conv1, in_channels)
    return m


def resnet(in_channels: int = 3, image_size: int = 224, num_classes: int = 1000,
           depth: int = 18, stem: str = "auto", dilate_last: bool = False) -> nn.Module:
    """torchvision ResNet-18/34/50/101/152. `dilate_last`: the last stage keeps the resolution
    (stride 1, dilation 2), DeepLab's dilated ResNet (torchvision supports it for depth >= 50)."""
    builders = {18: tvm.resnet18, 34: tvm.resnet34, 50: tvm.resnet50, 101: tvm.resnet101,
                152: tvm.resnet152}
    if depth not in builders:
        raise ValueError(f"depth={depth}; valid: {', '.join(map(str, builders))}")
    if dilate_last and depth < 50:
        raise ValueError(f"dilate_last with depth={depth}: torchvision dilates Bottleneck "
                         "ResNets only (depth >= 50)")
    m = builders[depth](weights=None, num_classes=num_classes,
                        replace_stride_with_dilation=[False, False, dilate_last])
    return _resnet_stem(m, in_channels, _small(stem, image_size))


def mobilenet_v2(in_channels: int = 3, image_size: int = 224, num_classes: int = 1000,
                 width_mult: float = 1.0, stem: str = "auto", dropout: float = 0.2) -> nn.Module:
    """Small stem (the CIFAR MobileNetV2): conv1 stride 1 and the 24-channel stage stride 1, so
    the total stride is 8 instead of 32."""
    setting = [[1, 16, 1, 1], [6, 24, 2, 2], [6, 32, 3, 2], [6, 64, 4, 2], [6, 96, 3, 1],
               [6, 160, 3, 2], [6, 320, 1, 1]]  # t, c, n, s (Sandler et al. 2018, Table 2)
    small = _small(stem, image_size)
    if small:
        setting[1][3] = 1
    m = tvm.MobileNetV2(num_classes=num_classes, width_mult=width_mult,
                        inverted_residual_setting=setting, dropout=dropout)
    first = m.features[0][0]
    if small or in_channels != 3:
        m.features[0][0] = _conv_like(first, in_channels, stride=1 if small else None)
    return m


def densenet_bc(in_channels: int = 3, image_size: int = 224, num_classes: int = 1000,
                growth_rate: int = 12, block_config=(6, 6, 6), num_init_features: int = 24,
                bn_size: int = 4, stem: str = "auto") -> nn.Module:
    """DenseNet-BC (Huang et al. 2017): each layer BN-ReLU-1x1 conv (bn_size * k) - BN-ReLU-3x3
    conv (k), concatenated; transitions halve the channels (compression 0.5) and the resolution.
    Defaults: the CIFAR DenseNet-BC with k = 12 and 3 blocks of 6 layers (depth 40)."""
    m = tvm.DenseNet(growth_rate=growth_rate, block_config=tuple(block_config),
                     num_init_features=num_init_features, bn_size=bn_size, num_classes=num_classes)
    if _small(stem, image_size):
        m.features.conv0 = _conv_like(m.features.conv0, in_channels, 3, 1, 1)
        m.features.pool0 = nn.Identity()
    elif in_channels != 3:
        m.features.conv0 = _conv_like(m.features.conv0, in_channels)
    return m
