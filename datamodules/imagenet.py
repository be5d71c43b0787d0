"""ImageNet (or any dataset) in the ImageFolder layout: `train/<wnid>/*.JPEG`, `val/<wnid>/*.JPEG`.

The layout is checked once, up front, and a wrong one is one DataError line: no train/ or val/,
class folders that differ between train and val, a class folder without images. Class index =
position of the folder name in sorted order (torchvision's ImageFolder rule, and the DALI path
uses the same list). Training: RandomResizedCrop 224 + horizontal flip; validation and test
(the val/ folder, as in the papers): resize 256 + center crop 224; transforms v2 on tensors
decoded by torchvision.io. A file that does not decode is reported with its path.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytorch_lightning as pl
import torch
from torch.utils.data import Dataset
from torchvision.io import ImageReadMode, decode_image
from torchvision.transforms import v2

from .common import DataError, dataset_root, make_loader

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
EXTENSIONS = (".jpeg", ".jpg", ".png")
LAYOUT = "train/<wnid>/*.JPEG and val/<wnid>/*.JPEG"


def _images(folder: Path) -> list[str]:
    return sorted(e.path for e in os.scandir(folder) if e.is_file() and e.name.lower().endswith(EXTENSIONS))


def _classes(split_dir: Path) -> list[str]:
    return sorted(e.name for e in os.scandir(split_dir) if e.is_dir())


def scan(root: Path) -> tuple[list[str], dict[str, list[tuple[str, int]]]]:
    """(class names, {"train": [(path, label)], "val": [...]}) of an ImageFolder tree, or a DataError."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"data.root={root}: no such directory; expected the ImageFolder layout {LAYOUT}")
    missing = [s for s in ("train", "val") if not (root / s).is_dir()]
    if missing:
        raise DataError(f"data.root={root}: no {' and no '.join(m + '/' for m in missing)} folder; "
                        f"expected the ImageFolder layout {LAYOUT}")
    train_cls, val_cls = _classes(root / "train"), _classes(root / "val")
    if not train_cls:
        raise DataError(f"data.root={root}: train/ has no class folders; expected {LAYOUT}")
    if train_cls != val_cls:
        only_t = sorted(set(train_cls) - set(val_cls))
        only_v = sorted(set(val_cls) - set(train_cls))
        raise DataError(f"data.root={root}: class folders differ between train/ ({len(train_cls)}) and val/ "
                        f"({len(val_cls)}): only in train: {', '.join(only_t[:5]) or '-'}"
                        f"{' ...' if len(only_t) > 5 else ''}; only in val: {', '.join(only_v[:5]) or '-'}"
                        f"{' ...' if len(only_v) > 5 else ''}")
    samples = {}
    for s in ("train", "val"):
        samples[s] = []
        for label, c in enumerate(train_cls):
            files = _images(root / s / c)
            if not files:
                raise DataError(f"data.root={root}: class folder {s}/{c} has no images "
                                f"({', '.join(EXTENSIONS)}); every class needs images in train/ and val/")
            samples[s].extend((f, label) for f in files)
    return train_cls, samples


def transforms(train: bool, crop: int = 224, resize: int = 256) -> v2.Compose:
    geo = ([v2.RandomResizedCrop(crop, antialias=True), v2.RandomHorizontalFlip()] if train
           else [v2.Resize(resize, antialias=True), v2.CenterCrop(crop)])
    return v2.Compose([*geo, v2.ToDtype(torch.float32, scale=True), v2.Normalize(MEAN, STD)])


class CorruptImage(DataError):
    """An image that does not decode. DataLoader re-raises a worker's error as
    `type(e)(message + worker traceback)`: keep only the one line that names the file."""

    def __init__(self, msg: str):
        if "Traceback" in msg:
            msg = msg.strip().splitlines()[-1].split(": ", 1)[-1]
        super().__init__(msg)


class ImageList(Dataset):
    """(path, label) pairs decoded by torchvision.io (RGB uint8 CHW), then `transform`."""

    def __init__(self, samples: list[tuple[str, int]], transform):
        self.samples, self.transform = samples, transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        path, label = self.samples[i]
        try:
            img = decode_image(path, mode=ImageReadMode.RGB)
        except Exception as e:
            raise CorruptImage(f"corrupt image {path}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None
        return self.transform(img), label


class ImageNetDataModule(pl.LightningDataModule):
    name = "imagenet"
    in_channels = 3

    def __init__(self, root: str | None = None, batch_size: int = 256, eval_batch_size: int = 250,
                 crop: int = 224, resize: int = 256, shuffle_seed: int = 0,
                 train_subset: int | None = None, test_subset: int | None = None, num_workers: int = 8):
        super().__init__()
        self.root = dataset_root(root, "imagenet")
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size
        self.crop, self.resize, self.image_size = crop, resize, crop
        self.shuffle_seed, self.num_workers = shuffle_seed, num_workers
        self.train_subset, self.test_subset = train_subset, test_subset
        self.classes, self.samples = None, None

    @property
    def num_classes(self) -> int:
        self._scan()
        return len(self.classes)

    def _scan(self) -> None:
        if self.samples is None:
            self.classes, samples = scan(self.root)
            # subsets take every k-th sample so that all classes stay represented
            for key, limit in (("train", self.train_subset), ("val", self.test_subset)):
                if limit and limit < len(samples[key]):
                    step = len(samples[key]) / limit
                    samples[key] = [samples[key][int(i * step)] for i in range(limit)]
            self.samples = samples

    def setup(self, stage: str | None = None) -> None:
        self._scan()

    def train_dataloader(self):
        ds = ImageList(self.samples["train"], transforms(True, self.crop, self.resize))
        return make_loader(ds, self.batch_size, train=True, num_workers=self.num_workers, seed=self.shuffle_seed)

    def _eval(self):
        ds = ImageList(self.samples["val"], transforms(False, self.crop, self.resize))
        return make_loader(ds, self.eval_batch_size, train=False, num_workers=self.num_workers,
                           trainer=self.trainer)

    val_dataloader = test_dataloader = _eval
