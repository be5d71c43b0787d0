"""NVIDIA DALI pipelines for ImageNet and CIFAR, selected by config (data=imagenet_dali,
data=cifar10_dali); the same batches as the torchvision path: (float32 NCHW normalised, int64 labels).

ImageNet: file reader (the list of files and labels the torchvision path uses, so the label
mapping is identical) -> JPEG decoding (`mixed`: on the GPU, nvJPEG) -> random resized crop 224
+ random mirror (training) or resize 256 + center crop 224 (evaluation) -> crop-mirror-normalise.
CIFAR: the pickle batches as cifar.py reads them (its restricted unpickler), fed by an external
source (each rank its shard), pad 4 + random crop 32 + mirror + normalise in crop-mirror-normalise.

On a machine without a GPU (or `device: cpu`) the same pipeline runs on the CPU
(`device_id=None`), which is how CI tests it. Under DDP each rank reads its own shard
(shard_id = global rank, num_shards = world size); the training epoch has the same number of
steps on every rank (floor(N / world) samples each, last partial batch dropped).
"""
from __future__ import annotations

import math

import numpy as np
import pytorch_lightning as pl
import torch

from . import cifar, imagenet
from .common import DataError, rank_world

try:
    from nvidia.dali import fn, pipeline_def, types
    from nvidia.dali.plugin.pytorch import DALIClassificationIterator, LastBatchPolicy
    DALI_ERROR = None
except ImportError as e:  # pragma: no cover - DALI is a pinned dependency on Linux
    DALI_ERROR = f"{type(e).__name__}: {e}"


def require_dali() -> None:
    if DALI_ERROR is not None:
        raise DataError(f"data=*_dali needs NVIDIA DALI (pip install -c constraints.txt nvidia-dali-cuda120; "
                        f"Linux x86_64/aarch64 only): {DALI_ERROR}")


def device_id(device: str, trainer) -> int | None:
    """CUDA device of this rank for `device` = auto | gpu | cpu; None = the CPU pipeline."""
    if device not in ("auto", "gpu", "cpu"):
        raise DataError(f"data.device={device}: valid: auto, gpu, cpu")
    if device == "cpu" or (device == "auto" and not torch.cuda.is_available()):
        return None
    if not torch.cuda.is_available():
        raise DataError("data.device=gpu: no CUDA device on this machine; use data.device=cpu or auto")
    if trainer is not None and trainer.strategy.root_device.type == "cuda":
        return trainer.strategy.root_device.index or 0
    return torch.cuda.current_device()


class DALILoader:
    """A DALI pipeline as an iterable of (images, labels) batches with a length (steps per epoch)."""

    def __init__(self, pipe, train: bool, steps: int | None = None):
        pipe.build()
        policy = LastBatchPolicy.DROP if train else LastBatchPolicy.PARTIAL
        if steps is None:  # a file reader: the iterator knows the shard sizes
            self.it = DALIClassificationIterator(pipe, reader_name="Reader", last_batch_policy=policy,
                                                 auto_reset=True)
            self.steps = len(self.it)
        else:  # an external source ends each epoch itself (StopIteration)
            self.it = DALIClassificationIterator(pipe, last_batch_policy=LastBatchPolicy.PARTIAL,
                                                 auto_reset=True)
            self.steps = steps

    def __len__(self) -> int:
        return self.steps

    def __iter__(self):
        for out in self.it:
            d = out[0]
            yield d["data"], d["label"].reshape(-1).long()


# --------------------------------------------------------------------------------------- ImageNet
def imagenet_pipeline(files: list[str], labels: list[int], *, train: bool, batch_size: int,
                      device_id: int | None, shard_id: int = 0, num_shards: int = 1, seed: int = 0,
                      num_threads: int = 4, crop: int = 224, resize: int = 256):
    require_dali()
    mean = [255 * m for m in imagenet.MEAN]
    std = [255 * s for s in imagenet.STD]

    @pipeline_def(batch_size=batch_size, num_threads=num_threads, device_id=device_id, seed=seed + shard_id,
                  exec_dynamic=True)
    def pipe():
        jpegs, label = fn.readers.file(files=files, labels=labels, random_shuffle=train, shard_id=shard_id,
                                       num_shards=num_shards, pad_last_batch=True, name="Reader")
        images = fn.decoders.image(jpegs, device="mixed" if device_id is not None else "cpu",
                                   output_type=types.RGB)
        if train:
            images = fn.random_resized_crop(images, size=[crop, crop], random_area=[0.08, 1.0],
                                            random_aspect_ratio=[3 / 4, 4 / 3], antialias=True)
            mirror = fn.random.coin_flip(probability=0.5)
        else:
            images = fn.resize(images, resize_shorter=resize, antialias=True)
            mirror = 0
        images = fn.crop_mirror_normalize(images, dtype=types.FLOAT, output_layout="CHW", crop=[crop, crop],
                                          mean=mean, std=std, mirror=mirror)
        return images, label.gpu() if device_id is not None else label

    return pipe()


