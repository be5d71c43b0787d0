"""Harness overhead: FP32 training throughput of the harness against a hand-written PyTorch loop.

Same model (LeNet-300-100), data (Fashion-MNIST training split, in memory), batch size, optimizer
and schedule, loss, seed and torch threads. Both are timed the same way: steady-state samples/s
over whole epochs after a warm-up, data loading included. Runs alternate (raw, harness, raw, ...)
so drift on a shared machine hits both; the median ratio harness/raw is reported.

    python -m benchmarks.overhead [--epochs 1] [--repeats 3] [--batch-size 32] [--out FILE]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from lightning_modules.callbacks.throughput import ThroughputMeter
from lightning_modules.precision import precision_plugin
from lightning_modules.record import hardware, hardware_line
from lightning_modules.run import build_datamodule, build_module

REPO = Path(__file__).resolve().parents[1]


def config(batch_size: int | None, epochs: int):
    """The harness config for LeNet-300-100; batch_size None keeps conf/'s data.batch_size."""
    overrides = ["model=lenet300", f"trainer.max_epochs={epochs}"]
    if batch_size:
        overrides.append(f"data.batch_size={batch_size}")
    with initialize_config_dir(str(REPO / "conf"), version_base="1.3"):
        return compose("config", overrides=overrides)


def raw_loop(cfg, dm, warmup: int) -> float:
    """The minimal loop a researcher would write; returns steady-state samples/s."""
    torch.manual_seed(cfg.seed)
    net = instantiate(cfg.model.net, in_channels=1, image_size=28, num_classes=10)
    opt = instantiate(cfg.optimizer)(params=net.parameters())
    loader = dm.train_dataloader()
    steps = len(loader) * cfg.trainer.max_epochs
    sched = instantiate(cfg.scheduler.factory)(opt, total_steps=steps)
    seen, samples, elapsed = 0, 0, 0.0
    net.train()
    for _ in range(cfg.trainer.max_epochs):
        t0 = time.perf_counter()
        for x, y in loader:
            loss = F.cross_entropy(net(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            now = time.perf_counter()
            seen += 1
            if seen > warmup:
                elapsed += now - t0
                samples += len(x)
            t0 = now
    return samples / elapsed


def harness(cfg, dm, warmup: int) -> float:
    """The harness as train.py drives it (same module, meter, logging), minus validation."""
    torch.manual_seed(cfg.seed)
    module = build_module(cfg, dm)
    meter = ThroughputMeter(warmup)
    trainer = pl.Trainer(accelerator="cpu", devices=1, max_epochs=cfg.trainer.max_epochs,
                         plugins=[precision_plugin("32", "cpu")], callbacks=[meter], logger=False,
                         enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, limit_val_batches=0, num_sanity_val_steps=0)
    trainer.fit(module, datamodule=dm)
    return meter.summary()["train_samples_s"]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=None, help="default: data.batch_size of conf/")
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--out", default=None, help="write the figures as JSON here")
    args = p.parse_args(argv)
    cfg = config(args.batch_size, args.epochs)
    dm = build_datamodule(cfg)
    dm.prepare_data()
    dm.setup("fit")
    raw, ours = [], []
    for i in range(args.repeats):
        raw.append(raw_loop(cfg, dm, args.warmup))
        ours.append(harness(cfg, dm, args.warmup))
        print(f"repeat {i + 1}: raw {raw[-1]:,.0f} samples/s, harness {ours[-1]:,.0f} samples/s, "
              f"ratio {ours[-1] / raw[-1]:.3f}", flush=True)
    ratios = [o / r for o, r in zip(ours, raw)]
    result = {"model": "lenet300", "batch_size": cfg.data.batch_size, "epochs": args.epochs,
              "threads": torch.get_num_threads(), "raw_samples_s": raw, "harness_samples_s": ours,
              "ratio_median": statistics.median(ratios), "ratios": ratios,
              "hardware": hardware_line(hardware())}
    print(f"harness/raw = {result['ratio_median']:.3f} (median of {args.repeats}; batch "
          f"{result['batch_size']}, {result['threads']} threads, {result['hardware']})")
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
