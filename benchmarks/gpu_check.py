"""`make gpu-check`: every GPU path of the harness once, on one GPU, within 10 minutes.

One line per check, `PASS|FAIL|SKIP  <check>  <figures>`, then a summary; exit status 1 if any
check failed. Each check runs in its own process (a per-check timeout that also ends what the
check started; the 600 s budget is shared), through the harness where it has the path
(`lightning_modules.run.run` / train.py on `data=synthetic`, the DALI datamodule, the deploy
step's ONNX export and session). A `Probe` callback joins those runs with one `+callbacks.probe`
override and writes what the checks read into the run's record (`probe_*`).

    amp_fp16_scaler   precision=16-mixed on ResNet-20 (CIFAR-shaped synthetic data): computes in
                      float16; the harness's GradScaler is live: an inf gradient forced at one step
                      halves the scale and skips that step (weights unchanged), and the scale
                      doubles after `growth_interval` clean steps (set short by the probe)
    bf16              precision=bf16-mixed: computes in bfloat16, no loss scale, finite losses
    dali_mixed        data=imagenet_dali's pipeline on JPEGs written here: `mixed` (nvJPEG) decoding
                      gives the images and labels of the CPU decoder; images/s of both
    ddp_nccl          train.py trainer=ddp on every GPU (world size 1 with one): the process group's
                      backend is NCCL, rank 0 writes the record
    deploy_cuda       the deploy step's ONNX export of ResNet-20 in ONNX Runtime's CUDA execution
                      provider (SKIP where onnxruntime has none): the logits of the torch net
    resnet50_fp16     the documents' rows 1-3 (FP32, FP16 with and without loss scaling): ResNet-50
                      training samples/s at batch 256 on ImageNet-shaped synthetic data, warm-up
                      excluded; FP16 / FP32 ratios
    compile_resnet20  ResNet-20 for a fixed number of steps with and without torch.compile: the same
                      losses, samples/s of both

`--cpu` is a dry run of the same code on the CPU (tiny sizes, few steps; the CUDA-only parts are
said in the figures or SKIPped with the reason); it writes gpu_check_cpu.{md,json}, a GPU run
writes results/tables/gpu_check.{md,json}.

    python -m benchmarks.gpu_check [--cpu] [--quick] [--only a,b] [--budget 600] [--results-dir results]
"""
from __future__ import annotations

import argparse
import gc
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytorch_lightning as pl
import torch

from lightning_modules.callbacks.record_fields import RecordFields
from lightning_modules.precision import loss_scale

REPO = Path(__file__).resolve().parents[1]
MARK = "GPU_CHECK_RESULT "  # a check's process ends its output with this and its result as JSON
PROBE = "+callbacks.probe._target_=benchmarks.gpu_check.Probe"


class Skip(Exception):
    """The check cannot run on this machine; the message says why and how to make it run."""


@dataclass
class Ctx:
    cpu: bool    # --cpu: the dry run
    quick: bool  # --quick: the smallest sizes
    work: Path   # this check's scratch folder

    @property
    def accelerator(self) -> str:
        return "cpu" if self.cpu else "gpu"


# --- the probe: what a harness run tells the checks ---------------------------------------------