class ImageNetDALIDataModule(imagenet.ImageNetDataModule):
    """The ImageFolder layout, checks and label mapping of ImageNetDataModule, batches from DALI."""
    name = "imagenet"

    def __init__(self, *args, device: str = "auto", num_threads: int = 4, **kw):
        super().__init__(*args, **kw)
        self.device, self.num_threads = device, num_threads
        require_dali()

    def _loader(self, split: str, train: bool, batch_size: int) -> DALILoader:
        rank, world = rank_world(self.trainer)
        files, labels = zip(*self.samples[split])
        pipe = imagenet_pipeline(list(files), list(labels), train=train, batch_size=batch_size,
                                 device_id=device_id(self.device, self.trainer), shard_id=rank,
                                 num_shards=world, seed=self.shuffle_seed, num_threads=self.num_threads,
                                 crop=self.crop, resize=self.resize)
        return DALILoader(pipe, train)

    def train_dataloader(self):
        return self._loader("train", True, self.batch_size)

    def _eval(self):
        return self._loader("val", False, self.eval_batch_size)

    val_dataloader = test_dataloader = _eval


# ------------------------------------------------------------------------------------------ CIFAR
class ShardSource:
    """Batches of (uint8 HWC images, int32 labels) of this rank's shard, for fn.external_source.

    Training: a fresh permutation per epoch (seed + epoch), floor(N / world) samples per rank,
    the last partial batch dropped, images zero-padded by `pad` pixels. Evaluation: samples
    rank::world in order (together the ranks cover the set exactly once), partial last batch kept."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, batch_size: int, *, train: bool,
                 rank: int = 0, world: int = 1, seed: int = 0, pad: int = 4):
        images = np.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0))) if train and pad else images
        self.images = np.ascontiguousarray(images)  # DALI takes densely packed HWC samples only
        self.labels = labels.astype(np.int32)
        self.batch_size, self.train, self.rank, self.world, self.seed = batch_size, train, rank, world, seed
        self.epoch, self.order, self.pos = 0, None, 0

    def shard_size(self) -> int:
        n = len(self.labels)
        return n // self.world if self.train else len(range(self.rank, n, self.world))

    def __len__(self) -> int:
        m = self.shard_size()
        return m // self.batch_size if self.train else math.ceil(m / self.batch_size)

    def __iter__(self):
        n = len(self.labels)
        if self.train:
            perm = np.random.default_rng(self.seed + self.epoch).permutation(n)
            self.order = perm[self.rank::self.world][: self.shard_size()]
            self.epoch += 1
        else:
            self.order = np.arange(self.rank, n, self.world)
        self.pos = 0
        return self

    def __next__(self):
        if self.pos >= len(self) * self.batch_size or self.pos >= len(self.order):
            raise StopIteration
        idx = self.order[self.pos:self.pos + self.batch_size]
        self.pos += self.batch_size
        return list(self.images[idx]), list(self.labels[idx, None])


def cifar_pipeline(source: ShardSource, *, train: bool, mean, std, device_id: int | None,
                   num_threads: int = 2, seed: int = 0):
    require_dali()

    @pipeline_def(batch_size=source.batch_size, num_threads=num_threads, device_id=device_id, seed=seed,
                  exec_dynamic=True)
    def pipe():
        images, label = fn.external_source(source=source, num_outputs=2, batch=True, cycle="raise", layout=["HWC", ""],
                                           dtype=[types.UINT8, types.INT32])
        if device_id is not None:
            images = images.gpu()
        kw = {}
        if train:  # a 32x32 window anywhere in the padded 40x40 image, and a random mirror
            kw = dict(crop=[32, 32], crop_pos_x=fn.random.uniform(range=[0.0, 1.0]),
                      crop_pos_y=fn.random.uniform(range=[0.0, 1.0]), mirror=fn.random.coin_flip(probability=0.5))
        images = fn.crop_mirror_normalize(images, dtype=types.FLOAT, output_layout="CHW",
                                          mean=[255 * m for m in mean], std=[255 * s for s in std], **kw)
        return images, label.gpu() if device_id is not None else label

    return pipe()


class CIFARDALIDataModule(cifar.CIFARDataModule):
    """CIFARDataModule's files, split and normalisation; batches from a DALI pipeline."""

    def __init__(self, *args, device: str = "auto", num_threads: int = 2, **kw):
        super().__init__(*args, **kw)
        self.device, self.dali_threads = device, num_threads
        require_dali()

    def _loader(self, split: str, train: bool, batch_size: int) -> DALILoader:
        rank, world = rank_world(self.trainer)
        images, labels = self.arrays(split)
        src = ShardSource(images, labels, batch_size, train=train, rank=rank, world=world, seed=self.shuffle_seed)
        mean, std = cifar.STATS[self.variant]
        pipe = cifar_pipeline(src, train=train, mean=mean, std=std, device_id=device_id(self.device, self.trainer),
                              num_threads=self.dali_threads, seed=self.shuffle_seed + rank)
        return DALILoader(pipe, train, steps=len(src))

    def train_dataloader(self):
        return self._loader("train", True, self.batch_size)

    def val_dataloader(self):
        return self._loader("val", False, self.eval_batch_size)

    def test_dataloader(self):
        return self._loader("test", False, self.eval_batch_size)
