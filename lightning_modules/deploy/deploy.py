"""The deploy step: after export, the trained model runs as a deployable artefact on a real
runtime, and the record says how fast, against the same architecture in FP32 on that runtime.

    deploy=auto      (default) the fastest valid backend for the method:
                     binary if the net has layers with 1-bit weights AND inputs (packed-bit
                     popcount kernels, binary.py), else onnx
    deploy=onnx      ONNX Runtime (onnx_export.py): layers whose weights and inputs lie on
                     8-bit integer grids run its integer kernels (ConvInteger / MatMulInteger),
                     every other layer float32
    deploy=binary    the packed-bit kernels (refused before training unless bits are W1A1)
    deploy=none      no deploy step

The deployed model is built from the run's exported file, reloaded (the binary backend packs the
signs of the packed export's weights; the onnx backend writes `model.onnx` from the reloaded net),
so what is timed is what a user would ship. Record keys (`deploy_*`):

- backend (and for binary the kernel path, `deploy_isa`: avx2, or avx512 where the CPU has
  VPOPCNTDQ; $LWB_BINARY_ISA=avx2 forces AVX2; for onnx `deploy_provider`, the execution provider
  that ran it: CPUExecutionProvider, or CUDAExecutionProvider where present), file, bytes, sha256 (the file's; `load_deployed`
  refuses a file that does not match),
  layers (per layer: binary / int8 / fp32), reason (why a layer or the whole step is not faster)
- top1, top5 on the test images the run was tested on (up to `deploy.max_samples`)
- agreement: fraction of those images whose predicted class equals the trained model's
- test_samples_s, fp32_test_samples_s: eval throughput at the test batch size, the deployed model
  and the same architecture in float32 on the same backend (torch for binary, ONNX Runtime for
  onnx), same threads, timed in interleaved rounds in this process; x_fp32 = the median over
  rounds of (fp32 time / deployed time)

A backend that cannot run the model (an operator the exporter or runtime lacks, no compiler for
the kernels) leaves `deploy_backend: none` and the reason; the run itself stays ok.
"""
from __future__ import annotations

import copy
import hashlib
import logging
import statistics
import tempfile
import time
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from ..compression.errors import ConfigError, FileFormatError

log = logging.getLogger("harness")

BACKENDS = ("auto", "onnx", "binary", "none")


def check(backend: str, method: str, bits: dict) -> None:
    """Bad `deploy=` choices, before training: one line naming the method and its bits."""
    if backend not in BACKENDS:
        raise ConfigError(f"deploy={backend}: valid: {', '.join(BACKENDS)}")
    if backend == "binary" and not (int(bits["w"]) == 1 and int(bits["a"]) == 1):
        raise ConfigError(f"deploy=binary: method {method} has bits W{bits['w']}A{bits['a']}; the "
                          f"packed-bit kernels need 1-bit weights and inputs (W1A1, e.g. xnor, bnn, "
                          f"dorefa bits=w1a1g32); valid here: auto, onnx, none")


def first_line(e: BaseException) -> str:
    msg = str(e).strip()
    return f"{type(e).__name__}: {msg.splitlines()[0]}" if msg else type(e).__name__


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


# --- the deployed models ---------------------------------------------------------------------

class Deployed:
    """A runnable deployed model: `__call__(x) -> logits` on CPU float32 tensors."""

    def __init__(self, backend: str, fn: Callable[[torch.Tensor], torch.Tensor], file: Path,
                 layers: dict[str, str], reason: str | None, provider: str | None = None):
        self.backend, self.fn, self.file, self.layers, self.reason = backend, fn, Path(file), layers, reason
        self.provider = provider  # the ONNX Runtime execution provider that runs it (onnx only)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)