class Probe(RecordFields):
    """Per-step loss and loss scale, the process group's backend; optionally an inf gradient at
    batch `overflow_step`, a GradScaler growth interval, torch.compile of the net for the fit."""

    def __init__(self, overflow_step: int | None = None, growth_interval: int | None = None,
                 compile_backend: str | None = None):
        self.overflow_step, self.growth_interval, self.compile_backend = overflow_step, growth_interval, compile_backend
        self.losses, self.scales, self.batch, self.before, self.skipped = [], [], -1, None, None
        self.backend, self.t0, self.first_step_s = None, 0.0, None

    def on_fit_start(self, trainer, pl_module):
        scaler = getattr(trainer.precision_plugin, "scaler", None)
        if self.growth_interval and scaler is not None:
            scaler.set_growth_interval(self.growth_interval)
        self.scales = [loss_scale(trainer.precision_plugin)]
        dist = torch.distributed
        self.backend = dist.get_backend() if dist.is_available() and dist.is_initialized() else None
        if self.compile_backend:
            pl_module.net = torch.compile(pl_module.net, backend=self.compile_backend)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.batch, self.t0 = batch_idx, time.perf_counter()
        if batch_idx == self.overflow_step:
            self.before = torch.cat([p.detach().flatten() for p in pl_module.parameters()])

    def on_after_backward(self, trainer, pl_module):  # the gradients are still scaled here
        if self.batch == self.overflow_step:
            next(p for p in pl_module.parameters() if p.grad is not None).grad.view(-1)[0] = math.inf

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.losses.append(float(outputs["loss"]))  # synchronizes: the step is done
        if self.first_step_s is None:
            self.first_step_s = time.perf_counter() - self.t0  # with torch.compile: the compilation
        self.scales.append(loss_scale(trainer.precision_plugin))
        if self.before is not None:
            after = torch.cat([p.detach().flatten() for p in pl_module.parameters()])
            self.skipped, self.before = bool(torch.equal(self.before, after)), None

    def on_fit_end(self, trainer, pl_module):
        if self.compile_backend:  # export and checkpoints see the plain net
            pl_module.net = pl_module.net._orig_mod

    def fields(self, trainer) -> dict:
        return {"probe_losses": self.losses, "probe_scales": self.scales, "probe_skipped": self.skipped,
                "probe_dist_backend": self.backend, "probe_first_step_s": self.first_step_s}


def probe(**kw) -> list[str]:
    """The overrides that add a Probe (with `kw`) to a run's callbacks."""
    return [PROBE, *(f"+callbacks.probe.{k}={v}" for k, v in kw.items())]


def follows_gradscaler(scales: list[float], growth_interval: int, backoff: float = 0.5,
                       growth: float = 2.0) -> tuple[bool, int]:
    """Whether a loss-scale trajectory (before the first step, then after each) obeys GradScaler's
    update rule: a step either backs off (overflow) or keeps the scale, and it grows after
    `growth_interval` consecutive clean steps. Returns (obeys, number of growths)."""
    tracker, growths = 0, 0
    for before, after in zip(scales, scales[1:]):
        if after == before * backoff:
            tracker = 0
        elif tracker + 1 == growth_interval:
            if after != before * growth:
                return False, growths
            tracker, growths = 0, growths + 1
        elif after == before:
            tracker += 1
        else:
            return False, growths
    return True, growths


# --- running the harness ------------------------------------------------------------------------

