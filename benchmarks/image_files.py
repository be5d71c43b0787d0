"""Small datasets in the real on-disk formats, written where CIFAR / ImageNet cannot be downloaded:
by the tests (their fixtures) and by `benchmarks.gpu_check` (the DALI decode check).

CIFAR: torchvision's python pickle batches (`cifar-10-batches-py/data_batch_1..5`, `test_batch`,
`batches.meta`; `cifar-100-python/train`, `test`, `meta`). ImageFolder: `train/<wnid>/*.JPEG`,
`val/<wnid>/*.JPEG`, every image one flat colour so that its identity survives any crop, resize
and flip (the colour of image i is `color(i)`)."""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
from PIL import Image


def write_cifar(root: Path, variant: str = "cifar10", n_train: int = 50, n_test: int = 20, seed: int = 0) -> dict:
    """Pickle batches with random images; labels cycle through the classes. Returns the arrays."""
    rng = np.random.default_rng(seed)
    n_cls = 10 if variant == "cifar10" else 100
    out = {}
    for split, n in (("train", n_train), ("test", n_test)):
        x = rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)
        y = (np.arange(n) % n_cls).tolist()
        out[split] = (x.transpose(0, 2, 3, 1), np.array(y))
    root = Path(root)
    if variant == "cifar10":
        d = root / "cifar-10-batches-py"
        d.mkdir(parents=True, exist_ok=True)
        xs, ys = out["train"]
        for b, part in enumerate(np.array_split(np.arange(n_train), 5), 1):
            _dump(d / f"data_batch_{b}", {"data": xs[part].transpose(0, 3, 1, 2).reshape(len(part), -1),
                                          "labels": ys[part].tolist(), "batch_label": f"training batch {b} of 5"})
        xt, yt = out["test"]
        _dump(d / "test_batch", {"data": xt.transpose(0, 3, 1, 2).reshape(n_test, -1), "labels": yt.tolist()})
        _dump(d / "batches.meta", {"label_names": [f"class{i}" for i in range(10)]})
    else:
        d = root / "cifar-100-python"
        d.mkdir(parents=True, exist_ok=True)
        for split, name in (("train", "train"), ("test", "test")):
            xs, ys = out[split]
            _dump(d / name, {"data": xs.transpose(0, 3, 1, 2).reshape(len(xs), -1), "fine_labels": ys.tolist(),
                             "coarse_labels": (ys // 5).tolist()})
        _dump(d / "meta", {"fine_label_names": [f"class{i}" for i in range(100)]})
    return out


def _dump(path: Path, obj: dict) -> None:
    """Protocol 2, as the originals (Python 2 pickles, read by torchvision with encoding="latin1")."""
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)


def color(i: int) -> tuple[int, int, int]:
    """Flat colour of image i: distinct channel values at least 8 apart, up to 48 images."""
    return (16 + 8 * (i % 28), 16 + 40 * (i // 28), 128)


def write_imagefolder(root: Path, classes=("n01440764", "n01443537"), per_class: int = 4,
                      val_per_class: int = 2, size=(64, 48)) -> dict[str, list[tuple[str, int, int]]]:
    """JPEGs of flat colours; returns {split: [(path, label, image_id)]} in ImageFolder order."""
    root = Path(root)
    out, k = {}, 0
    for split, n in (("train", per_class), ("val", val_per_class)):
        out[split] = []
        for label, c in enumerate(sorted(classes)):
            (root / split / c).mkdir(parents=True, exist_ok=True)
            for j in range(n):
                p = root / split / c / f"{c}_{j}.JPEG"
                Image.new("RGB", size, color(k)).save(p, quality=95)
                out[split].append((str(p), label, k))
                k += 1
    return out


def identify(batch_images, mean, std) -> list[int]:
    """Image ids of a normalised (N, 3, H, W) batch of flat-colour images (see `color`)."""
    import torch
    m = torch.tensor(mean).view(1, 3, 1, 1)
    s = torch.tensor(std).view(1, 3, 1, 1)
    rgb = ((batch_images.float().cpu() * s + m) * 255).mean(dim=(2, 3))
    ids = []
    for r, g, _ in rgb.tolist():
        i, j = round((r - 16) / 8), round((g - 16) / 40)
        ids.append(j * 28 + i)
    return ids
