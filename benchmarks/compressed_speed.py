"""Test throughput of a suite's compressed models against their Ref, loaded from their real files.

A suite's table measures each run's test throughput inside its own run, at whatever load the
machine had then; on a shared machine those figures are not comparable across rows. This script
reloads every `ok` run of a suite from its exported file (the same loader knowledge distillation
uses for a teacher: the run's hparams.yaml rebuilds the net, its method loads the file), then times
eval-mode forward passes of all of them on one fixed batch of real test images in interleaved
rounds (Ref, compressed, Ref, compressed, ...), so drift hits every net alike; each speed-up is
the median over rounds of (net / its model's Ref in that round). What it shows is what a
physically smaller net buys (filter pruning, group lasso, low rank); masked or codebook nets
(Deep Compression, PQ) decode to dense layers and run at the Ref's speed.

    python -m benchmarks.compressed_speed filter_pruning [--rounds 7] [--batches 5] [--batch-size 1000]

Writes results/tables/<suite>_speed.{md,csv}.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import pandas as pd
import torch

from lightning_modules.earlier_runs import load_run
from lightning_modules.config_check import ConfigError
from lightning_modules.record import hardware, hardware_line, read_record

REPO = Path(__file__).resolve().parents[1]


def runs_of(suite: str, results_dir: Path) -> list[dict]:
    """The suite's ok records with a model file, Ref (method fp32) rows first per model."""
    recs = [r for p in sorted((results_dir / "runs" / suite).glob("*/record.json"))
            if (r := read_record(p)) and r.get("status") == "ok" and r.get("model_file")]
    return sorted(recs, key=lambda r: (r["model"], r["method"] != "fp32", r["run_name"]))


def test_images(n: int) -> torch.Tensor:
    """The first n images of the official Fashion-MNIST test set, normalised as in training."""
    from datamodules.fashion_mnist import FashionMNISTDataModule
    dm = FashionMNISTDataModule(test_subset=n)
    dm.prepare_data()
    dm.setup("test")
    return dm.x_test[:n]


@torch.no_grad()
def images_per_s(net: torch.nn.Module, x: torch.Tensor, batches: int) -> float:
    t0 = time.perf_counter()
    for _ in range(batches):
        net(x)
    return batches * len(x) / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("suite")
    p.add_argument("--results-dir", default=str(REPO / "results"))
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--batches", type=int, default=5, help="eval batches per net per round")
    p.add_argument("--batch-size", type=int, default=1000)
    p.add_argument("--out", default=None, help="default: <results-dir>/tables")
    args = p.parse_args(argv)
    results_dir = Path(args.results_dir)
    recs = runs_of(args.suite, results_dir)
    if not recs:
        print(f"suite={args.suite}: no finished runs with a model file under "
              f"{results_dir / 'runs' / args.suite}", file=sys.stderr)
        return 2
    if not all(r.get("dataset") == "fashion_mnist" for r in recs):
        print(f"suite={args.suite}: only Fashion-MNIST suites are supported (test images)", file=sys.stderr)
        return 2
    try:
        nets = [load_run(str(Path(r["model_file"]).parent), results_dir, key="suite")[0] for r in recs]
    except ConfigError as e:
        print(e, file=sys.stderr)
        return 2
    x = test_images(args.batch_size)
    for net in nets:  # warm-up: allocator and first-call costs
        images_per_s(net, x, 1)
    speed = [[] for _ in nets]
    for r in range(args.rounds):
        for i, net in enumerate(nets):
            speed[i].append(images_per_s(net, x, args.batches))
        print(f"round {r + 1}/{args.rounds} done", flush=True)

    ref = {rec["model"]: i for i, rec in reversed(list(enumerate(recs))) if rec["method"] == "fp32"}
    rows = []
    for i, rec in enumerate(recs):
        j = ref.get(rec["model"])
        ratios = [a / b for a, b in zip(speed[i], speed[j])] if j is not None else []
        rows.append({"run": rec["run_name"], "model": rec["model"], "method": rec["method"],
                     "params": rec.get("params"), "flops": rec.get("flops"),
                     "test_samples_s": statistics.median(speed[i]),
                     "test_x_ref": statistics.median(ratios) if ratios else None,
                     "flops_x_ref": (recs[j]["flops"] / rec["flops"]) if j is not None and rec.get("flops") else None})
    df = pd.DataFrame(rows)
    shown = pd.DataFrame({
        "Run": df["run"], "Params": df["params"].map(lambda v: f"{v:,}" if pd.notna(v) else "-"),
        "FLOPs": df["flops"].map(lambda v: f"{v / 1e6:.2f}M" if pd.notna(v) else "-"),
        "Test (img/s)": df["test_samples_s"].map("{:,.0f}".format),
        "Test ×Ref (measured)": df["test_x_ref"].map(lambda v: f"{v:.2f}×" if pd.notna(v) else "-"),
        "FLOPs ×Ref⁻¹": df["flops_x_ref"].map(lambda v: f"{v:.2f}×" if pd.notna(v) else "-")})
    md = "\n".join([
        f"# {args.suite}: measured test throughput of the exported models", "",
        f"Each ok run of `{args.suite}` reloaded from its model file; eval forward on the first "
        f"{args.batch_size} official test images, {args.batches} batches per net per round, "
        f"median of {args.rounds} interleaved rounds (`python -m benchmarks.compressed_speed "
        f"{args.suite}`).  ",
        f"Hardware: {hardware_line(hardware())}; load average at the end "
        f"{os.getloadavg()[0]:.1f}.  ", "", shown.to_markdown(index=False), ""])
    print(md)
    out = Path(args.out) if args.out else results_dir / "tables"
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{args.suite}_speed.md").write_text(md)
    df.to_csv(out / f"{args.suite}_speed.csv", index=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
