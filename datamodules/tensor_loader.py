"""Batches straight from in-memory tensors: no per-sample Dataset/PIL work.

For a small dataset held as one tensor, `x[idx]` per batch costs microseconds, while a
`DataLoader` over a per-sample dataset spends more time collating than LeNet-300-100 spends
training. Under DDP each rank reads its own shard (rank::world_size); training shards are cut to
equal length so every rank takes the same number of steps.
"""
from __future__ import annotations

import math

import torch


class TensorLoader:
    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch_size: int, *, shuffle: bool = False,
                 drop_last: bool = False, seed: int = 0, rank: int = 0, world_size: int = 1):
        if len(x) != len(y):
            raise ValueError(f"x has {len(x)} samples but y has {len(y)}")
        self.x, self.y, self.batch_size = x, y, batch_size
        self.shuffle, self.drop_last, self.seed = shuffle, drop_last, seed
        self.rank, self.world_size = rank, world_size
        self.epoch = 0

    def _shard_size(self) -> int:
        n = len(self.x)
        if self.shuffle:  # training: equal shards so DDP ranks stay in step
            return n // self.world_size
        return len(range(self.rank, n, self.world_size))

    def __len__(self) -> int:
        m = self._shard_size()
        return m // self.batch_size if self.drop_last else math.ceil(m / self.batch_size)

    def __iter__(self):
        n = len(self.x)
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(n, generator=g)[self.rank::self.world_size][: self._shard_size()]
            self.epoch += 1
        else:
            order = torch.arange(self.rank, n, self.world_size)
        for i in range(len(self)):
            idx = order[i * self.batch_size:(i + 1) * self.batch_size]
            yield self.x[idx], self.y[idx]
