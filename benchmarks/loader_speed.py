"""Images per second of the ImageNet input pipelines on the same ImageFolder: torchvision
(DataLoader workers: decode with torchvision.io, RandomResizedCrop 224 + flip, normalise, batch)
and NVIDIA DALI (file reader, decode, random resized crop, crop-mirror-normalise; on the GPU with
`mixed` decoding when there is one, else on the CPU). Training transforms, batches drained and
counted; the first batches of each pipeline are warm-up and not counted.

    python -m benchmarks.loader_speed --make 512 --workers 2 --threads 2      # a generated folder
    python -m benchmarks.loader_speed --root /data/imagenet --batches 200    # a real one (train/)
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from datamodules.imagenet import ImageList, scan, transforms
from lightning_modules.record import hardware, hardware_line


def make_folder(root: Path, n: int, classes: int = 8, size=(500, 375), seed: int = 0) -> Path:
    """n JPEGs of ImageNet's typical size (500x375, quality 90): smooth noise, so they compress
    and decode like photographs rather than flat colours."""
    from PIL import Image
    rng = np.random.default_rng(seed)
    for split, count in (("train", n), ("val", classes)):
        for i in range(count):
            d = root / split / f"n{i % classes:08d}"
            d.mkdir(parents=True, exist_ok=True)
            small = rng.integers(0, 256, (size[1] // 8, size[0] // 8, 3), dtype=np.uint8)
            Image.fromarray(small).resize(size, Image.BICUBIC).save(d / f"img{i:06d}.JPEG", quality=90)
    return root


def drain(loader, batches: int, warmup: int) -> tuple[float, int]:
    """(images/s over `batches` batches after `warmup` ones, images counted); restarts the loader
    at the end of an epoch."""
    def batches_forever():
        while True:
            yield from loader
    it, n = batches_forever(), 0
    for _ in range(warmup):
        next(it)
    t0 = time.perf_counter()
    for _ in range(batches):
        x, _ = next(it)
        if x.is_cuda:
            torch.cuda.synchronize()
        n += x.shape[0]
    return n / (time.perf_counter() - t0), n


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", help="an ImageFolder (train/<class>/*.JPEG, val/...)")
    p.add_argument("--make", type=int, default=512, help="without --root: generate this many JPEGs")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--batches", type=int, default=8, help="batches counted per pipeline")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--workers", type=int, default=2, help="torchvision DataLoader worker processes")
    p.add_argument("--threads", type=int, default=2, help="DALI worker threads")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "gpu"], help="DALI pipeline device")
    args = p.parse_args(argv)
    tmp = None
    if args.root:
        root = Path(args.root)
    else:
        tmp = tempfile.TemporaryDirectory()
        root = make_folder(Path(tmp.name), args.make)
    _, samples = scan(root)
    torch.set_num_threads(1)
    print(f"{len(samples['train'])} training images under {root}; batch {args.batch}, "
          f"{args.batches} batches counted after {args.warmup} warm-up; {hardware_line(hardware())}")
    rows = []
    from torch.utils.data import DataLoader
    dl = DataLoader(ImageList(samples["train"], transforms(train=True)), batch_size=args.batch, shuffle=True,
                    drop_last=True, num_workers=args.workers, persistent_workers=args.workers > 0)
    ips, n = drain(dl, args.batches, args.warmup)
    rows.append(("torchvision", f"DataLoader, {args.workers} workers, torchvision.io decode, transforms v2", ips, n))
    del dl
    try:
        from datamodules.dali import device_id, imagenet_pipeline, DALILoader
        dev = device_id(args.device, None)
        files, labels = zip(*samples["train"])
        pipe = imagenet_pipeline(list(files), list(labels), train=True, batch_size=args.batch, device_id=dev,
                                 num_threads=args.threads)
        ips, n = drain(DALILoader(pipe, train=True), args.batches, args.warmup)
        where = f"GPU {dev} (mixed decode)" if dev is not None else "CPU (device_id=None)"
        rows.append(("DALI", f"{where}, {args.threads} threads", ips, n))
    except Exception as e:  # DALI missing: report it, keep the torchvision figure
        print(f"DALI: not measured ({type(e).__name__}: {e})", file=sys.stderr)
    print("\n| pipeline | setup | images/s | images counted |\n|---|---|---|---|")
    for name, setup, ips, n in rows:
        print(f"| {name} | {setup} | {ips:,.0f} | {n} |")
    if tmp:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
