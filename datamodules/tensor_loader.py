"""Batches straight from in-memory tensors: no per-sample Dataset/PIL work.

For a small dataset held as one tensor, `x[idx]` per batch costs microseconds, while a
`DataLoader` over a per-sample dataset spends more time collating than LeNet-300-100 spends
training. Under DDP each rank reads its own shard (rank::world_size); training shards are cut to
equal length so every rank takes the same number of steps.

Resumable (Lightning's `state_dict` / `load_state_dict` protocol for stateful loaders): a batch
order is a function of (seed, epoch) alone, so the position is (epoch, batches consumed). The
harness's resume checkpoint (lightning_modules/callbacks/resume.py) says how many batches of the
current epoch training has consumed (`consumed(n)`; Lightning prefetches one, so the loader's own
count of batches handed out would be one ahead); a loader restored from that state starts its next
iteration at that epoch and batch.
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
        self.epoch = 0  # the epoch the next iteration draws its order for
        self._skip = 0  # batches of that order to skip (a restored mid-epoch position)
        self._position = (0, 0)  # (epoch, batches consumed) of the iteration under way

    def _shard_size(self) -> int:
        n = len(self.x)
        if self.shuffle:  # training: equal shards so DDP ranks stay in step
            return n // self.world_size
        return len(range(self.rank, n, self.world_size))

    def __len__(self) -> int:
        m = self._shard_size()
        return m // self.batch_size if self.drop_last else math.ceil(m / self.batch_size)

    def consumed(self, batches: int, epoch_done: bool = False) -> None:
        """Training has consumed `batches` batches of the iteration under way (a checkpoint
        follows); `epoch_done`: the trainer's epoch is over (it may stop short of len(self),
        trainer.limit_train_batches), so the next position is the next epoch's start."""
        self._position = (self._position[0], len(self) if epoch_done else int(batches))

    def state_dict(self) -> dict:
        epoch, done = self._position
        if done >= len(self):
            epoch, done = epoch + 1, 0
        return {"epoch": int(epoch), "batch": int(done), "seed": int(self.seed)}

    def load_state_dict(self, state: dict) -> None:
        if int(state.get("seed", self.seed)) != self.seed:
            raise ValueError(f"loader state of seed {state.get('seed')}, this loader's seed is {self.seed}")
        self.epoch, self._skip = int(state["epoch"]), int(state["batch"])
        self._position = (self.epoch, self._skip)

    def __iter__(self):
        n = len(self.x)
        start, self._skip = self._skip, 0
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(n, generator=g)[self.rank::self.world_size][: self._shard_size()]
            self._position = (self.epoch, start)
            self.epoch += 1
        else:
            order = torch.arange(self.rank, n, self.world_size)
        for i in range(start, len(self)):
            idx = order[i * self.batch_size:(i + 1) * self.batch_size]
            yield self.x[idx], self.y[idx]
