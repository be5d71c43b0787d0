"""Fashion-MNIST datamodule and the in-memory batch loader."""
import gzip
import struct

import numpy as np
import pytest
import torch

from datamodules.fashion_mnist import RAW_FILES, DataError, FashionMNISTDataModule, ensure_raw
from datamodules.tensor_loader import TensorLoader


def _idx_images(n, rows=28, cols=28, seed=0):
    data = np.random.default_rng(seed).integers(0, 256, (n, rows, cols), dtype=np.uint8)
    return struct.pack(">IIII", 0x0803, n, rows, cols) + data.tobytes(), data


def _idx_labels(n, seed=0):
    labels = np.random.default_rng(seed).integers(0, 10, n, dtype=np.uint8)
    return struct.pack(">II", 0x0801, n) + labels.tobytes(), labels


def _fake_debian(tmp_path, n_train=60, n_test=20):
    deb = tmp_path / "deb"
    deb.mkdir()
    img, arr = _idx_images(n_train)
    parts = {"train-images-idx3-ubyte": img, "train-labels-idx1-ubyte": _idx_labels(n_train)[0],
             "t10k-images-idx3-ubyte": _idx_images(n_test, seed=1)[0],
             "t10k-labels-idx1-ubyte": _idx_labels(n_test, seed=1)[0]}
    for name, blob in parts.items():
        with gzip.open(deb / f"{name}.gz", "wb") as f:
            f.write(blob)
    return deb, arr


def test_raw_files_come_from_the_debian_package_layout(tmp_path):
    deb, arr = _fake_debian(tmp_path)
    raw = ensure_raw(tmp_path / "root", debian_dir=deb, allow_download=False)
    assert sorted(p.name for p in raw.iterdir()) == sorted(RAW_FILES)
    from torchvision.datasets import FashionMNIST
    ds = FashionMNIST(str(tmp_path / "root"), train=True)
    assert torch.equal(ds.data, torch.from_numpy(arr))


def test_missing_everywhere_is_one_line_naming_the_fixes(tmp_path):
    with pytest.raises(DataError) as e:
        ensure_raw(tmp_path / "nowhere", debian_dir=tmp_path / "nodeb", allow_download=False)
    msg = str(e.value)
    assert "\n" not in msg and "dataset-fashion-mnist" in msg and "download" in msg


def test_corrupt_file_is_reported_with_its_folder(tmp_path):
    deb, _ = _fake_debian(tmp_path)
    root = tmp_path / "root"
    raw = ensure_raw(root, debian_dir=deb, allow_download=False)
    (raw / "train-images-idx3-ubyte").write_bytes(b"\x00\x00\x08\x03garbage")
    dm = FashionMNISTDataModule(root=str(root), val_size=10)
    with pytest.raises(DataError, match="unreadable"):
        dm.setup()


def test_real_splits_are_fixed_and_normalised(fmnist):
    assert (len(fmnist.x_train), len(fmnist.x_val), len(fmnist.x_test)) == (55_000, 5_000, 10_000)
    assert fmnist.x_train.dtype == torch.float32 and fmnist.x_train.shape[1:] == (1, 28, 28)
    allx = torch.cat([fmnist.x_train, fmnist.x_val])
    assert abs(allx.mean().item()) < 0.01 and abs(allx.std().item() - 1) < 0.01
    assert torch.bincount(fmnist.y_test).tolist() == [1000] * 10  # the official test set
    again = FashionMNISTDataModule(train_subset=100, test_subset=50)
    again.setup()
    assert torch.equal(again.x_val, fmnist.x_val)  # same seed, same split
    assert torch.equal(again.x_train, fmnist.x_train[:100]) and len(again.x_test) == 50


def test_loader_batches_without_per_sample_work():
    x, y = torch.arange(10).float().unsqueeze(1), torch.arange(10)
    batches = list(TensorLoader(x, y, 4))
    assert [len(b[0]) for b in batches] == [4, 4, 2] and len(TensorLoader(x, y, 4)) == 3
    assert torch.equal(torch.cat([b[1] for b in batches]), y)
    dl = TensorLoader(x, y, 4, shuffle=True, drop_last=True, seed=1)
    e0, e1 = [torch.cat([b[1] for b in dl]) for _ in range(2)]
    assert len(e0) == 8 and not torch.equal(e0, e1)  # reshuffled each epoch
    assert torch.equal(x[e0].squeeze(1).long(), e0)  # pairs stay aligned


@pytest.mark.parametrize("shuffle", [False, True])
def test_ranks_read_disjoint_shards_of_equal_training_length(shuffle):
    x, y = torch.arange(103).float().unsqueeze(1), torch.arange(103)
    loaders = [TensorLoader(x, y, 8, shuffle=shuffle, drop_last=shuffle, seed=3, rank=r, world_size=3)
               for r in range(3)]
    seen = [torch.cat([b[1] for b in dl]) for dl in loaders]
    flat = torch.cat(seen)
    assert len(set(flat.tolist())) == len(flat)  # no sample on two ranks
    if shuffle:
        assert len({len(dl) for dl in loaders}) == 1  # same number of steps on every rank
    else:
        assert sorted(flat.tolist()) == list(range(103))  # evaluation covers everything once
