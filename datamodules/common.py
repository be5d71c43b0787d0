"""What the image datamodules share: the one-line DataError, the dataset root, the rank/world of
the current process, and torch DataLoaders built the same way for every dataset."""
from __future__ import annotations

from pathlib import Path

import torch
from pytorch_lightning.overrides.distributed import UnrepeatedDistributedSampler
from torch.utils.data import DataLoader, Dataset

from .fashion_mnist import DataError  # one error type for data a user must fix (train.py says it in one line)

REPO = Path(__file__).resolve().parents[1]

__all__ = ["DataError", "REPO", "dataset_root", "rank_world", "make_loader", "subset"]


def dataset_root(root: str | None, default_name: str) -> Path:
    """`data.root`, or `<repo>/data/<default_name>` when it is null."""
    return Path(root) if root else REPO / "data" / default_name


def rank_world(trainer) -> tuple[int, int]:
    """(global rank, world size) from the Trainer, else from torch.distributed, else (0, 1)."""
    if trainer is not None:
        return int(trainer.global_rank), int(trainer.world_size)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def subset(n: int, limit: int | None) -> range:
    """The first `limit` indices of n (all of them when limit is None)."""
    return range(min(n, limit) if limit else n)


def make_loader(ds: Dataset, batch_size: int, *, train: bool, num_workers: int, seed: int = 0,
                trainer=None) -> DataLoader:
    """A DataLoader. Training under DDP: Lightning swaps in its DistributedSampler (each rank its own
    shard, padded so that the ranks step together). Evaluation under a DDP `trainer`: each rank
    reads indices rank::world, unpadded (Lightning's UnrepeatedDistributedSampler, which Lightning
    then leaves in place), so every image is counted exactly once; ranks may run one batch fewer
    (evaluation has no per-batch collective)."""
    sampler = None
    if not train and trainer is not None and trainer.world_size > 1:
        sampler = UnrepeatedDistributedSampler(ds, num_replicas=trainer.world_size, rank=trainer.global_rank,
                                               shuffle=False)
    return DataLoader(ds, batch_size=batch_size, shuffle=train, drop_last=train, num_workers=num_workers,
                      sampler=sampler, persistent_workers=num_workers > 0, pin_memory=torch.cuda.is_available(),
                      generator=torch.Generator().manual_seed(seed) if train else None)