def harness_run(ctx: Ctx, name: str, overrides: list[str]) -> dict:
    """One run as train.py runs it (lightning_modules.run.run), in this process; its record."""
    from hydra import compose, initialize_config_dir

    from lightning_modules.config_check import normalize_overrides
    from lightning_modules.run import run
    overrides = [*overrides, f"trainer={ctx.accelerator}", "deploy=none", "scheduler=none",
                 f"results_dir={ctx.work / name}"]
    with initialize_config_dir(str(REPO / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=normalize_overrides(overrides))
    record = run(cfg)
    if ctx.accelerator == "gpu":  # the next run of this process starts with the memory free
        gc.collect()
        torch.cuda.empty_cache()
    return record


def train_py(ctx: Ctx, name: str, overrides: list[str], timeout: float = 600) -> dict:
    """One run of train.py as a user starts it; its record (or the error's last line)."""
    results = ctx.work / name
    p = subprocess.run([sys.executable, str(REPO / "train.py"), *overrides, f"results_dir={results}"],
                       cwd=REPO, capture_output=True, text=True, timeout=timeout)
    records = list(results.rglob("record.json"))
    if p.returncode != 0 or len(records) != 1:
        lines = (p.stderr + p.stdout).strip().splitlines() or ["(no output)"]
        raise RuntimeError(f"train.py exited {p.returncode}: {lines[-1]}")
    return json.loads(records[0].read_text())


def cifar_like(ctx: Ctx, steps: int) -> list[str]:
    """ResNet-20 on CIFAR-shaped synthetic data, `steps` training steps."""
    batch = 4 if ctx.cpu and ctx.quick else 16 if ctx.cpu else 128
    return ["model=resnet20", "data=synthetic", "data.image_size=32", "data.num_classes=10",
            f"data.batch_size={batch}", f"data.eval_batch_size={batch}", f"data.num_batches={steps}",
            "data.eval_batches=2", "trainer.limit_val_batches=1", f"measure.warmup_steps={min(5, steps // 2)}"]


def runs(values: list[float]) -> str:
    """`65536 32768x3 16384x5`: a sequence with its repeats counted."""
    out: list[list] = []
    for v in values:
        if out and out[-1][0] == v:
            out[-1][1] += 1
        else:
            out.append([v, 1])
    return " ".join(f"{v:g}" + (f"x{n}" if n > 1 else "") for v, n in out)


def rate(record: dict) -> str:
    s = record.get("train_samples_s")
    return "n/a samples/s" if s is None else f"{s:,.0f} samples/s" + ("" if record.get("train_steady") else " (incl. warm-up)")


# --- the checks: each returns (ok, one line of figures) or raises Skip ---------------------------

def amp_fp16_scaler(ctx: Ctx) -> tuple[bool, str]:
    k, g = 3, 5  # an inf gradient at batch k; the scale grows after g clean steps (GradScaler: 2000)
    rec = harness_run(ctx, "amp", [*cifar_like(ctx, k + 1 + 3 * g), "precision=16-mixed",
                                   *probe(overflow_step=k, growth_interval=g)])
    s = rec["probe_scales"]
    obeys, growths = follows_gradscaler(s, g)
    backed_off = s[k + 1] == s[k] / 2
    ok = (rec["status"] == "ok" and rec["compute_dtype"] == "float16" and backed_off
          and rec["probe_skipped"] is True and obeys and growths >= 1 and rec["loss_scale"] == s[-1])
    return ok, (f"compute {rec['compute_dtype']}; scale {s[k]:g} -> {s[k + 1]:g} at the forced inf gradient "
                f"(step skipped: {rec['probe_skipped']}), {growths} growth(s) after {g} clean steps, "
                f"GradScaler's rule {'kept' if obeys else 'BROKEN'}: {runs(s)}; {rate(rec)}")


def bf16(ctx: Ctx) -> tuple[bool, str]:
    if not ctx.cpu and not torch.cuda.is_bf16_supported():
        raise Skip(f"{torch.cuda.get_device_name(0)} has no bfloat16 support (Ampere or newer)")
    rec = harness_run(ctx, "bf16", [*cifar_like(ctx, 12), "precision=bf16-mixed", *probe()])
    finite = all(math.isfinite(x) for x in rec["probe_losses"])
    ok = rec["status"] == "ok" and rec["compute_dtype"] == "bfloat16" and rec["loss_scale"] is None and finite
    return ok, (f"compute {rec['compute_dtype']}, loss scale {rec['loss_scale']}, losses finite: {finite} "
                f"({rec['probe_losses'][0]:.3f} -> {rec['probe_losses'][-1]:.3f}); {rate(rec)}")


def dali_mixed(ctx: Ctx) -> tuple[bool, str]:
    from datamodules.dali import DALI_ERROR
    if DALI_ERROR is not None:
        raise Skip(f"NVIDIA DALI not importable ({DALI_ERROR}); `.venv/bin/pip install -c constraints.txt "
                   f"nvidia-dali-cuda120` (Linux x86_64/aarch64)")
    from datamodules.dali import ImageNetDALIDataModule
    from datamodules.imagenet import MEAN, STD
    from benchmarks.image_files import identify, write_imagefolder  # flat-colour JPEGs, their ids
    n = 20  # validation images per class (2 classes; the fixture's colours allow 48 images in all)
    written = write_imagefolder(ctx.work / "imagenet", per_class=4, val_per_class=n, size=(500, 375))["val"]
    want = sorted((i, c) for _, c, i in written)  # (image id, label); the loader's order is the file names'
    out, figures = {}, []
    for device in ("cpu",) if ctx.cpu else ("cpu", "gpu"):
        dm = ImageNetDALIDataModule(root=str(ctx.work / "imagenet"), batch_size=8, eval_batch_size=8,
                                    num_workers=0, num_threads=2, device=device)
        dm.setup()
        loader = dm.val_dataloader()
        list(loader)  # warm-up: the pipeline's first pass
        t = time.perf_counter()
        xs, ys = zip(*list(loader))
        if device == "gpu":
            torch.cuda.synchronize()
        dt = time.perf_counter() - t
        x, y = torch.cat(xs), torch.cat(ys)
        out[device] = (x.float().cpu(), y.cpu(), x.is_cuda)
        figures.append(f"{'mixed (nvJPEG)' if device == 'gpu' else 'cpu'} {len(y) / dt:,.0f} img/s")
    ok = as_written = all(sorted(zip(identify(x, MEAN, STD), y.tolist())) == want for x, y, _ in out.values())
    if not ctx.cpu:
        diff = (out["gpu"][0] - out["cpu"][0]).abs().max().item()
        ok = ok and out["gpu"][2] and torch.equal(out["gpu"][1], out["cpu"][1]) and diff < 0.1
        figures.append(f"max |mixed - cpu| {diff:.3f} (nvJPEG vs libjpeg-turbo rounding)")
    else:
        figures.append("`mixed` needs CUDA: the CPU decoder only")
    return ok, f"{len(want)} JPEGs 500x375, ids and labels as written: {as_written}; " + ", ".join(figures)


def ddp_nccl(ctx: Ctx) -> tuple[bool, str]:
    devices = 1 if ctx.cpu else torch.cuda.device_count()
    want = "gloo" if ctx.cpu else "nccl"
    rec = train_py(ctx, "ddp", ["trainer=ddp", f"trainer.devices={devices}", f"trainer.accelerator={ctx.accelerator}",
                                *cifar_like(ctx, 8), "deploy=none", *probe()])
    ok = rec["status"] == "ok" and rec["world_size"] == devices and rec["probe_dist_backend"] == want
    return ok, (f"train.py trainer=ddp: backend {rec['probe_dist_backend']} (want {want}), world size "
                f"{rec['world_size']}; {rate(rec)}")


def deploy_cuda(ctx: Ctx) -> tuple[bool, str]:
    import onnxruntime as ort

    from lightning_modules.deploy.onnx_export import export_onnx, ort_session, run
    from lightning_modules.models import CifarResNet
    want = "CPUExecutionProvider" if ctx.cpu else "CUDAExecutionProvider"
    if want not in ort.get_available_providers():
        raise Skip(f"onnxruntime {ort.__version__} has no {want} (it has {', '.join(ort.get_available_providers())}); "
                   f"for it: `.venv/bin/pip uninstall -y onnxruntime && .venv/bin/pip install "
                   f"onnxruntime-gpu=={ort.__version__}`")
    torch.manual_seed(0)
    net = CifarResNet(depth=20, width=16, in_channels=3, image_size=32, num_classes=10).eval()
    path = ctx.work / "resnet20.onnx"
    export_onnx(net, (3, 32, 32), path, integer=True)  # as the deploy step writes model.onnx
    session = ort_session(path, threads=torch.get_num_threads())
    used = session.get_providers()[0]
    x = torch.randn(64 if ctx.cpu else 256, 3, 32, 32)
    with torch.inference_mode():
        ref = net(x)
    got = run(session, x)
    run(session, x)  # warm-up
    t = time.perf_counter()
    for _ in range(3 if ctx.cpu else 20):
        run(session, x)
    dt = (time.perf_counter() - t) / (3 if ctx.cpu else 20)
    diff, scale = (got - ref).abs().max().item(), ref.abs().max().item()
    ok = used == want and diff <= 1e-2 * scale + 1e-4  # TF32 convolutions allowed on the GPU
    return ok, (f"ONNX Runtime {ort.__version__} on {used} (want {want}); max |logit - torch| {diff:.2e} "
                f"(logits up to {scale:.2f}); batch {len(x)} {len(x) / dt:,.0f} samples/s incl. host copies")


def resnet50_fp16(ctx: Ctx) -> tuple[bool, str]:
    from lightning_modules.precision import LABELS
    # the dry run: 16 px, batch 2 (float16 convolutions on a CPU are emulated, ~100x slower than float32)
    steps, warm, px, batch = (3, 1, 16, 2) if ctx.cpu else (40, 10, 224, 256)
    base = ["model=resnet50", "data=synthetic", f"data.image_size={px}", f"data.batch_size={batch}",
            f"data.eval_batch_size={batch}", f"data.num_batches={steps}", "data.eval_batches=1",
            "trainer.limit_val_batches=1", f"measure.warmup_steps={warm}"]
    rows = {p: harness_run(ctx, f"r50-{p}", [*base, f"precision={p}"]) for p in ("32", "16-mixed", "16-mixed-noscale")}
    want = {"32": ("float32", False), "16-mixed": ("float16", True), "16-mixed-noscale": ("float16", False)}
    ok = all(r["status"] == "ok" and r["compute_dtype"] == want[p][0] and (r["loss_scale"] is not None) == want[p][1]
             and r["train_samples_s"] and r["train_steady"] for p, r in rows.items())
    fp32 = rows["32"]["train_samples_s"] or math.nan
    parts = [f"{LABELS[p]} {r['train_samples_s'] or math.nan:,.1f} ({(r['train_samples_s'] or math.nan) / fp32:.2f}x)"
             for p, r in rows.items()]
    return ok, (f"ResNet-50 batch {batch} at {px} px, {steps - warm} steps after {warm} warm-up, "
                f"train samples/s (xFP32): " + ", ".join(parts))


def compile_resnet20(ctx: Ctx) -> tuple[bool, str]:
    # --cpu --quick: aot_eager (dynamo + AOTAutograd, no code generation): inductor's C++ build of
    # ResNet's kernels takes ~2 minutes on 2 CPU cores
    backend = "aot_eager" if ctx.cpu and ctx.quick else "inductor"
    steps = 6 if ctx.cpu and ctx.quick else 10 if ctx.cpu else 60
    eager = harness_run(ctx, "eager", [*cifar_like(ctx, steps), *probe()])
    comp = harness_run(ctx, "compiled", [*cifar_like(ctx, steps), *probe(compile_backend=backend)])
    le, lc = eager["probe_losses"], comp["probe_losses"]
    # the same first loss (same weights, same batch); the last within 2% of the first loss (the
    # compiled kernels round differently, and the net memorises the 4-batch pool towards loss 0)
    close = (len(le) == len(lc) == steps and abs(le[0] - lc[0]) <= 1e-3 * le[0]
             and abs(le[-1] - lc[-1]) <= 2e-2 * le[0])
    ok = eager["status"] == comp["status"] == "ok" and close
    x = (comp["train_samples_s"] or math.nan) / (eager["train_samples_s"] or math.nan)
    return ok, (f"ResNet-20 {steps} steps, torch.compile backend {backend}: losses {le[0]:.4f} -> {le[-1]:.4f} eager, "
                f"{lc[0]:.4f} -> {lc[-1]:.4f} compiled; eager {rate(eager)}, compiled {rate(comp)} ({x:.2f}x), "
                f"first compiled step {comp['probe_first_step_s']:.1f} s")


# name: (check, timeout in seconds on a GPU; the dry run's are 3x)
CHECKS = {"amp_fp16_scaler": (amp_fp16_scaler, 120), "bf16": (bf16, 90), "dali_mixed": (dali_mixed, 120),
          "ddp_nccl": (ddp_nccl, 150), "deploy_cuda": (deploy_cuda, 90), "resnet50_fp16": (resnet50_fp16, 240),
          "compile_resnet20": (compile_resnet20, 240)}


# --- running the checks --------------------------------------------------------------------------

def one(name: str, ctx: Ctx) -> dict:
    """Run one check in this process; its result (a crash is a FAIL naming the exception)."""
    try:
        ok, figures = CHECKS[name][0](ctx)
        status = "PASS" if ok else "FAIL"
    except Skip as e:
        status, figures = "SKIP", str(e)
    except Exception as e:  # noqa: BLE001 - a crashed check is a FAIL line, the traceback above it
        import traceback
        traceback.print_exc()
        status, figures = "FAIL", f"crashed: {type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
    return {"check": name, "status": status, "figures": figures}


def outcome(name: str, returncode: int | None, output: str, seconds: float, timeout: float | None = None) -> dict:
    """A check process's result from its output: the MARK line, else a FAIL that says why."""
    for line in reversed(output.splitlines()):
        if line.startswith(MARK):
            return {**json.loads(line[len(MARK):]), "seconds": round(seconds, 1)}
    if timeout is not None:
        why = f"timed out after {round(timeout, 1):g} s"
    else:
        last = [ln for ln in output.strip().splitlines() if ln.strip()] or ["(no output)"]
        why = f"crashed (exit status {returncode}): {last[-1].strip()}"
    return {"check": name, "status": "FAIL", "figures": why, "seconds": round(seconds, 1)}


def run_check(name: str, args, work: Path, timeout: float) -> tuple[dict, str]:
    """The check in a process of its own (its own session: a timeout ends what it started too)."""
    cmd = [sys.executable, "-m", "benchmarks.gpu_check", "--one", name, "--work", str(work)]
    cmd += ["--cpu"] * args.cpu + ["--quick"] * args.quick
    env = {**os.environ, "PYTHONWARNINGS": "ignore", **({"CUDA_VISIBLE_DEVICES": ""} if args.cpu else {})}
    t = time.perf_counter()
    p = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                         env=env, start_new_session=True)
    try:
        out, _ = p.communicate(timeout=timeout)
        result = outcome(name, p.returncode, out, time.perf_counter() - t)
        if p.returncode != 0 and MARK in out:  # e.g. a crash at exit, after the check reported
            result["figures"] += f" (its process then exited with status {p.returncode})"
        return result, out
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        out, _ = p.communicate()
        return outcome(name, None, out, time.perf_counter() - t, timeout=timeout), out


