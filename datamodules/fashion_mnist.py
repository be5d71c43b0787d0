"""Fashion-MNIST, the embedded default dataset.

Raw files come, in order of preference, from `<root>/FashionMNIST/raw/` (already there), the
Debian package `dataset-fashion-mnist` (/usr/share/datasets/fashion-mnist/*.gz), or
torchvision's download. The data is held as normalised float tensors and batched by index
(`TensorLoader`). Validation is a fixed-seed split of the 60k training set; the test set is the
official 10k.
"""
from __future__ import annotations

import argparse
import gzip
import shutil
import sys
from pathlib import Path

import pytorch_lightning as pl
import torch
from torchvision.datasets import FashionMNIST

from .tensor_loader import TensorLoader

REPO = Path(__file__).resolve().parents[1]
DEFAULT_ROOT = REPO / "data"
DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
RAW_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
             "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
MEAN, STD = 0.2860, 0.3530  # of the 60k training images, pixel values in [0, 1]


class DataError(RuntimeError):
    """Data a user must fix (missing, unreadable). Said in one line by train.py."""


def ensure_raw(root: Path, debian_dir: Path = DEBIAN_DIR, allow_download: bool = True) -> Path:
    """Make the four raw files exist under root/FashionMNIST/raw; return that folder."""
    raw = Path(root) / "FashionMNIST" / "raw"
    missing = [f for f in RAW_FILES if not (raw / f).is_file()]
    if not missing:
        return raw
    if all((debian_dir / f"{f}.gz").is_file() for f in missing):
        raw.mkdir(parents=True, exist_ok=True)
        for f in missing:
            tmp = raw / f"{f}.partial"
            with gzip.open(debian_dir / f"{f}.gz", "rb") as src, open(tmp, "wb") as dst:
                shutil.copyfileobj(src, dst)
            tmp.replace(raw / f)
        return raw
    if allow_download:
        try:
            FashionMNIST(str(root), train=True, download=True)
            FashionMNIST(str(root), train=False, download=True)
            return raw
        except Exception:  # no network: fall through to the one-line advice
            pass
    raise DataError(
        f"Fashion-MNIST files missing under {raw} ({', '.join(missing)}): install the Debian package "
        f"(apt-get install dataset-fashion-mnist), allow torchvision's download, or copy the *-ubyte files there")


def load_split(root: Path, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Images as normalised float32 (N, 1, 28, 28) and labels as int64 (N,)."""
    try:
        ds = FashionMNIST(str(root), train=train, download=False)
    except Exception as e:
        raise DataError(f"Fashion-MNIST files under {Path(root) / 'FashionMNIST' / 'raw'} are unreadable "
                        f"({type(e).__name__}: {e}); delete them and run `make data`") from None
    if len(ds.data) != len(ds.targets):  # torchvision reads both files without comparing them
        prefix = "train" if train else "t10k"
        raw = Path(root) / "FashionMNIST" / "raw"
        raise DataError(f"{raw / f'{prefix}-images-idx3-ubyte'} has {len(ds.data)} images but "
                        f"{raw / f'{prefix}-labels-idx1-ubyte'} {len(ds.targets)} labels; valid: one label "
                        "per image (delete both and run `make data`)")
    x = ((ds.data.float() / 255.0 - MEAN) / STD).unsqueeze(1).contiguous()
    return x, ds.targets.long()


class FashionMNISTDataModule(pl.LightningDataModule):
    name = "fashion_mnist"
    in_channels, image_size, num_classes = 1, 28, 10

    def __init__(self, root: str | None = None, batch_size: int = 128, eval_batch_size: int = 1000,
                 val_size: int = 5000, split_seed: int = 0, train_subset: int | None = None,
                 test_subset: int | None = None, shuffle_seed: int = 0):
        super().__init__()
        self.root = Path(root) if root else DEFAULT_ROOT
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size
        self.val_size, self.split_seed, self.shuffle_seed = val_size, split_seed, shuffle_seed
        self.train_subset, self.test_subset = train_subset, test_subset
        self._loaded = False

    def prepare_data(self) -> None:
        ensure_raw(self.root)

    def setup(self, stage: str | None = None) -> None:
        if self._loaded:
            return
        ensure_raw(self.root)  # prepare_data runs on one process per node; be safe on the others
        x, y = load_split(self.root, train=True)
        perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(self.split_seed))
        val_idx, train_idx = perm[: self.val_size], perm[self.val_size:]
        if self.train_subset:
            train_idx = train_idx[: self.train_subset]
        self.x_train, self.y_train = x[train_idx], y[train_idx]
        self.x_val, self.y_val = x[val_idx], y[val_idx]
        self.x_test, self.y_test = load_split(self.root, train=False)
        if self.test_subset:
            self.x_test, self.y_test = self.x_test[: self.test_subset], self.y_test[: self.test_subset]
        self._loaded = True

    def _dist(self) -> dict:
        t = self.trainer
        return {"rank": t.global_rank, "world_size": t.world_size} if t is not None else {}

    def train_dataloader(self) -> TensorLoader:
        return TensorLoader(self.x_train, self.y_train, self.batch_size, shuffle=True, drop_last=True,
                            seed=self.shuffle_seed, **self._dist())

    def val_dataloader(self) -> TensorLoader:
        return TensorLoader(self.x_val, self.y_val, self.eval_batch_size, **self._dist())

    def test_dataloader(self) -> TensorLoader:
        return TensorLoader(self.x_test, self.y_test, self.eval_batch_size, **self._dist())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Make the Fashion-MNIST raw files available.")
    p.add_argument("--prepare", action="store_true", help="copy/decompress the raw files into --root")
    p.add_argument("--root", default=str(DEFAULT_ROOT))
    args = p.parse_args(argv)
    try:
        raw = ensure_raw(Path(args.root))
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"Fashion-MNIST raw files: {raw}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
