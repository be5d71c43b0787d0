"""CIFAR-10 / CIFAR-100 from the python pickle batches.

`data.root` holds `cifar-10-batches-py/` (data_batch_1..5, test_batch, batches.meta) or
`cifar-100-python/` (train, test, meta). Missing files are downloaded (torchvision's download and
md5 check of the archive) where the network allows; otherwise one DataError names the expected
files. The batches are pickles, and a pickle can run code when loaded: they are read by
`read_batch`, an Unpickler that builds numpy arrays, lists, dicts, strings and numbers only (what a
CIFAR batch holds) and refuses anything else in one DataError line naming the file (torchvision's
own loader, plain pickle.load, is not used). Training augmentation is the
standard one (He et al. 2016): random 32x32 crop of the image padded by 4 pixels, horizontal
flip; then per-channel normalisation (transforms v2). Validation is a fixed-seed split of the
training set, the test set the official 10k.
"""
from __future__ import annotations

import codecs
import pickle
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import Dataset, Subset
from torchvision import datasets
from torchvision.datasets.utils import download_and_extract_archive
from torchvision.transforms import v2

from .common import DataError, dataset_root, make_loader

# per-channel mean/std of the 50k training images, pixel values in [0, 1]
STATS = {"cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
         "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762))}
# torchvision's class per variant: only its file names, archive url and md5 (it does not unpickle)
TV_CLASS = {"cifar10": datasets.CIFAR10, "cifar100": datasets.CIFAR100}

# the globals a CIFAR batch's pickle may name: numpy's array reconstruction (numpy.core in the
# original Python 2 files, numpy._core when numpy 2 writes one) and, in protocol-2 pickles written
# by Python 3, bytes as _codecs.encode(str, "latin1"); everything else (os.system, ...) is refused
SAFE_GLOBALS = {("numpy.core.multiarray", "_reconstruct"): np._core.multiarray._reconstruct,
                ("numpy._core.multiarray", "_reconstruct"): np._core.multiarray._reconstruct,
                ("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype,
                ("_codecs", "encode"): codecs.encode}


class ForbiddenGlobal(pickle.UnpicklingError):
    """A pickle names a global outside SAFE_GLOBALS."""


class BatchUnpickler(pickle.Unpickler):
    """pickle.Unpickler that resolves only SAFE_GLOBALS (the Python docs' "restricting globals")."""

    def find_class(self, module: str, name: str):
        try:
            return SAFE_GLOBALS[(module, name)]
        except KeyError:
            raise ForbiddenGlobal(f"it names {module}.{name}") from None


def read_batch(path: Path) -> dict:
    """One CIFAR python batch (a pickled dict) read with BatchUnpickler; DataError (one line naming
    the file) for a pickle that names anything but a numpy array, or that is not a dict."""
    try:
        with open(path, "rb") as f:
            batch = BatchUnpickler(f, encoding="latin1").load()
    except ForbiddenGlobal as e:
        raise DataError(f"{path}: refused: {e}, and a CIFAR batch holds only numpy arrays, lists, dicts, "
                        "strings and numbers (a pickle naming other code could run it); delete the file "
                        "and download it again") from None
    except Exception as e:  # truncated, not a pickle
        raise DataError(f"{path}: unreadable ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
                        "delete it and download again") from None
    if not isinstance(batch, dict):
        raise DataError(f"{path}: a pickled {type(batch).__name__}, not a CIFAR batch (a dict); delete it and "
                        "download again")
    return batch


class CIFARArrays(Dataset):
    """A CIFAR split as torchvision's CIFAR dataset holds it (uint8 HWC images in `.data`, labels in
    `.targets`, class names in `.classes`, an optional `.transform`), read with `read_batch`."""

    def __init__(self, root: Path, variant: str, train: bool):
        tv = TV_CLASS[variant]
        folder = Path(root) / tv.base_folder
        images, self.targets = [], []
        for name, _ in tv.train_list if train else tv.test_list:
            batch = read_batch(folder / name)
            labels = batch.get("labels", batch.get("fine_labels"))
            data = batch.get("data")
            if not isinstance(data, np.ndarray) or labels is None or data.size != len(labels) * 3 * 32 * 32:
                raise DataError(f"{folder / name}: not a CIFAR batch (expected 'data', N x 3072 uint8, and N "
                                "'labels' or 'fine_labels'); delete it and download again")
            images.append(data.reshape(-1, 3, 32, 32))
            self.targets.extend(int(y) for y in labels)
        self.data = np.vstack(images).transpose(0, 2, 3, 1)  # NHWC, as torchvision holds it
        meta = folder / tv.meta["filename"]
        self.classes = read_batch(meta).get(tv.meta["key"])
        if not isinstance(self.classes, list):
            raise DataError(f"{meta}: no {tv.meta['key']} list; delete it and download again")
        self.transform = None

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int):
        img = self.data[i]
        return (self.transform(img) if self.transform else img), self.targets[i]


def expected_files(variant: str) -> tuple[str, list[str]]:
    tv = TV_CLASS[variant]
    return tv.base_folder, [n for n, _ in tv.train_list + tv.test_list] + [tv.meta["filename"]]


def ensure_files(root: Path, variant: str, allow_download: bool = True) -> None:
    folder, files = expected_files(variant)
    missing = [f for f in files if not (root / folder / f).is_file()]
    if not missing:
        return
    if allow_download:
        tv = TV_CLASS[variant]
        try:  # the archive, its md5 checked, unpacked (nothing unpickled here)
            download_and_extract_archive(tv.url, str(root), filename=tv.filename, md5=tv.tgz_md5)
            return
        except Exception:  # no network: fall through to the one-line advice
            pass
    which = "no" if len(missing) == len(files) else f"missing {', '.join(missing)} among the"
    raise DataError(f"data.root={root}: {which} {variant} files under {root / folder}: expected "
                    f"{', '.join(files)} (the python version, https://www.cs.toronto.edu/~kriz/cifar.html)")


def load(root: Path, variant: str, train: bool) -> CIFARArrays:
    """The split's images (uint8 HWC numpy in `.data`) and labels (`.targets`), read with the
    restricted unpickler; DataError (one line naming the file) for a damaged or foreign file."""
    return CIFARArrays(root, variant, train)


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