def machine() -> dict:
    """Hardware (lightning_modules.record.hardware), versions, TF32 settings."""
    from lightning_modules.record import git_sha, hardware, hardware_line
    hw = hardware()
    info = {"hardware": hw, "hardware_line": hardware_line(hw), "torch": torch.__version__,
            "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version(), "pytorch_lightning": pl.__version__,
            "git_sha": git_sha(), "cudnn_tf32": torch.backends.cudnn.allow_tf32,
            "matmul_tf32": torch.backends.cuda.matmul.allow_tf32}
    if torch.cuda.is_available():
        info["capability"] = "sm_%d%d" % torch.cuda.get_device_capability(0)
    for mod in ("onnxruntime", "nvidia.dali"):
        try:
            info[mod] = __import__(mod, fromlist=["__version__"]).__version__
        except ImportError:
            info[mod] = None
    return info


def write(results: list[dict], info: dict, args, out_dir: Path) -> Path:
    """<out_dir>/gpu_check.{md,json} (gpu_check_cpu.* for the dry run)."""
    import pandas as pd
    stem = "gpu_check_cpu" if args.cpu else "gpu_check"
    out_dir.mkdir(parents=True, exist_ok=True)
    mode = "a dry run on the CPU" if args.cpu else "on the GPU"
    head = [f"# {stem}", "",
            f"`python -m benchmarks.gpu_check{' --cpu' if args.cpu else ''}{' --quick' if args.quick else ''}"
            f"{f' --only {args.only}' if args.only else ''}`: "
            f"every GPU path of the harness once, {mode}, {info['finished_at']}, git {info['git_sha']}.  ",
            f"Hardware: {info['hardware_line']}; torch {info['torch']} (CUDA {info['cuda']}, cuDNN {info['cudnn']}, "
            f"cuDNN TF32 {'on' if info['cudnn_tf32'] else 'off'}, matmul TF32 {'on' if info['matmul_tf32'] else 'off'}), "
            f"onnxruntime {info['onnxruntime']}, DALI {info['nvidia.dali']}; load average {info['load_before']:.2f} "
            f"before, {info['load_after']:.2f} after; {info['seconds']:.0f} s of a {args.budget:.0f} s budget.", ""]
    table = pd.DataFrame([{"Check": r["check"], "Result": r["status"], "Seconds": r.get("seconds"),
                           "Figures": r["figures"].replace("|", "\\|")} for r in results])
    (out_dir / f"{stem}.md").write_text("\n".join(head + [table.to_markdown(index=False), ""]))
    (out_dir / f"{stem}.json").write_text(json.dumps({**info, "results": results}, indent=2, default=str) + "\n")
    return out_dir / f"{stem}.md"


