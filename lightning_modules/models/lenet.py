"""LeNets as Han et al. (2015, 2016) used them: the Caffe variants.

LeNet-300-100: 784 -> 300 -> 100 -> 10, ReLU (266,610 weights + biases for 28x28 input).
LeNet-5 (Caffe `lenet.prototxt`): conv1 20@5x5, max-pool 2, conv2 50@5x5, max-pool 2,
ip1 500 + ReLU, ip2 -> classes (431,080 parameters for 28x28 input). As in Caffe, the convs have
no nonlinearity of their own; the only ReLU follows ip1.
"""
from __future__ import annotations

import torch
from torch import nn


class LeNet300(nn.Module):
    def __init__(self, in_channels: int = 1, image_size: int = 28, num_classes: int = 10,
                 hidden: tuple[int, int] = (300, 100)):
        super().__init__()
        h1, h2 = hidden
        self.net = nn.Sequential(
            nn.Flatten(),
            nn.Linear(in_channels * image_size * image_size, h1), nn.ReLU(inplace=True),
            nn.Linear(h1, h2), nn.ReLU(inplace=True),
            nn.Linear(h2, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def channel_groups(self) -> list[tuple[str, str | None, str]]:
        """(producer, BatchNorm, consumer) for structured pruning: each hidden unit of ip1, ip2."""
        return [("net.1", None, "net.3"), ("net.3", None, "net.5")]


class LeNet5(nn.Module):
    def __init__(self, in_channels: int = 1, image_size: int = 28, num_classes: int = 10):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 20, 5), nn.MaxPool2d(2),
            nn.Conv2d(20, 50, 5), nn.MaxPool2d(2),
        )
        side = ((image_size - 4) // 2 - 4) // 2
        if side < 1:
            raise ValueError(f"image_size={image_size}: LeNet-5 needs inputs of at least 12x12")
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(50 * side * side, 500), nn.ReLU(inplace=True),
            nn.Linear(500, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))

    def channel_groups(self) -> list[tuple[str, str | None, str]]:
        """(producer, BatchNorm, consumer) for structured pruning: conv1 -> pool -> conv2 ->
        pool -> flatten -> ip1 (a conv2 channel owns side*side inputs of ip1)."""
        return [("features.0", None, "features.2"), ("features.2", None, "classifier.1")]
