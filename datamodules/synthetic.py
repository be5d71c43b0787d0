"""Random images of any shape, for throughput measurements (no files, no decoding).

`num_batches` batches per epoch of `batch_size` images (channels x image_size x image_size) and
random labels; a small pool of batches is made once and served in turn, so the loader costs
nothing and the numbers measure the model. Accuracy on it means nothing (chance level).
"""
from __future__ import annotations

import pytorch_lightning as pl
import torch


class SyntheticLoader:
    def __init__(self, pool: list[tuple[torch.Tensor, torch.Tensor]], num_batches: int):
        self.pool, self.num_batches = pool, num_batches

    def __len__(self) -> int:
        return self.num_batches

    def __iter__(self):
        for i in range(self.num_batches):
            yield self.pool[i % len(self.pool)]


class SyntheticDataModule(pl.LightningDataModule):
    name = "synthetic"

    def __init__(self, channels: int = 3, image_size: int = 224, num_classes: int = 1000, batch_size: int = 256,
                 eval_batch_size: int = 256, num_batches: int = 100, eval_batches: int = 10, pool: int = 4,
                 seed: int = 0, root: str | None = None, train_subset: int | None = None,
                 test_subset: int | None = None):
        super().__init__()
        self.in_channels, self.image_size, self.num_classes = channels, image_size, num_classes
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size
        self.num_batches, self.eval_batches, self.pool_size, self.seed = num_batches, eval_batches, pool, seed

    def _pool(self, batch_size: int, salt: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        g = torch.Generator().manual_seed(self.seed + salt)
        shape = (batch_size, self.in_channels, self.image_size, self.image_size)
        return [(torch.randn(shape, generator=g), torch.randint(0, self.num_classes, (batch_size,), generator=g))
                for _ in range(self.pool_size)]

    def setup(self, stage: str | None = None) -> None:
        pass

    def train_dataloader(self):
        return SyntheticLoader(self._pool(self.batch_size, 0), self.num_batches)

    def val_dataloader(self):
        return SyntheticLoader(self._pool(self.eval_batch_size, 1), self.eval_batches)

    test_dataloader = val_dataloader
