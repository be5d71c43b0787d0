"""CIFAR, ImageFolder (ImageNet layout) and DALI datamodules on fixture files in the real on-disk
formats, written by the tests: shapes, labels, class counts, the same label mapping and batches on
the torchvision and the DALI (CPU) paths, and one clear error for each bad layout."""
import shutil

import numpy as np
import pytest
import torch

from datamodules.cifar import STATS, CIFARDataModule, ensure_files
from datamodules.common import DataError
from datamodules.imagenet import MEAN, STD, ImageNetDataModule, scan
from datamodules.synthetic import SyntheticDataModule
from benchmarks.image_files import identify, write_cifar, write_imagefolder

dali = pytest.importorskip("nvidia.dali", reason="NVIDIA DALI is not installed (pip install nvidia-dali-cuda120)")
from datamodules.dali import CIFARDALIDataModule, ImageNetDALIDataModule  # noqa: E402


@pytest.fixture(scope="module")
def cifar_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("cifar")
    arrays = {v: write_cifar(root, v, n_train=60, n_test=20) for v in ("cifar10", "cifar100")}
    return root, arrays


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("imagenet")
    return root, write_imagefolder(root, classes=("n02", "n01", "n03"), per_class=4, val_per_class=2)


@pytest.mark.parametrize("variant,classes", [("cifar10", 10), ("cifar100", 100)])
def test_cifar_pickles_load_with_shapes_labels_and_splits(cifar_root, variant, classes):
    root, arrays = cifar_root
    dm = CIFARDataModule(variant, root=str(root), batch_size=16, eval_batch_size=7, val_size=10,
                         num_workers=0, download=False)
    dm.setup()
    assert dm.num_classes == classes and (dm.in_channels, dm.image_size) == (3, 32)
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (50, 10, 20)
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (16, 3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert len(dm.train_dataloader()) == 3  # 50 // 16, last partial batch dropped
    # evaluation: no augmentation, exactly the file's pixels normalised per channel
    xt, yt = zip(*dm.test_dataloader())
    xt, yt = torch.cat(xt), torch.cat(yt)
    img, lab = arrays[variant]["test"]
    mean, std = (torch.tensor(s).view(1, 3, 1, 1) for s in STATS[variant])
    want = (torch.from_numpy(img).permute(0, 3, 1, 2).float() / 255 - mean) / std
    assert torch.allclose(xt, want, atol=1e-5) and yt.tolist() == lab.tolist()
    # the training split and the validation split are disjoint and together the 60 images
    tr, va = set(dm.train_set.indices), set(dm.val_set.indices)
    assert not tr & va and len(tr | va) == 60


def test_cifar_training_augmentation_is_pad_crop_and_flip(cifar_root):
    root, arrays = cifar_root
    dm = CIFARDataModule("cifar10", root=str(root), batch_size=50, val_size=10, num_workers=0, download=False)
    dm.setup()
    x, _ = dm.train_set[0]
    raw = torch.from_numpy(arrays["cifar10"]["train"][0][dm.train_set.indices[0]]).permute(2, 0, 1).float() / 255
    mean, std = (torch.tensor(s).view(3, 1, 1) for s in STATS["cifar10"])
    pix = x * std + mean  # back to [0, 1]
    padded = torch.nn.functional.pad(raw, (4, 4, 4, 4))
    windows = [padded[:, i:i + 32, j:j + 32] for i in range(9) for j in range(9)]
    windows += [w.flip(-1) for w in windows]
    assert min((w - pix).abs().max().item() for w in windows) < 1e-5  # one of the 162 crops


def test_cifar_missing_files_is_one_line_naming_them(tmp_path):
    with pytest.raises(DataError) as e:
        ensure_files(tmp_path, "cifar10", allow_download=False)
    msg = str(e.value)
    assert "\n" not in msg and "data_batch_1" in msg and "test_batch" in msg and "batches.meta" in msg
    with pytest.raises(DataError, match=r"no cifar100 files under .*cifar-100-python: expected train, test, meta"):
        ensure_files(tmp_path, "cifar100", allow_download=False)


def test_imagefolder_loads_with_sorted_class_mapping(folder):
    root, files = folder
    dm = ImageNetDataModule(root=str(root), batch_size=4, eval_batch_size=4, num_workers=0)
    dm.setup()
    assert dm.classes == ["n01", "n02", "n03"] and dm.num_classes == 3 and dm.image_size == 224
    assert len(dm.samples["train"]) == 12 and len(dm.samples["val"]) == 6
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (4, 3, 224, 224) and x.dtype == torch.float32 and y.dtype == torch.int64
    xs, ys = zip(*dm.val_dataloader())
    ids = identify(torch.cat(xs), MEAN, STD)
    assert ids == [k for _, _, k in files["val"]]  # every val image once, in folder order
    assert torch.cat(ys).tolist() == [lab for _, lab, _ in files["val"]]


def _copy(folder, tmp_path):
    dst = tmp_path / "copy"
    shutil.copytree(folder[0], dst)
    return dst


@pytest.mark.parametrize("breakage,message", [
    ("no_val", r"no val/ folder; expected the ImageFolder layout train/<wnid>/\*.JPEG"),
    ("extra_val_class", r"class folders differ between train/ \(3\) and val/ \(4\): only in train: -; only in val: n09"),
    ("missing_val_class", r"only in train: n03; only in val: -"),
    ("empty_class", r"class folder train/n02 has no images"),
    ("no_root", r"no such directory"),
])
def test_bad_layouts_give_one_clear_line(folder, tmp_path, breakage, message):
    root = _copy(folder, tmp_path)
    if breakage == "no_val":
        shutil.rmtree(root / "val")
    elif breakage == "extra_val_class":
        (root / "val" / "n09").mkdir()
    elif breakage == "missing_val_class":
        shutil.rmtree(root / "val" / "n03")
    elif breakage == "empty_class":
        for f in (root / "train" / "n02").iterdir():
            f.unlink()
    else:
        root = tmp_path / "nowhere"
    with pytest.raises(DataError, match=message) as e:
        scan(root)
    assert "\n" not in str(e.value) and f"data.root={root}" in str(e.value)


@pytest.mark.parametrize("workers", [0, 1])
def test_corrupt_image_is_reported_with_its_path(folder, tmp_path, workers):
    root = _copy(folder, tmp_path)
    bad = root / "val" / "n01" / "broken.JPEG"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    dm = ImageNetDataModule(root=str(root), eval_batch_size=8, num_workers=workers)
    dm.setup()
    with pytest.raises(DataError, match=f"^corrupt image {bad}: ") as e:
        list(dm.val_dataloader())
    assert "\n" not in str(e.value)  # also when a DataLoader worker process raised it


def test_dali_imagenet_cpu_has_the_torchvision_mapping_and_shapes(folder):
    root, files = folder
    kw = dict(root=str(root), batch_size=4, eval_batch_size=4, num_workers=0)
    tv = ImageNetDataModule(**kw)
    dl = ImageNetDALIDataModule(**kw, device="cpu", num_threads=1)
    tv.setup()
    dl.setup()
    assert dl.classes == tv.classes and dl.samples == tv.samples
    train = dl.train_dataloader()
    assert len(train) == len(tv.train_dataloader()) == 3
    label_of = {k: lab for split in files.values() for _, lab, k in split}
    for epoch in range(2):  # the iterator restarts by itself each epoch
        seen = []
        for x, y in train:
            assert x.shape == (4, 3, 224, 224) and x.dtype == torch.float32 and y.dtype == torch.int64
            ids = identify(x, MEAN, STD)
            assert [label_of[i] for i in ids] == y.tolist()  # each image carries its own label
            seen += ids
        assert sorted(seen) == list(range(12))
    # evaluation: same images, labels and (up to resampling filters) pixels as torchvision
    (xd, yd), (xt, yt) = [tuple(torch.cat(t) for t in zip(*d.val_dataloader())) for d in (dl, tv)]
    assert xd.shape == xt.shape == (6, 3, 224, 224) and torch.equal(yd, yt)
    assert identify(xd, MEAN, STD) == identify(xt, MEAN, STD)
    assert (xd - xt).abs().max().item() < 0.1


@pytest.mark.parametrize("split", ["test", "train"])
def test_dali_cifar_cpu_matches_the_torchvision_batches(cifar_root, split):
    root, _ = cifar_root
    kw = dict(root=str(root), batch_size=16, eval_batch_size=7, val_size=10, num_workers=0, download=False)
    tv, dl = CIFARDataModule("cifar10", **kw), CIFARDALIDataModule("cifar10", **kw, device="cpu", num_threads=1)
    tv.setup()
    dl.setup()
    if split == "test":  # no augmentation: identical tensors
        (xd, yd), (xt, yt) = [tuple(torch.cat(t) for t in zip(*d.test_dataloader())) for d in (dl, tv)]
        assert xd.shape == xt.shape == (20, 3, 32, 32) and torch.equal(yd, yt)
        assert torch.allclose(xd, xt, atol=1e-5)
        return
    loader = dl.train_dataloader()
    assert len(loader) == len(tv.train_dataloader()) == 3
    for _ in range(2):
        batches = list(loader)
        assert len(batches) == 3 and all(x.shape == (16, 3, 32, 32) and y.dtype == torch.int64 for x, y in batches)


def test_synthetic_any_shape():
    dm = SyntheticDataModule(channels=1, image_size=17, num_classes=5, batch_size=3, num_batches=4, pool=2)
    batches = list(dm.train_dataloader())
    assert len(batches) == 4 and batches[0][0].shape == (3, 1, 17, 17)
    assert int(batches[0][1].max()) < 5 and torch.equal(batches[0][0], batches[2][0])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (DALI `mixed` JPEG decoding)")
def test_dali_imagenet_gpu_decodes_the_same_images(folder):
    root, _ = folder
    kw = dict(root=str(root), batch_size=4, eval_batch_size=4, num_workers=0, num_threads=1)
    cpu, gpu = ImageNetDALIDataModule(**kw, device="cpu"), ImageNetDALIDataModule(**kw, device="gpu")
    cpu.setup()
    gpu.setup()
    (xc, yc), (xg, yg) = [tuple(torch.cat(t) for t in zip(*d.val_dataloader())) for d in (cpu, gpu)]
    assert xg.is_cuda and yg.is_cuda and torch.equal(yc, yg.cpu())
    assert identify(xg, MEAN, STD) == identify(xc, MEAN, STD)
    assert (xg.cpu() - xc).abs().max().item() < 0.1  # nvJPEG vs libjpeg-turbo: rounding differences only