def torch_fn(net: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    net = net.eval()

    def fn(x):
        with torch.inference_mode():
            return net(x)
    return fn


def onnx_fn(path: Path | bytes, threads: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """The session's logits as a function; `fn.provider` is the execution provider ONNX Runtime
    chose first (CUDA where present, else CPU)."""
    from .onnx_export import ort_session, run as ort_run
    session = ort_session(path, threads=threads)

    def fn(x):
        return ort_run(session, x)
    fn.provider = session.get_providers()[0]
    return fn


def binary_model(net: nn.Module, model_file: Path, threads: int) -> Deployed:
    """The reloaded net with its W1A1 layers on the packed-bit kernels; the file is the packed
    export itself (the kernels' words are its 1-bit codes)."""
    from .binary import to_binary
    bnet, info = to_binary(net)
    if not info["binary"]:
        raise ValueError("no layer has 1-bit weights and inputs: "
                         + "; ".join(f"{k}: {v}" for k, v in list(info["reasons"].items())[:3]))
    for m in bnet.modules():
        if hasattr(m, "threads"):
            m.threads = threads
    layers = {**{n: "binary" for n in info["binary"]}, **{n: "fp32" for n in info["torch"]}}
    return Deployed("binary", torch_fn(bnet), model_file, layers, _reasons(info["reasons"]))


def onnx_model(net: nn.Module, shape: tuple[int, int, int], path: Path, threads: int) -> Deployed:
    from .onnx_export import export_onnx
    info = export_onnx(net, shape, path, integer=True)
    fn = onnx_fn(path, threads)
    return Deployed("onnx", fn, path, info["layers"], _reasons(info["reasons"]), provider=fn.provider)


def _reasons(reasons: dict[str, str]) -> str | None:
    if not reasons:
        return None
    # one line: the distinct reasons with the layers they hold for
    by: dict[str, list[str]] = {}
    for name, why in reasons.items():
        by.setdefault(why, []).append(name)
    return "; ".join(f"{', '.join(ns)}: {why}" for why, ns in by.items())


def has_binary_layers(net: nn.Module) -> bool:
    from ..compression.quantization.qlayers import QLayer
    return any(isinstance(m, QLayer) and m.bits.get("w") == 1 and m.bits.get("a") == 1
               for m in net.modules())


def build_deployed(backend: str, net: nn.Module, model_file: Path, shape: tuple[int, int, int],
                   out_dir: Path, threads: int) -> Deployed:
    """`backend` (auto resolved here) applied to the reloaded net. Raises on failure."""
    if backend == "auto":
        backend = "binary" if has_binary_layers(net) else "onnx"
        if backend == "binary":
            try:
                return binary_model(net, model_file, threads)
            except Exception as e:  # no compiler, an unsupported layer: ONNX Runtime instead
                log.info("deploy    binary kernels not used (%s); ONNX Runtime instead", first_line(e))
                backend = "onnx"
    if backend == "binary":
        return binary_model(net, model_file, threads)
    return onnx_model(net, shape, out_dir / "model.onnx", threads)


def fp32_baseline(backend: str, float_net: nn.Module, shape: tuple[int, int, int],
                  threads: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """The same architecture in float32 on the deployed model's runtime."""
    if backend == "binary":
        return torch_fn(float_net)
    from .onnx_export import export_onnx
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "fp32.onnx"
        export_onnx(float_net, shape, path, integer=False)
        return onnx_fn(path.read_bytes(), threads)


def load_deployed(record: dict, net_loader: Callable[[], nn.Module], threads: int | None = None) -> Deployed:
    """A finished run's deployed model from its files (benchmarks.deploy_speed --run-dir): the
    deploy file must exist and match the record's sha256, else FileFormatError naming it."""
    threads = threads or torch.get_num_threads()
    backend, file = record.get("deploy_backend"), record.get("deploy_file")
    if backend in (None, "none") or not file:
        raise ValueError(f"run {record.get('run_name')}: no deployed model (deploy_backend="
                         f"{backend}, reason: {record.get('deploy_reason')})")
    path = Path(file)
    if not path.is_file():
        raise FileFormatError(f"{path}: deploy file missing")
    if record.get("deploy_sha256") and sha256(path) != record["deploy_sha256"]:
        raise FileFormatError(f"{path}: deploy file corrupted or truncated (sha256 differs from the "
                              f"record's deploy_sha256)")
    if backend == "binary":
        return binary_model(net_loader(), path, threads)  # net_loader reads the checked container
    try:
        fn = onnx_fn(path, threads)
    except Exception as e:
        raise FileFormatError(f"{path}: not a loadable ONNX model ({first_line(e)})") from None
    return Deployed("onnx", fn, path, record.get("deploy_layers") or {}, record.get("deploy_reason"))


# --- measuring -------------------------------------------------------------------------------

def test_inputs(dm, max_samples: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """The run's test images and labels (CPU float32), up to max_samples."""
    xs, ys, n = [], [], 0
    for x, y in dm.test_dataloader():
        xs.append(x.detach().float().cpu())
        ys.append(y.detach().cpu())
        n += len(y)
        if max_samples is not None and n >= max_samples:
            break
    x, y = torch.cat(xs), torch.cat(ys)
    return (x, y) if max_samples is None else (x[:max_samples], y[:max_samples])


def predict(fn: Callable, x: torch.Tensor, batch: int) -> torch.Tensor:
    return torch.cat([fn(x[i:i + batch]).float() for i in range(0, len(x), batch)])


def interleaved(fns: dict[str, Callable], x: torch.Tensor, batch: int, rounds: int,
                batches: int | None = None) -> dict[str, list[float]]:
    """Seconds per pass over `batches` batches of x (all when None) for each fn, in interleaved
    rounds (the order alternates each round), after one warm-up pass each."""
    chunks = [x[i:i + batch] for i in range(0, len(x), batch)][:batches]
    times: dict[str, list[float]] = {k: [] for k in fns}
    names = list(fns)
    for name in names:
        for c in chunks[:2]:
            fns[name](c)
    for r in range(rounds):
        for name in (names if r % 2 == 0 else names[::-1]):
            t = time.perf_counter()
            for c in chunks:
                fns[name](c)
            times[name].append(time.perf_counter() - t)
    return times


def speed_fields(times: dict[str, list[float]], samples: int) -> dict:
    dep, ref = times["deployed"], times["fp32"]
    return {"deploy_test_samples_s": samples / statistics.median(dep),
            "deploy_fp32_test_samples_s": samples / statistics.median(ref),
            "deploy_x_fp32": statistics.median(r / d for r, d in zip(ref, dep))}


def topk(logits: torch.Tensor, y: torch.Tensor, k: int) -> float:
    k = min(k, logits.shape[1])
    return (logits.topk(k, dim=1).indices == y[:, None]).any(dim=1).float().mean().item()


def deploy(cfg_deploy, trained: nn.Module, reloaded: nn.Module, float_net: nn.Module, dm,
           model_file: Path, out_dir: Path) -> dict:
    """The record's deploy_* keys for one finished run. `trained` is the model the test measured,
    `reloaded` the same rebuilt from its exported file, `float_net` the architecture in FP32."""
    backend = str(cfg_deploy.backend)
    threads = torch.get_num_threads()
    shape = (dm.in_channels, dm.image_size, dm.image_size)
    batch = int(dm.eval_batch_size) if hasattr(dm, "eval_batch_size") else 256
    fields: dict = {"deploy_backend": "none", "deploy_threads": threads, "deploy_batch": batch}
    try:
        deployed = build_deployed(backend, reloaded.cpu().float().eval(), model_file, shape, out_dir, threads)
    except Exception as e:
        log.info("deploy    %s: not deployed (%s)", backend, first_line(e))
        return fields | {"deploy_reason": first_line(e)}
    try:
        x, y = test_inputs(dm, cfg_deploy.max_samples)
        trained_cpu = copy.deepcopy(trained).cpu().float().eval()
        want = predict(torch_fn(trained_cpu), x, batch).argmax(1)
        logits = predict(deployed, x, batch)
        ref = fp32_baseline(deployed.backend, float_net.cpu().float().eval(), shape, threads)
        timed = x[: int(cfg_deploy.time_samples)]
        times = interleaved({"deployed": deployed, "fp32": ref}, timed, batch, int(cfg_deploy.rounds))
    except Exception as e:  # the runtime cannot run an operator of this model
        log.info("deploy    %s: failed to run (%s)", deployed.backend, first_line(e))
        if deployed.backend == "onnx":
            deployed.file.unlink(missing_ok=True)
        return fields | {"deploy_reason": first_line(e)}
    fields.update({
        "deploy_backend": deployed.backend, "deploy_file": str(deployed.file),
        "deploy_bytes": deployed.file.stat().st_size, "deploy_sha256": sha256(deployed.file),
        "deploy_layers": deployed.layers, "deploy_reason": deployed.reason,
        "deploy_top1": topk(logits, y, 1), "deploy_top5": topk(logits, y, 5),
        "deploy_agreement": (logits.argmax(1) == want).float().mean().item(),
        "deploy_samples": len(x), "deploy_rounds": int(cfg_deploy.rounds),
        **speed_fields(times, len(timed)),
    })
    if deployed.provider is not None:
        fields["deploy_provider"] = deployed.provider  # CUDAExecutionProvider on a GPU machine
    if deployed.backend == "binary":
        from .binary import isa
        fields["deploy_isa"] = isa()  # the kernel path: avx512 (VPOPCNTDQ) where the CPU has it, else avx2
    log.info("deploy    %s: agreement %.4f, %.0f samples/s, %.2fx its FP32 on the same runtime",
             deployed.backend, fields["deploy_agreement"], fields["deploy_test_samples_s"],
             fields["deploy_x_fp32"])
    return fields
