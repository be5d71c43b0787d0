"""Fully connected nets as Hinton, Vinyals & Dean (2015) used them on MNIST.

MLP: flatten -> [dropout_input] -> (Linear h_i -> ReLU -> [dropout_hidden]) per hidden layer ->
Linear -> classes. The teacher `mlp2x1200` is two hidden layers of 1200 units with dropout 0.2 on
the input and 0.5 on the hidden units (Hinton et al., Sec. 3); the student `mlp2x800` is two
layers of 800 units without dropout. Dropout is off in eval mode, so a trained MLP predicts
deterministically (teacher logits, exported files).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class MLP(nn.Module):
    def __init__(self, in_channels: int = 1, image_size: int = 28, num_classes: int = 10,
                 hidden: Sequence[int] = (800, 800), dropout_input: float = 0.0,
                 dropout_hidden: float = 0.0):
        super().__init__()
        if not hidden or any(int(h) < 1 for h in hidden):
            raise ValueError(f"hidden={list(hidden)}: must be a non-empty list of positive widths")
        for key, p in (("dropout_input", dropout_input), ("dropout_hidden", dropout_hidden)):
            if not 0.0 <= p < 1.0:
                raise ValueError(f"{key}={p}: must be in [0, 1)")
        layers: list[nn.Module] = [nn.Flatten()]
        if dropout_input:
            layers.append(nn.Dropout(dropout_input))
        width = in_channels * image_size * image_size
        for h in hidden:
            layers += [nn.Linear(width, int(h)), nn.ReLU(inplace=True)]
            if dropout_hidden:
                layers.append(nn.Dropout(dropout_hidden))
            width = int(h)
        layers.append(nn.Linear(width, num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def channel_groups(self) -> list[tuple[str, str | None, str]]:
        """(producer, BatchNorm, consumer) for structured pruning: each hidden layer's units."""
        fc = [f"net.{i}" for i, m in enumerate(self.net) if isinstance(m, nn.Linear)]
        return [(a, None, b) for a, b in zip(fc, fc[1:])]
