"""Harness overhead: FP32 training throughput of the harness, a bare LightningModule and a
hand-written PyTorch loop.

Same model (LeNet-300-100), data (Fashion-MNIST training split, in memory, TensorLoader), batch
size, optimizer and schedule, loss, seed and torch threads. Three columns:
- raw: the loop a researcher writes (forward, loss, zero_grad, backward, step, scheduler step);
- bare: a LightningModule with only training_step and configure_optimizers, a Trainer with no
  callbacks, logger, progress bar, metrics, checkpointing or validation: Lightning's own cost;
- harness: what train.py builds (run.build_module, run.build_trainer: the CompressionModule with
  its metrics, divergence check and logging, every callback of conf/callbacks/default.yaml, the
  CSV logger, mid-run checkpoints as configured), validation off (its time is outside the clock).
All three are timed the same way: each step's interval runs from the end of the previous step (or
the epoch's start) to the end of this one, so fetching the batch counts; the first `--warmup`
steps are excluded; samples/s = steady samples / steady seconds. Each round runs every column
at every batch size, the column order rotating from round to round, so drift on a shared machine
hits all three; the ratios are medians over the rounds' ratios. The 1-minute load average is
printed and written with the figures.

    python -m benchmarks.overhead [--batch-sizes 32 128 512] [--rounds 3] [--threads N]
                                  [--steps N] [--table results/tables/overhead.md] [--quick]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from lightning_modules.callbacks.throughput import ThroughputMeter, nvml_check_off
from lightning_modules.loggers import quiet
from lightning_modules.record import hardware, hardware_line
from lightning_modules.run import build_datamodule, build_module, build_net, build_trainer

REPO = Path(__file__).resolve().parents[1]
COLUMNS = ("raw", "bare", "harness")


def config(batch_size: int, steps: int | None, results_dir: str, warmup: int):
    """The harness config for LeNet-300-100, one epoch, no validation (`steps`: batches per epoch),
    the benchmark's warm-up for the harness's meters."""
    overrides = ["model=lenet300", "trainer.max_epochs=1", f"data.batch_size={batch_size}",
                 f"measure.warmup_steps={warmup}",
                 "trainer.limit_val_batches=0", f"results_dir={results_dir}", "deploy=none"]
    if steps:
        overrides.append(f"trainer.limit_train_batches={steps}")
    with initialize_config_dir(str(REPO / "conf"), version_base="1.3"):
        return compose("config", overrides=overrides)


class Clock:
    """Per-step intervals, data loading included, the first `warmup` excluded."""

    def __init__(self, warmup: int):
        self.warmup, self.dts, self.samples, self.t0 = warmup, [], 0, None

    def start(self) -> None:
        self.t0 = time.perf_counter()

    def tick(self, samples: int) -> None:
        now = time.perf_counter()
        self.dts.append(now - self.t0)
        if len(self.dts) > self.warmup:
            self.samples += samples
        self.t0 = now

    def result(self) -> dict:
        steady = self.dts[self.warmup:]
        return {"samples_s": self.samples / sum(steady), "step_ms": 1000 * statistics.median(steady)}


def raw_loop(cfg, dm, warmup: int) -> dict:
    """The minimal loop a researcher would write."""
    torch.manual_seed(cfg.seed)
    net = build_net(cfg, dm)
    opt = instantiate(cfg.optimizer)(params=net.parameters())
    loader = dm.train_dataloader()
    steps = min(len(loader), cfg.trainer.limit_train_batches or len(loader))
    sched = instantiate(cfg.scheduler.factory)(opt, total_steps=steps)
    clock = Clock(warmup)
    net.train()
    clock.start()
    for i, (x, y) in enumerate(loader):
        if i == steps:
            break
        loss = F.cross_entropy(net(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        clock.tick(len(x))
    return clock.result()


class Bare(pl.LightningModule):
    """Lightning with nothing of the harness: the net, the loss, the optimizer and schedule."""

    def __init__(self, net, cfg, steps: int, warmup: int):
        super().__init__()
        self.net, self.cfg, self.steps, self.clock = net, cfg, steps, Clock(warmup)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self.net(x), y)

    def configure_optimizers(self):
        opt = instantiate(self.cfg.optimizer)(params=self.parameters())
        sched = instantiate(self.cfg.scheduler.factory)(opt, total_steps=self.steps)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def on_train_epoch_start(self):
        self.clock.start()

    def on_train_batch_end(self, outputs, batch, batch_idx):
        self.clock.tick(len(batch[0]))


def bare(cfg, dm, warmup: int) -> dict:
    torch.manual_seed(cfg.seed)
    steps = min(len(dm.train_dataloader()), cfg.trainer.limit_train_batches or 10**9)
    module = Bare(build_net(cfg, dm), cfg, steps, warmup)
    trainer = pl.Trainer(accelerator="cpu", devices=1, max_epochs=1, limit_train_batches=steps,
                         callbacks=[], logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False,
                         limit_val_batches=0, num_sanity_val_steps=0)
    trainer.fit(module, datamodule=dm)
    return module.clock.result()


def harness(cfg, dm, warmup: int) -> dict:
    """The harness as train.py builds it (module, trainer, callbacks, logger), validation off."""
    torch.manual_seed(cfg.seed)
    module = build_module(cfg, dm)
    run_dir = Path(cfg.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    trainer = build_trainer(cfg, run_dir, module)
    trainer.fit(module, datamodule=dm)
    meter = next(cb for cb in trainer.callbacks if isinstance(cb, ThroughputMeter))
    f = meter.fields(trainer)  # the record's figures: throughput, loop and model step times
    return {"samples_s": f["train_samples_s"], "step_ms": f["loop_step_ms"], "model_step_ms": f["model_step_ms"]}


RUN = {"raw": raw_loop, "bare": bare, "harness": harness}


def measure(batch_sizes, rounds: int, steps: int | None, warmup: int, tmp: str) -> dict:
    """{batch: {column: [result per round]}}, the rounds interleaved, the order rotating."""
    out = {b: {c: [] for c in COLUMNS} for b in batch_sizes}
    dms = {}
    for r in range(rounds):
        for b in batch_sizes:
            cfg = config(b, steps, tmp, warmup)
            if b not in dms:
                dms[b] = build_datamodule(cfg)
                dms[b].prepare_data()
                dms[b].setup("fit")
            order = COLUMNS[r % 3:] + COLUMNS[:r % 3]
            for col in order:
                out[b][col].append(RUN[col](cfg, dms[b], warmup))
            line = ", ".join(f"{c} {out[b][c][-1]['samples_s']:,.0f}" for c in COLUMNS)
            print(f"round {r + 1} batch {b}: {line} samples/s (load {os.getloadavg()[0]:.2f})", flush=True)
    return out


def summarize(out: dict) -> list[dict]:
    rows = []
    for b, cols in out.items():
        s = {c: [x["samples_s"] for x in cols[c]] for c in COLUMNS}
        ratio = lambda a, z: statistics.median(x / y for x, y in zip(s[a], s[z]))  # noqa: E731
        med = lambda c, k: statistics.median(x[k] for x in cols[c])  # noqa: E731
        model = [x["model_step_ms"] for x in cols["harness"] if x.get("model_step_ms") is not None]
        rows.append({"batch_size": b, **{f"{c}_samples_s": statistics.median(s[c]) for c in COLUMNS},
                     **{f"{c}_step_ms": med(c, "step_ms") for c in COLUMNS},
                     "harness_model_step_ms": statistics.median(model) if model else None,
                     "bare_over_raw": ratio("bare", "raw"), "harness_over_raw": ratio("harness", "raw"),
                     "harness_over_bare": ratio("harness", "bare"),
                     # mean steady ms per step, from the median rates (consistent with the ratios;
                     # a median step is not: on a loaded machine preemption shapes it)
                     **{f"{c}_mean_step_ms": 1000 * b / statistics.median(s[c]) for c in COLUMNS}})
    return rows


def table(rows: list[dict], meta: dict) -> str:
    """results/tables/overhead.md: throughput per column, the ratios, and per step where the time
    goes: Lightning's own (bare - raw) and the harness's own (harness - bare) mean step time."""
    lines = ["# overhead", "",
             f"Harness overhead: LeNet-300-100 on Fashion-MNIST, one epoch{meta['steps_note']} per column, "
             f"median of {meta['rounds']} interleaved rounds (`python -m benchmarks.overhead`, `make overhead`); "
             "steady-state samples/s, data loading included. Step ms: mean steady wall time per step "
             "(batch / samples/s); Lightning's own = bare - raw, the harness's own = harness - bare; model step: "
             "the harness's median forward + backward + optimizer time alone (`model_step_ms`).  ",
             f"Hardware: {meta['hardware']}; machine load average (1 min) {meta['load_start']:.2f} at the start, "
             f"{meta['load_end']:.2f} at the end (ratios are only as good as the machine is quiet).  ", "",
             "| Batch | Raw (img/s) | Bare Lightning (img/s) | Harness (img/s) | Bare / raw | Harness / raw "
             "| Harness / bare | Step ms raw | Lightning's own ms | Harness's own ms | Harness model step ms |",
             "|" + "---:|" * 11]
    for r in rows:
        model = r["harness_model_step_ms"]
        lines.append(
            f"| {r['batch_size']} | {r['raw_samples_s']:,.0f} | {r['bare_samples_s']:,.0f} | "
            f"{r['harness_samples_s']:,.0f} | {r['bare_over_raw']:.2f}× | {r['harness_over_raw']:.2f}× | "
            f"{r['harness_over_bare']:.2f}× | {r['raw_mean_step_ms']:.2f} | "
            f"{r['bare_mean_step_ms'] - r['raw_mean_step_ms']:.2f} | "
            f"{r['harness_mean_step_ms'] - r['bare_mean_step_ms']:.2f} | {'-' if model is None else f'{model:.2f}'} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[32, 128, 512])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=None, help="batches per epoch (default: the whole epoch)")
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--table", default=str(REPO / "results" / "tables" / "overhead.md"),
                   help="the markdown table ('' for none)")
    p.add_argument("--out", default=None, help="also write the figures as JSON here")
    p.add_argument("--quick", action="store_true", help="a smoke run: batch 32, 1 round, 40 steps, "
                   "warm-up 5, no table unless --table is given")
    args = p.parse_args(argv)
    if args.quick:
        given = any(a.startswith("--table") for a in (argv if argv is not None else sys.argv[1:]))
        args.batch_sizes, args.rounds, args.steps, args.warmup = [32], 1, 40, 5
        args.table = args.table if given else ""
    for name in ("rounds", "warmup", "threads", "steps"):
        v = getattr(args, name)
        if v is not None and v < (0 if name == "warmup" else 1):
            p.error(f"--{name}={v}: must be a positive integer")
    if args.steps is not None and args.steps <= args.warmup:
        p.error(f"--steps={args.steps}: must exceed --warmup={args.warmup} (steady steps are measured)")
    if any(b < 1 for b in args.batch_sizes):
        p.error(f"--batch-sizes={args.batch_sizes}: must be positive integers")
    if args.threads:
        torch.set_num_threads(args.threads)
    quiet()
    nvml_check_off()  # as the harness's meter does: all three columns alike (see throughput.py)
    load_start = os.getloadavg()[0]
    print(f"load average (1 min) at start: {load_start:.2f}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        out = measure(args.batch_sizes, args.rounds, args.steps, args.warmup, tmp)
    rows = summarize(out)
    meta = {"rounds": args.rounds, "threads": torch.get_num_threads(), "hardware": hardware_line(hardware()),
            "load_start": load_start, "load_end": os.getloadavg()[0],
            "steps_note": f" ({args.steps} steps)" if args.steps else ""}
    text = table(rows, meta)
    print(text)
    if args.table:
        Path(args.table).parent.mkdir(parents=True, exist_ok=True)
        Path(args.table).write_text(text)
    if args.out:
        Path(args.out).write_text(json.dumps({**meta, "rows": rows, "runs": out}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
