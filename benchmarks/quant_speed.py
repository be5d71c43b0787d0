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

The quantizers run fused (fused.py) unless `--impl reference` (the autograd-op reference bodies,
the implementation before the fused one) or `--impl both` (both rows, interleaved);
`--compile true` compiles each quantized layer (`qlayers.compile_quantized`, torch.compile) and
`--compile both` times the eager and the compiled rows in the same rounds; the FP32 row stays
eager (the reference of every ratio). `--threads 1` pins torch to one thread (a shared machine).

    python -m benchmarks.quant_speed [--model lenet5|resnet20] [--rounds 5] [--steps 60]
        [--impl fused|reference|both] [--compile false|true|both] [--threads N]
        [--methods fp32,xnor,...] [--out DIR]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from lightning_modules.compression.quantization.qlayers import QLayer, compile_quantized
from lightning_modules.compression.quantization.quantizers import reference_quantizers
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

    def __init__(self, cfg, dm, reference: bool = False, compiled: bool = False):
        torch.manual_seed(cfg.seed)
        self.label = f"{cfg.method.get('label') or 'FP'} ({cfg.bits.w},{cfg.bits.a},{cfg.bits.g})"
        self.label += " reference" * reference + " compiled" * compiled
        self.reference, self.compiled = reference, compiled
        self.method = build_method(cfg)
        self.net = self.method.apply(build_net(cfg, dm))
        if compiled:
            compile_quantized(self.net)
        self.opt = instantiate(cfg.optimizer)(params=self.net.parameters())
        self.clip = [m for m in self.net.modules() if isinstance(m, QLayer) and m.weight_clip]

    def train_steps(self, x, y, n: int) -> float:
        with reference_quantizers(self.reference):
            return self._train_steps(x, y, n)

    def test_steps(self, x, n: int) -> float:
        with reference_quantizers(self.reference):
            return self._test_steps(x, n)

    def _train_steps(self, x, y, n: int) -> float:
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
    def _test_steps(self, x, n: int) -> float:
        self.net.eval()
        t0 = time.perf_counter()
        for _ in range(n):
            self.net(x)
        return n * len(x) / (time.perf_counter() - t0)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="lenet5", help="a conf/model name: lenet5, resnet20, ...")
    p.add_argument("--batch-size", type=int, default=32, help="training batch (conf/ default 32)")
    p.add_argument("--eval-batch-size", type=int, default=1000)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps", type=int, default=60, help="training steps per method per round")
    p.add_argument("--test-steps", type=int, default=6, help="eval batches per method per round")
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--out", default=str(REPO / "results" / "tables"),
                   help="writes quant_speed[_<model>][_compile].{md,csv,json} here (the model when not "
                        "lenet5, _compile with --compile true|both)")
    p.add_argument("--impl", default="fused", choices=("fused", "reference", "both"),
                   help="quantizers: fused.py, the reference bodies, or both rows")
    p.add_argument("--compile", default="false", choices=("false", "true", "both"),
                   help="torch.compile the quantized layers (compile_quantized), or both rows")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    p.add_argument("--methods", default=None,
                   help="comma-separated method names to time (default: all; fp32 is always first)")
    args = p.parse_args(argv)
    names = {m for m, _ in METHODS}
    chosen = [m for m in (args.methods or "").split(",") if m]
    if any(m not in names for m in chosen):
        p.error(f"--methods={args.methods}: valid names: {', '.join(sorted(names))}")
    if args.threads is not None:
        if args.threads < 1:
            p.error(f"--threads={args.threads}: valid: an integer >= 1")
        torch.set_num_threads(args.threads)

    variants = [(impl == "reference", comp == "true")
                for impl in (("reference", "fused") if args.impl == "both" else (args.impl,))
                for comp in (("false", "true") if args.compile == "both" else (args.compile,))]
    methods = [(m, b) for m, b in METHODS if not chosen or m == "fp32" or m in chosen]
    plan = [(m, b, False, False) for m, b in methods[:1]] + \
        [(m, b, ref, comp) for m, b in methods[1:] for ref, comp in variants]
    hw = hardware_line(hardware())
    print(f"{hw}; load average at the start {open('/proc/loadavg').read().strip()}", flush=True)
    cfgs = [build(args.model, m, b, args.batch_size, args.eval_batch_size) for m, b, _, _ in plan]
    dm = build_datamodule(cfgs[0])
    dm.prepare_data()
    dm.setup("fit")
    x, y = dm.x_train[: args.batch_size], dm.y_train[: args.batch_size]
    x_eval = dm.x_train[: args.eval_batch_size]
    subjects = [Subject(c, dm, ref, comp) for c, (_, _, ref, comp) in zip(cfgs, plan)]
    warmup_s = {}
    for s in subjects:  # warm-up: allocator, autograd graph, first-call costs, compilation
        t0 = time.perf_counter()
        s.train_steps(x, y, args.warmup)
        s.test_steps(x_eval, 1)
        s.train_steps(x, y, 1)  # back to training: a compiled layer's guards see both modes
        warmup_s[s.label] = time.perf_counter() - t0
        print(f"{s.label}: warm-up {warmup_s[s.label]:.1f} s", flush=True)

    train = {s.label: [] for s in subjects}
    test = {s.label: [] for s in subjects}
    for r in range(args.rounds):
        for s in subjects:
            train[s.label].append(s.train_steps(x, y, args.steps))
            test[s.label].append(s.test_steps(x_eval, args.test_steps))
        print(f"round {r + 1}/{args.rounds} done", flush=True)

    ref = subjects[0].label
    rows = []
    for s, (name, bits, reference, compiled) in zip(subjects, plan):
        tr = [a / b for a, b in zip(train[s.label], train[ref])]
        te = [a / b for a, b in zip(test[s.label], test[ref])]
        rows.append({"method": s.label, "name": name, "bits": bits,
                     "impl": "reference" if reference else "fused", "compile": compiled,
                     "warmup_s": warmup_s[s.label],
                     "train_samples_s": statistics.median(train[s.label]),
                     "test_samples_s": statistics.median(test[s.label]),
                     "train_x_fp32": statistics.median(tr), "test_x_fp32": statistics.median(te),
                     "paper_train_x_fp32": PAPER.get(name) if bits in ("w1a1g32", "w1a2g6") and not
                     (reference or compiled) else None})
    df = pd.DataFrame(rows)
    load = open("/proc/loadavg").read().split()[:3]
    shown = pd.DataFrame({
        "Method (W,A,G)": df["method"],
        "Train (img/s)": df["train_samples_s"].map("{:,.0f}".format),
        "Test (img/s)": df["test_samples_s"].map("{:,.0f}".format),
        "Train ×FP32": df["train_x_fp32"].map("{:.2f}×".format),
        "Test ×FP32": df["test_x_fp32"].map("{:.2f}×".format),
        "Warm-up (s)": df["warmup_s"].map("{:.1f}".format),
        "Documents' train ×FP32": df["paper_train_x_fp32"].map(
            lambda v: "-" if pd.isna(v) else f"{v:.2f}×"),
    })
    md = "\n".join([
        "# quant_speed", "",
        f"Quantized training and test throughput relative to FP32: {args.model}, training batch "
        f"{args.batch_size}, test batch {args.eval_batch_size}, median of {args.rounds} interleaved "
        f"rounds ({args.steps} training steps, {args.test_steps} test batches each; "
        f"`python -m benchmarks.quant_speed {' '.join(sys.argv[1:] if argv is None else argv)}`).  ",
        "Quantizers: fused (fused.py) unless the row says reference (the autograd-op bodies); "
        "compiled rows run `compile_quantized` (torch.compile), their warm-up includes the "
        f"compilation ({args.warmup + 1} training steps and one test batch).  ",
        f"Hardware: {hw}; machine load average (1, 5, 15 min) at the end {', '.join(load)} "
        "(ratios are only as good as the machine is quiet).  ", "",
        shown.to_markdown(index=False), ""])
    print(md)
    out = Path(args.out)
    stem = "quant_speed" + ("" if args.model == "lenet5" else f"_{args.model}") + \
        ("" if args.compile == "false" else "_compile")
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.md").write_text(md)
    df.to_csv(out / f"{stem}.csv", index=False)
    (out / f"{stem}.json").write_text(json.dumps(
        {"model": args.model, "batch_size": args.batch_size, "hardware": hw, "loadavg": load,
         "train": train, "test": test, "rows": rows}, indent=2, default=float) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
