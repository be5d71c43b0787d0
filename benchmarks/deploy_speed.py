"""Deployed speed: the packed-bit binary kernels and ONNX Runtime's integer kernels against FP32
on the same runtime, per layer and per whole net, in interleaved rounds within one process.

    python -m benchmarks.deploy_speed [--quick] [--rounds 5] [--threads 1,2]
    python -m benchmarks.deploy_speed --run-dir results/runs/<suite>/<run>   # one JSON line

Layers (kind `layer`): binary Linear 1024x1024 and 4096x4096 and a binary 3x3 conv 256->256 on
14x14 (padding 1), XNOR-Net's scaled binarisation (lightning_modules/deploy/binary.py) against
torch FP32 (its oneDNN/MKL kernels); the same shapes with 4-bit weights and activations on ONNX
Runtime's integer kernels (ConvInteger / MatMulInteger, lightning_modules/deploy/onnx_export.py)
against ONNX Runtime FP32. Batches 1, 64, 256; 1 and 2 threads.
Nets (kind `net`): LeNet-5, ResNet-8, ResNet-20 and VGG-Small on synthetic inputs of their
shapes, random weights (speed does not depend on their values), as torch FP32, ORT FP32, ORT
integer (DoReFa W2A2: every quantized layer on integer kernels) and binary (XNOR-Net W1A1, the
first conv and the classifier in float as in the paper); batch 1 (latency) and 256 (throughput).

Each row's `samples_s` is batch / the median time of one forward pass; `x_fp32` is the median
over rounds of (reference time / this time), the reference named in `vs` (torch FP32 for binary,
ONNX Runtime FP32 for ONNX integer), timed in the same round. Rounds alternate their order. The
header gives the hardware and the load average before and after. Writes
results/tables/deploy_speed.{md,csv} and deploy_targets.md (the issue's targets, each with the
measured figure).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import pandas as pd
import torch
from torch import nn

from lightning_modules.compression.quantization import quantizers as Q
from lightning_modules.compression.quantization.qlayers import QConv2d, QLinear
from lightning_modules.deploy.deploy import torch_fn
from lightning_modules.record import hardware, hardware_line

REPO = Path(__file__).resolve().parents[1]
COLUMNS = ["kind", "name", "backend", "batch", "threads", "samples_s", "x_fp32", "vs"]

# (what, threshold, how it is read off the rows): the targets, the binary ones for each
# kernel path (AVX2, the issue's; AVX-512 VPOPCNTDQ where the CPU has it)
TARGETS = [
    *[(f"binary Linear 4096x4096, batch 64, 1 thread vs torch FP32 ({isa})", 5.0,
       dict(kind="layer", name="linear 4096x4096", backend=f"binary {isa}", batch=64, threads=1))
      for isa in ("avx2", "avx512")],
    *[(f"binary 3x3 conv 256->256 on 14x14, batch 64, 1 thread vs torch FP32 ({isa})", 3.0,
       dict(kind="layer", name="conv3x3 256->256 14x14", backend=f"binary {isa}", batch=64, threads=1))
      for isa in ("avx2", "avx512")],
    *[(f"XNOR-Net ResNet-20, batch 256, 1 thread vs torch FP32 ({isa})", 2.0,
       dict(kind="net", name="resnet20", backend=f"binary {isa}", batch=256, threads=1))
      for isa in ("avx2", "avx512")],
    ("ONNX Runtime integer ResNet-20, batch 256, 1 thread vs ORT FP32", 1.5,
     dict(kind="net", name="resnet20", backend="onnx int8", batch=256, threads=1)),
]


# --- the models ------------------------------------------------------------------------------

def xnor_layer(kind: str, shape: tuple[int, ...]) -> nn.Module:
    """One XNOR-Net layer (BWN weights, sign inputs scaled by K) with random weights."""
    roles = dict(weight_quant=Q.bwn_weight, act_quant=partial(Q.xnor_input, dim=-1 if kind == "linear" else 1))
    layer = QLinear(*shape, **roles) if kind == "linear" else QConv2d(*shape, padding=1, **roles)
    layer.bits = {"w": 1, "a": 1, "g": 32}
    return nn.Sequential(layer).eval()


def int_layer(kind: str, shape: tuple[int, ...], k: int = 4) -> nn.Module:
    """One layer with k-bit uniform weights and k-bit [0, 1] activations."""
    roles = dict(weight_quant=partial(Q.uniform_weight, k=k), act_quant=partial(Q.dorefa_act, k=k))
    layer = QLinear(*shape, **roles) if kind == "linear" else QConv2d(*shape, padding=1, **roles)
    layer.bits = {"w": k, "a": k, "g": 32}
    return nn.Sequential(layer).eval()


def float_layer(kind: str, shape: tuple[int, ...]) -> nn.Module:
    return nn.Sequential(nn.Linear(*shape) if kind == "linear" else nn.Conv2d(*shape, padding=1)).eval()


LAYERS = [("linear 1024x1024", "linear", (1024, 1024), (1024,)),
          ("linear 4096x4096", "linear", (4096, 4096), (4096,)),
          ("conv3x3 256->256 14x14", "conv", (256, 256, 3), (256, 14, 14))]

NETS = {"lenet5": ("LeNet5", {}, (1, 28, 28)), "resnet8": ("CifarResNet", {"depth": 8}, (3, 32, 32)),
        "resnet20": ("CifarResNet", {"depth": 20}, (3, 32, 32)), "vgg_small": ("VGGSmall", {}, (3, 32, 32))}


def build_net(name: str, method: str | None = None, bits: tuple[int, int] | None = None) -> nn.Module:
    """A zoo net (random weights, BN statistics from a few random batches), quantized by
    `method` (xnor / dorefa) at `bits` (w, a) when given, in eval mode."""
    from lightning_modules import models
    from lightning_modules.compression.quantization.methods import XNOR, DoReFa
    cls, kw, (c, h, _) = NETS[name][0], NETS[name][1], NETS[name][2]
    torch.manual_seed(0)
    net = getattr(models, cls)(in_channels=c, image_size=h, num_classes=10, **kw)
    if method is not None:
        m = {"xnor": XNOR, "dorefa": DoReFa}[method]
        net = m(bits={"w": bits[0], "a": bits[1], "g": 32}).apply(net)
    net.train()
    with torch.no_grad():
        for _ in range(3):
            net(torch.randn(16, c, h, h))
    return net.eval()


def binary_fn(qnet: nn.Module, threads: int, isa: str):
    """The packed-bit net on kernel path `isa` (binary.py reads $LWB_BINARY_ISA at each call)."""
    from lightning_modules.deploy.binary import to_binary
    bnet, info = to_binary(qnet)
    if not info["binary"]:
        raise RuntimeError(f"no binary layer: {info['reasons']}")
    for m in bnet.modules():
        if hasattr(m, "threads"):
            m.threads = threads
    run = torch_fn(bnet)

    def fn(x):
        before = os.environ.get("LWB_BINARY_ISA")
        os.environ["LWB_BINARY_ISA"] = isa
        try:
            return run(x)
        finally:
            os.environ.pop("LWB_BINARY_ISA") if before is None else os.environ.__setitem__("LWB_BINARY_ISA", before)
    return fn


def isas() -> list[str]:
    """The binary kernel paths this CPU runs: AVX2 always, AVX-512 VPOPCNTDQ where present."""
    from lightning_modules.deploy.binary import avx512_supported
    return ["avx2"] + (["avx512"] if avx512_supported() else [])


def backends(f32: nn.Module, qbin: nn.Module, qint: nn.Module, shape, threads: int) -> dict:
    fns = {"torch fp32": torch_fn(f32)}
    fns.update({f"binary {isa}": binary_fn(qbin, threads, isa) for isa in isas()})
    fns.update({"onnx fp32": onnx_fn(f32, shape, False, threads), "onnx int8": onnx_fn(qint, shape, True, threads)})
    return fns


def onnx_fn(net: nn.Module, shape: tuple[int, ...], integer: bool, threads: int):
    from lightning_modules.deploy.onnx_export import export_onnx, ort_session, run
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "m.onnx"
        info = export_onnx(net, shape, path, integer=integer)
        if integer and "int8" not in info["layers"].values():
            raise RuntimeError(f"no integer layer: {info['reasons']}")
        session = ort_session(path.read_bytes(), threads=threads)
    return lambda x: run(session, x)


# --- timing ----------------------------------------------------------------------------------

def timed_rounds(fns: dict, x: torch.Tensor, rounds: int, min_s: float = 0.05) -> dict[str, list[float]]:
    """Seconds per call of each fn on x, in `rounds` interleaved rounds (order alternating); each
    timing repeats the call enough times for the slowest fn's block to take about `min_s`."""
    for fn in fns.values():
        fn(x)
    slowest = 0.0
    for fn in fns.values():
        t = time.perf_counter()
        fn(x)
        slowest = max(slowest, time.perf_counter() - t)
    reps = max(1, int(min_s / max(slowest, 1e-6)))
    times: dict[str, list[float]] = {k: [] for k in fns}
    names = list(fns)
    for r in range(rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            t = time.perf_counter()
            for _ in range(reps):
                fns[name](x)
            times[name].append((time.perf_counter() - t) / reps)
    return times


def rows_of(kind: str, name: str, batch: int, threads: int, times: dict[str, list[float]],
            refs: dict[str, str]) -> list[dict]:
    """One row per backend: samples/s from its median time, x_fp32 against refs[backend]."""
    out = []
    for backend, ts in times.items():
        ref = refs.get(backend, backend)
        ratio = statistics.median(r / t for r, t in zip(times[ref], ts))
        out.append({"kind": kind, "name": name, "backend": backend, "batch": batch, "threads": threads,
                    "samples_s": batch / statistics.median(ts), "x_fp32": ratio, "vs": ref})
    return out


REFS = {"binary avx2": "torch fp32", "binary avx512": "torch fp32", "onnx int8": "onnx fp32"}


def measure_layers(batches, threads_list, rounds) -> list[dict]:
    rows = []
    for name, kind, shape, in_shape in LAYERS:
        f32, xnor, q4 = float_layer(kind, shape), xnor_layer(kind, shape), int_layer(kind, shape)
        for threads in threads_list:
            torch.set_num_threads(threads)
            fns = backends(f32, xnor, q4, in_shape, threads)
            for batch in batches:
                x = torch.randn(batch, *in_shape)
                rows += rows_of("layer", name, batch, threads, timed_rounds(fns, x, rounds), REFS)
                print(f"  layer {name} batch {batch} threads {threads}", flush=True)
    return rows


def measure_nets(names, batches, threads_list, rounds) -> list[dict]:
    rows = []
    for name in names:
        shape = NETS[name][2]
        f32, xnor, q2 = build_net(name), build_net(name, "xnor", (1, 1)), build_net(name, "dorefa", (2, 2))
        for threads in threads_list:
            torch.set_num_threads(threads)
            fns = backends(f32, xnor, q2, shape, threads)
            for batch in batches:
                x = torch.randn(batch, *shape)
                rows += rows_of("net", name, batch, threads, timed_rounds(fns, x, rounds, min_s=0.2), REFS)
                print(f"  net {name} batch {batch} threads {threads}", flush=True)
    return rows


def targets_table(df: pd.DataFrame) -> pd.DataFrame:
    out = []
    for what, threshold, key in TARGETS:
        hit = df
        for k, v in key.items():
            hit = hit[hit[k] == v]
        x = float(hit.x_fp32.iloc[0]) if len(hit) else float("nan")
        out.append({"target": what, "needed": f"≥ {threshold:.1f}×",
                    "measured": "not measured" if pd.isna(x) else f"{x:.2f}×",
                    "met": "-" if pd.isna(x) else ("yes" if x >= threshold else "no")})
    return pd.DataFrame(out)


def header(load_before: float, args) -> list[str]:
    import onnxruntime
    return [f"Hardware: {hardware_line(hardware())}; torch {torch.__version__}, onnxruntime "
            f"{onnxruntime.__version__}; load average {load_before:.2f} before, "
            f"{os.getloadavg()[0]:.2f} after; {args.rounds} interleaved rounds per row; "
            f"`python -m benchmarks.deploy_speed{' --quick' if args.quick else ''}`.", ""]


def write_tables(rows: list[dict], out_dir: Path, head: list[str]) -> pd.DataFrame:
    df = pd.DataFrame(rows, columns=COLUMNS)
    out_dir.mkdir(parents=True, exist_ok=True)
    df.to_csv(out_dir / "deploy_speed.csv", index=False)
    shown = df.assign(samples_s=df.samples_s.map(lambda v: f"{v:,.0f}"),
                      x_fp32=df.x_fp32.map(lambda v: f"{v:.2f}×"))
    (out_dir / "deploy_speed.md").write_text("\n".join(head + [shown.to_markdown(index=False), ""]))
    (out_dir / "deploy_targets.md").write_text(
        "\n".join(head + [targets_table(df).to_markdown(index=False), ""]))
    return df


# --- one finished run ------------------------------------------------------------------------

def run_dir_line(run_dir: Path, rounds: int) -> dict:
    """One run's deployed model (its files, checked against the record) against its architecture
    in FP32 on the same runtime, at the run's deploy batch and threads."""
    from hydra.utils import instantiate
    from lightning_modules.deploy.deploy import fp32_baseline, interleaved, load_deployed, speed_fields
    from lightning_modules.earlier_runs import data_shape, find_run, load_run, run_config
    from lightning_modules.record import read_record
    record = read_record(run_dir / "record.json")
    if record is None:
        raise FileNotFoundError(f"{run_dir}: no readable record.json")
    threads = int(record.get("deploy_threads") or torch.get_num_threads())
    torch.set_num_threads(threads)
    deployed = load_deployed(record, lambda: load_run(str(run_dir), run_dir.parents[2], key="--run-dir")[0],
                             threads)
    run = find_run(str(run_dir), run_dir.parents[2], None, "--run-dir")
    net_cfg, _, data_cfg = run_config(run, "--run-dir")
    c, h, k = data_shape(data_cfg)
    float_net = instantiate(net_cfg, in_channels=c, image_size=h, num_classes=k, _convert_="all")
    ref = fp32_baseline(deployed.backend, float_net.eval(), (c, h, h), threads)
    batch = int(record.get("deploy_batch") or 256)
    x = torch.randn(batch * 4, c, h, h)
    times = interleaved({"deployed": deployed, "fp32": ref}, x, batch, rounds)
    speed = speed_fields(times, len(x))
    return {"run_dir": str(run_dir), "backend": deployed.backend, "batch": batch, "threads": threads,
            "samples_s": speed["deploy_test_samples_s"], "fp32_samples_s": speed["deploy_fp32_test_samples_s"],
            "x_fp32": speed["deploy_x_fp32"], "load_avg": round(os.getloadavg()[0], 2)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="fewer rounds, 1 thread, no VGG-Small (< 10 min on 2 cores)")
    p.add_argument("--rounds", type=int, default=None, help="interleaved rounds per row (default 7, quick 3)")
    p.add_argument("--threads", default=None, help="comma-separated thread counts (default 1,2; quick 1)")
    p.add_argument("--results-dir", type=Path, default=REPO / "results")
    p.add_argument("--run-dir", type=Path, default=None, help="measure one finished run's deployed model")
    args = p.parse_args(argv)
    args.rounds = args.rounds or (3 if args.quick else 7)
    if args.rounds < 1:
        p.error(f"--rounds={args.rounds}: must be >= 1")
    if args.run_dir is not None:
        try:
            print(json.dumps(run_dir_line(args.run_dir, args.rounds)))
        except Exception as e:  # a missing run, a damaged deploy file: one line
            print(f"error: {str(e).splitlines()[0] if str(e) else type(e).__name__}", file=sys.stderr)
            return 1
        return 0
    try:
        threads = [int(t) for t in (args.threads or ("1" if args.quick else "1,2")).split(",")]
        assert all(t >= 1 for t in threads)
    except (ValueError, AssertionError):
        p.error(f"--threads={args.threads}: valid: comma-separated integers >= 1, e.g. 1,2")
    load_before = os.getloadavg()[0]
    batches = (1, 64, 256)
    nets = ["lenet5", "resnet8", "resnet20"] + ([] if args.quick else ["vgg_small"])
    print(f"deploy_speed: layers, batches {batches}, threads {threads}, {args.rounds} rounds", flush=True)
    rows = measure_layers(batches, threads, args.rounds)
    print(f"deploy_speed: nets {nets}, batches (1, 256)", flush=True)
    rows += measure_nets(nets, (1, 256), threads, args.rounds)
    df = write_tables(rows, args.results_dir / "tables", header(load_before, args))
    print(targets_table(df).to_markdown(index=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