def parse(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cpu", action="store_true", help="dry run on the CPU: same code paths, tiny sizes")
    p.add_argument("--quick", action="store_true", help="with --cpu: the smallest sizes (the test's)")
    p.add_argument("--only", default=None, help=f"comma-separated checks (default all): {', '.join(CHECKS)}")
    p.add_argument("--budget", type=float, default=600.0, help="seconds for all checks together (default 600)")
    p.add_argument("--results-dir", default="results", help="writes <results-dir>/tables/gpu_check.{md,json}")
    p.add_argument("--one", default=None, help=argparse.SUPPRESS)   # a check's own process
    p.add_argument("--work", default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.one:
        result = one(args.one, Ctx(args.cpu, args.quick, Path(args.work)))
        print(MARK + json.dumps(result), flush=True)
        return 0
    names = list(CHECKS) if args.only is None else [n.strip() for n in args.only.split(",") if n.strip()]
    bad = [n for n in names if n not in CHECKS]
    if bad or not names:
        print(f"error: --only={args.only}: unknown check {', '.join(bad) or '(none given)'}; valid: {', '.join(CHECKS)}",
              file=sys.stderr)
        return 2
    if not args.budget > 0:
        print(f"error: --budget={args.budget}: must be a number of seconds > 0", file=sys.stderr)
        return 2
    if not args.cpu and not torch.cuda.is_available():
        print("error: no CUDA device here (torch.cuda.is_available() is False); `python -m benchmarks.gpu_check "
              "--cpu` runs the same paths on the CPU as a dry run", file=sys.stderr)
        return 2
    info = {"mode": "cpu" if args.cpu else "gpu", "quick": args.quick, "load_before": os.getloadavg()[0]}
    start, results = time.perf_counter(), []
    with tempfile.TemporaryDirectory(prefix="gpu_check-") as tmp:
        for name in names:
            left = args.budget - (time.perf_counter() - start)
            if left < 5:
                result = {"check": name, "status": "FAIL", "seconds": 0.0,
                          "figures": f"not run: the {args.budget:.0f} s budget was spent"}
            else:
                work = Path(tmp) / name
                work.mkdir()
                result, out = run_check(name, args, work, min(CHECKS[name][1] * (3 if args.cpu else 1), left))
                if result["status"] == "FAIL":  # what the check printed, for the one GPU session there is
                    print("\n".join(f"    | {ln}" for ln in out.strip().splitlines()[-15:]), file=sys.stderr)
            results.append(result)
            print(f"{result['status']}  {name}  {result['figures']}", flush=True)
    info.update(machine(), seconds=time.perf_counter() - start, load_after=os.getloadavg()[0],
                finished_at=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()))
    counts = {s: sum(r["status"] == s for r in results) for s in ("PASS", "FAIL", "SKIP")}
    path = write(results, info, args, Path(args.results_dir) / "tables")
    print(f"gpu_check: {counts['PASS']} passed, {counts['FAIL']} failed, {counts['SKIP']} skipped in "
          f"{info['seconds']:.0f} s ({info['hardware_line']}; load {info['load_after']:.2f}); {path}", flush=True)
    return 1 if counts["FAIL"] else 0


if __name__ == "__main__":
    sys.exit(main())
