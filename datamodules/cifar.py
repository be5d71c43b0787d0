"""CIFAR-10 / CIFAR-100 over torchvision's datasets (the python pickle batches).

`data.root` holds `cifar-10-batches-py/` (data_batch_1..5, test_batch, batches.meta) or
`cifar-100-python/` (train, test, meta). Missing files are downloaded by torchvision where the
network allows; otherwise one DataError names the expected files. Training augmentation is the
standard one (He et al. 2016): random 32x32 crop of the image padded by 4 pixels, horizontal
flip; then per-channel normalisation (transforms v2). Validation is a fixed-seed split of the
training set, the test set the official 10k.
"""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import Subset
from torchvision import datasets
from torchvision.transforms import v2

from .common import DataError, dataset_root, make_loader

# per-channel mean/std of the 50k training images, pixel values in [0, 1]
STATS = {"cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
         "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762))}
TV_CLASS = {"cifar10": datasets.CIFAR10, "cifar100": datasets.CIFAR100}


def _existence_only(tv_class):
    """torchvision's CIFAR class checking that the files exist (it verifies md5 sums when it
    downloads; hashing 170 MB on every start is not needed, and tests use small fixture files)."""
    class Checked(tv_class):
        def _check_integrity(self) -> bool:
            folder = Path(self.root) / self.base_folder
            return all((folder / name).is_file() for name, _ in self.train_list + self.test_list)

        def _load_meta(self) -> None:  # torchvision's, without the md5 check
            with open(Path(self.root) / self.base_folder / self.meta["filename"], "rb") as f:
                self.classes = pickle.load(f, encoding="latin1")[self.meta["key"]]
            self.class_to_idx = {c: i for i, c in enumerate(self.classes)}
    Checked.__name__ = tv_class.__name__
    return Checked


def expected_files(variant: str) -> tuple[str, list[str]]:
    tv = TV_CLASS[variant]
    return tv.base_folder, [n for n, _ in tv.train_list + tv.test_list] + [tv.meta["filename"]]


def ensure_files(root: Path, variant: str, allow_download: bool = True) -> None:
    folder, files = expected_files(variant)
    missing = [f for f in files if not (root / folder / f).is_file()]
    if not missing:
        return
    if allow_download:
        try:
            TV_CLASS[variant](str(root), train=True, download=True)
            return
        except Exception:  # no network: fall through to the one-line advice
            pass
    which = "no" if len(missing) == len(files) else f"missing {', '.join(missing)} among the"
    raise DataError(f"data.root={root}: {which} {variant} files under {root / folder}: expected "
                    f"{', '.join(files)} (the python version, https://www.cs.toronto.edu/~kriz/cifar.html)")


def load(root: Path, variant: str, train: bool):
    """The torchvision dataset (images as uint8 HWC numpy in `.data`, labels in `.targets`)."""
    try:
        return _existence_only(TV_CLASS[variant])(str(root), train=train, download=False)
    except Exception as e:
        folder = root / TV_CLASS[variant].base_folder
        raise DataError(f"data.root={root}: {variant} files under {folder} are unreadable "
                        f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); delete them and download again") from None


def split(n: int, val_size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(train indices, validation indices) of the training set, fixed by `seed`."""
    if not 0 <= val_size < n:
        raise DataError(f"data.val_size={val_size}: must be in 0..{n - 1} (the training set has {n} images)")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return perm[val_size:], perm[:val_size]


def transforms(variant: str, train: bool) -> v2.Compose:
    mean, std = STATS[variant]
    aug = [v2.RandomCrop(32, padding=4), v2.RandomHorizontalFlip()] if train else []
    return v2.Compose([v2.ToImage(), *aug, v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)])


class CIFARDataModule(pl.LightningDataModule):
    in_channels, image_size = 3, 32

    def __init__(self, variant: str = "cifar10", root: str | None = None, batch_size: int = 128,
                 eval_batch_size: int = 500, val_size: int = 5000, split_seed: int = 0,
                 shuffle_seed: int = 0, train_subset: int | None = None, test_subset: int | None = None,
                 num_workers: int = 2, download: bool = True):
        super().__init__()
        if variant not in STATS:
            raise DataError(f"data.variant={variant}: valid: {', '.join(STATS)}")
        self.variant, self.name = variant, variant
        self.num_classes = 10 if variant == "cifar10" else 100
        self.root = dataset_root(root, variant)
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size
        self.val_size, self.split_seed, self.shuffle_seed = val_size, split_seed, shuffle_seed
        self.train_subset, self.test_subset = train_subset, test_subset
        self.num_workers, self.download = num_workers, download
        self._loaded = False

    def prepare_data(self) -> None:
        ensure_files(self.root, self.variant, self.download)

    def setup(self, stage: str | None = None) -> None:
        if self._loaded:
            return
        ensure_files(self.root, self.variant, allow_download=False)
        train_all = load(self.root, self.variant, train=True)
        test = load(self.root, self.variant, train=False)
        train_idx, val_idx = split(len(train_all), self.val_size, self.split_seed)
        if self.train_subset:
            train_idx = train_idx[: self.train_subset]
        self.train_set = Subset(train_all, train_idx.tolist())
        self.train_set.dataset.transform = transforms(self.variant, train=True)
        # validation reads the same files without augmentation: a second dataset object
        val_all = load(self.root, self.variant, train=True)
        val_all.transform = transforms(self.variant, train=False)
        self.val_set = Subset(val_all, val_idx.tolist())
        test.transform = transforms(self.variant, train=False)
        self.test_set = Subset(test, list(range(min(len(test), self.test_subset or len(test)))))
        self._loaded = True

    def arrays(self, which: str) -> tuple[np.ndarray, np.ndarray]:
        """(uint8 NHWC images, int64 labels) of a split: what the DALI pipeline reads."""
        s = {"train": self.train_set, "val": self.val_set, "test": self.test_set}[which]
        idx = np.asarray(s.indices, dtype=np.int64)
        return s.dataset.data[idx], np.asarray(s.dataset.targets, dtype=np.int64)[idx]

    def train_dataloader(self):
        return make_loader(self.train_set, self.batch_size, train=True, num_workers=self.num_workers,
                           seed=self.shuffle_seed)

    def val_dataloader(self):
        return make_loader(self.val_set, self.eval_batch_size, train=False, num_workers=self.num_workers,
                           trainer=self.trainer)

    def test_dataloader(self):
        return make_loader(self.test_set, self.eval_batch_size, train=False, num_workers=self.num_workers,
                           trainer=self.trainer)
