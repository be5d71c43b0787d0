"""Training and test throughput of each quantization method relative to FP32 (same net, same batch).

The documents measured XNOR-Net at 0.36x and DoReFa-Net at 0.37x of FP32 training speed; the
harness's quantizers are vectorised (no Python loops over channels) and aim for at least 0.6x.

Each method is built from its conf/ config exactly as train.py builds it (method.apply on the
model, the method's callbacks' work, e.g. BinaryConnect's weight clipping, done after every step)
and timed on one fixed in-memory batch of real Fashion-MNIST images, so the figure is the
compute of the quantized net, not data loading. A training step is forward + cross-entropy +
backward + Adam step; a test step is an eval-mode forward at the evaluation batch size. Methods
are timed in interleaved rounds (fp32, xnor, dorefa, ..., fp32, xnor, ...) so drift on a shared
machine hits all of them; each ratio is the median over rounds of (method / FP32 of that round).

    python -m benchmarks.quant_speed [--model lenet5] [--rounds 5] [--steps 60] [--out DIR]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from lightning_modules.compression.quantization.qlayers import QLayer
from lightning_modules.record import hardware, hardware_line
from lightning_modules.run import build_datamodule, build_method, build_net

REPO = Path(__file__).resolve().parents[1]

# (method, bits) rows: the seed table's pair first, then the rest of the family at their bits
METHODS = [("fp32", "w32a32g32"), ("xnor", "w1a1g32"), ("dorefa", "w1a2g6"),
           ("binaryconnect", "w1a32g32"), ("binaryconnect_stochastic", "w1a32g32"),
           ("bnn", "w1a1g32"), ("bwn", "w1a32g32"), ("twn", "w2a32g32"), ("ttq", "w2a32g32"),
           ("pow2", "w4a4g32"), ("uniform", "w4a4g32"), ("dorefa", "w2a2g32"),
           ("lqnet", "w2a2g32")]
PAPER = {"xnor": 0.36, "dorefa": 0.37}  # the documents' training-speed ratios (GPU, ImageNet)


def build(model: str, method: str, bits: str, batch_size: int, eval_batch_size: int):
    overrides = [f"model={model}", f"method={method}", f"bits={bits}",
                 f"data.batch_size={batch_size}", f"data.eval_batch_size={eval_batch_size}"]
    with initialize_config_dir(str(REPO / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=overrides)
    return cfg


class Subject:
    """One method's net, optimizer and the per-step work of its callbacks."""

    def __init__(self, cfg, dm):
        torch.manual_seed(cfg.seed)
        self.label = f"{cfg.method.get('label') or 'FP'} ({cfg.bits.w},{cfg.bits.a},{cfg.bits.g})"
        self.method = build_method(cfg)
        self.net = self.method.apply(build_net(cfg, dm))
        self.opt = instantiate(cfg.optimizer)(params=self.net.parameters())
        self.clip = [m for m in self.net.modules() if isinstance(m, QLayer) and m.weight_clip]

    def train_steps(self, x, y, n: int) -> float:
        self.net.train()
        t0 = time.perf_counter()
        for _ in range(n):
            loss = F.cross_entropy(self.net(x), y)
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
            for m in self.clip:
                m.clip_()
        return n * len(x) / (time.perf_counter() - t0)

    @torch.no_grad()
    def test_steps(self, x, n: int) -> float:
        self.net.eval()
        t0 = time.perf_counter()
        for _ in range(n):
            self.net(x)
        return n * len(x) / (time.perf_counter() - t0)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="lenet5")
    p.add_argument("--batch-size", type=int, default=32, help="training batch (conf/ default 32)")
    p.add_argument("--eval-batch-size", type=int, default=1000)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps", type=int, default=60, help="training steps per method per round")
    p.add_argument("--test-steps", type=int, default=6, help="eval batches per method per round")
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--out", default=str(REPO / "results" / "tables"),
                   help="writes quant_speed.{md,csv,json} here")
    args = p.parse_args(argv)

    cfgs = [build(args.model, m, b, args.batch_size, args.eval_batch_size) for m, b in METHODS]
    dm = build_datamodule(cfgs[0])
    dm.prepare_data()
    dm.setup("fit")
    x, y = dm.x_train[: args.batch_size], dm.y_train[: args.batch_size]
    x_eval = dm.x_train[: args.eval_batch_size]
    subjects = [Subject(c, dm) for c in cfgs]
    for s in subjects:  # warm-up: allocator, autograd graph, first-call costs
        s.train_steps(x, y, args.warmup)
        s.test_steps(x_eval, 1)

    train = {s.label: [] for s in subjects}
    test = {s.label: [] for s in subjects}
    for r in range(args.rounds):
        for s in subjects:
            train[s.label].append(s.train_steps(x, y, args.steps))
            test[s.label].append(s.test_steps(x_eval, args.test_steps))
        print(f"round {r + 1}/{args.rounds} done", flush=True)

    ref = subjects[0].label
    rows = []
    for s, (name, bits) in zip(subjects, METHODS):
        tr = [a / b for a, b in zip(train[s.label], train[ref])]
        te = [a / b for a, b in zip(test[s.label], test[ref])]
        rows.append({"method": s.label, "name": name, "bits": bits,
                     "train_samples_s": statistics.median(train[s.label]),
                     "test_samples_s": statistics.median(test[s.label]),
                     "train_x_fp32": statistics.median(tr), "test_x_fp32": statistics.median(te),
                     "paper_train_x_fp32": PAPER.get(name) if bits in ("w1a1g32", "w1a2g6") else None})
    df = pd.DataFrame(rows)
    hw = hardware_line(hardware())
    shown = pd.DataFrame({
        "Method (W,A,G)": df["method"],
        "Train (img/s)": df["train_samples_s"].map("{:,.0f}".format),
        "Test (img/s)": df["test_samples_s"].map("{:,.0f}".format),
        "Train ×FP32": df["train_x_fp32"].map("{:.2f}×".format),
        "Test ×FP32": df["test_x_fp32"].map("{:.2f}×".format),
        "Documents' train ×FP32": df["paper_train_x_fp32"].map(
            lambda v: "-" if pd.isna(v) else f"{v:.2f}×"),
    })
    md = "\n".join([
        "# quant_speed", "",
        f"Quantized training and test throughput relative to FP32: {args.model}, training batch "
        f"{args.batch_size}, test batch {args.eval_batch_size}, median of {args.rounds} interleaved "
        f"rounds ({args.steps} training steps, {args.test_steps} test batches each; "
        "`python -m benchmarks.quant_speed`).  ",
        f"Hardware: {hw}; machine load average at the end {os.getloadavg()[0]:.1f} (ratios are only as good as the machine is quiet).  ", "",
        shown.to_markdown(index=False), ""])
    print(md)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "quant_speed.md").write_text(md)
    df.to_csv(out / "quant_speed.csv", index=False)
    (out / "quant_speed.json").write_text(json.dumps(
        {"model": args.model, "batch_size": args.batch_size, "hardware": hw,
         "train": train, "test": test, "rows": rows}, indent=2, default=float) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
