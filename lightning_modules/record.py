"""One `record.json` per run: the measured facts every table and plot is computed from.

Written atomically (temp file in the same folder, then `os.replace`), by rank 0 only.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Annotated, Literal, Optional

import torch
from omegaconf import DictConfig, OmegaConf
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from typing_extensions import TypedDict

REPO = Path(__file__).resolve().parents[1]

# The code a run executes: its content (not mtimes) enters config_hash.
CODE = ("lightning_modules", "datamodules", "train.py")
# Keys that say where or how results are kept, not what was run: they do not enter config_hash.
NOT_HASHED = ("results_dir", "run_dir", "run_name", "logger", "wandb", "suite", "checkpoint", "resume")

RECORD_KEYS = ("suite", "run_name", "config_hash", "model", "method", "bits", "precision", "dataset",
               "epochs", "batch_size", "seed", "status", "top1", "top5", "train_it_s",
               "train_samples_s", "test_it_s", "test_samples_s", "params", "footprint_bytes",
               "checkpoint_bytes", "wall_s", "started_at", "git_sha", "hardware", "torch_version")
# A record's status: being written by a live run, finished (ok, diverged), or not (failed, interrupted).
STATUSES = ("running", "ok", "diverged", "failed", "interrupted")
# The keys a table row is made of (benchmarks/tables.py indexes them): a record without one is skipped.
TABLE_KEYS = ("model", "method", "bits", "precision", "status")


def header(cfg: DictConfig) -> dict:
    """What ran, from the config alone: the record's identity keys (every record has them, a
    finished run's and a sweep's failed-before-start one alike)."""
    return {"suite": cfg.suite.name, "run_name": cfg.run_name, "config_hash": config_hash(cfg),
            "model": cfg.model.name, "method": cfg.method.name, "method_label": cfg.method.get("label"),
            "bits": {k: int(cfg.bits[k]) for k in ("w", "a", "g")}, "precision": cfg.precision.name,
            "epochs": int(cfg.trainer.max_epochs), "batch_size": int(cfg.data.batch_size),
            "seed": int(cfg.seed), "compile": bool(cfg.get("compile", False)), "code_hash": code_hash(), "torch_threads": torch_threads()}


def ordered(record: dict) -> dict:
    """The contract's keys first, in the documented order (unknown ones None); extras after."""
    out = {k: record.get(k) for k in RECORD_KEYS}
    out.update({k: v for k, v in record.items() if k not in out})
    return out


def config_hash(cfg: DictConfig) -> str:
    """Same hash = same experiment: the resolved config minus bookkeeping keys, the code that runs
    (`code_hash`), the torch version and the thread count the run uses (`torch_threads`)."""
    c = OmegaConf.to_container(cfg, resolve=True)
    for k in NOT_HASHED:
        c.pop(k, None)
    c.get("trainer", {}).pop("enable_progress_bar", None)
    c["_runtime"] = {"code": code_hash(), "torch": torch.__version__, "threads": torch_threads()}
    blob = json.dumps(c, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


@functools.cache
def code_hash(root: Path = REPO) -> str:
    """Hash of the .py and .c files (the deploy step's kernels) of CODE under `root`: their paths
    and contents (once per process)."""
    h = hashlib.sha256()
    for name in CODE:
        files = [root / name] if name.endswith(".py") else sorted(
            f for ext in ("*.py", "*.c") for f in (root / name).rglob(ext))
        for f in files:
            h.update(f.relative_to(root).as_posix().encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()[:16]


# torch's default intra-op thread count, read when this module is first imported (a fresh process
# starts with it; later torch.set_num_threads calls in this process must not change the hash)
_DEFAULT_THREADS = torch.get_num_threads()


def torch_threads() -> int:
    """torch's intra-op thread count for a run started in this environment: OMP_NUM_THREADS when
    set (torch reads it at start; the suite's runs and joblib's sweep workers inherit it), else
    the count a fresh process starts with. Neither train.py nor the suite runner changes it before
    a run's record header is written, so a suite's plan() and the run itself hash the same count
    (under DDP, Lightning divides it among the processes later, as a function of trainer.devices)."""
    env = os.environ.get("OMP_NUM_THREADS", "").strip()
    return int(env) if env.isdigit() and int(env) > 0 else _DEFAULT_THREADS


def git_sha(repo: Path = REPO) -> str | None:
    """HEAD's sha, `-dirty` when tracked code or config differ from it; the harness's own outputs
    under results/ (tables, records) do not count."""
    try:
        head = subprocess.run(["git", "rev-parse", "--verify", "-q", "HEAD"], cwd=repo,
                              capture_output=True, text=True, timeout=10)
        if head.returncode != 0:
            return None
        sha = head.stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--",
                                ".", ":(exclude)results"], cwd=repo,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return (sha + ("-dirty" if dirty else "")) or None


def cpu_isa(cpuinfo: str | None = None) -> str | None:
    """The widest x86 SIMD level /proc/cpuinfo's flags report ("AVX-512 (VNNI, VPOPCNTDQ)",
    "AVX2", "SSE4.2"), None where there are no such flags (not x86, or no /proc). Two machines
    that both call themselves "AMD EPYC" can differ here, and so do the speed tables measured on
    them (the binary kernels and ONNX Runtime's integer kernels pick their code by it)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return None
    flags = next((set(line.split(":", 1)[1].split()) for line in cpuinfo.splitlines()
                  if line.startswith("flags")), set())
    if "avx512f" in flags:
        extra = [name for flag, name in (("avx512_vnni", "VNNI"), ("avx512_vpopcntdq", "VPOPCNTDQ"))
                 if flag in flags]
        return "AVX-512" + (f" ({', '.join(extra)})" if extra else "")
    return "AVX2" if "avx2" in flags else "SSE4.2" if "sse4_2" in flags else None


def hardware() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    hw = {"cpu": cpu, "cpu_isa": cpu_isa(), "cpu_cores": os.cpu_count(),
          "torch_threads": torch.get_num_threads(), "gpu": None, "gpu_count": 0,
          "platform": platform.platform()}
    if torch.cuda.is_available():
        hw["gpu"] = torch.cuda.get_device_name(0)
        hw["gpu_count"] = torch.cuda.device_count()
    return hw


def hardware_line(hw: dict) -> str:
    """One line for a table header; records written before `cpu_isa` existed read as before."""
    cpu = f"{hw['cpu']} with {hw['cpu_isa']}" if hw.get("cpu_isa") else hw["cpu"]
    if hw.get("gpu"):
        return f"{hw['gpu_count']}x {hw['gpu']}, {cpu}"
    return f"{cpu}, {hw['cpu_cores']} cores, {hw['torch_threads']} torch threads, no GPU"


def write_json_atomic(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2, sort_keys=False, default=str)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# --- the schema a record is read with ---------------------------------------------------------
# Types and ranges of the keys tables, plots, suites and earlier-run lookups read; a key may be
# absent (a record written by an older harness, a test's minimal one), but one that is present has
# the type the harness writes (None where it writes None: a failed run has no top1). Other keys
# pass unchecked (extra="allow").
_Bit = Annotated[int, Field(ge=1, le=32)]
_Count = Optional[Annotated[int, Field(ge=0)]]
_Positive = Optional[Annotated[int, Field(ge=1)]]
_Rate = Optional[Annotated[float, Field(ge=0)]]
_Fraction = Optional[Annotated[float, Field(ge=0, le=1)]]


class Bits(TypedDict):
    """The run's bitwidths: weights, activations, gradients."""
    __pydantic_config__ = ConfigDict(strict=True, extra="forbid")
    w: _Bit
    a: _Bit
    g: _Bit


class RecordSchema(BaseModel):
    """What a record.json must hold to be read (strict: "0.9" is not a number, true not an int)."""
    model_config = ConfigDict(strict=True, extra="allow", allow_inf_nan=False)
    suite: str = None
    run_name: str = None
    model: str = None
    method: str = None
    precision: str = None
    method_label: Optional[str] = None
    dataset: Optional[str] = None
    config_hash: Optional[str] = None
    status: Literal[STATUSES] = None
    bits: Bits = None
    epochs: _Positive = None
    batch_size: _Positive = None
    seed: Annotated[int, Field(ge=0)] = None
    top1: _Fraction = None
    top5: _Fraction = None
    val_top1_last: _Fraction = None
    val_top1_best: _Fraction = None
    deploy_top1: _Fraction = None
    deploy_top5: _Fraction = None
    deploy_agreement: _Fraction = None
    params: _Count = None
    nonzero_params: _Count = None
    footprint_bytes: _Count = None
    checkpoint_bytes: _Count = None
    deploy_bytes: _Count = None
    flops: _Count = None
    flops_effective: _Count = None
    bops: _Count = None
    test_samples: _Count = None
    world_size: _Positive = None
    train_it_s: _Rate = None
    train_samples_s: _Rate = None
    test_it_s: _Rate = None
    test_samples_s: _Rate = None
    deploy_test_samples_s: _Rate = None
    deploy_fp32_test_samples_s: _Rate = None
    deploy_x_fp32: _Rate = None
    wall_s: _Rate = None
    hardware: Optional[dict] = None
    layers: Optional[list] = None
    report: Optional[list] = None
    deploy_layers: Optional[dict] = None
    resumed_from_step: _Count = None


def record_problem(record, need: tuple[str, ...] = ()) -> str | None:
    """Why `record` (parsed JSON) is not a valid record, in a few words naming the field and its
    value (`top1=7.5: Input should be less than or equal to 1`); None if it is valid. `need`:
    keys that must be present (a table's row needs TABLE_KEYS)."""
    if not isinstance(record, dict):
        return f"a JSON {type(record).__name__}, not an object"
    missing = [k for k in need if k not in record]
    if missing:
        return f"{missing[0]}: missing; a record needs {', '.join(need)}"
    try:
        RecordSchema.model_validate(record)
    except ValidationError as e:
        err = e.errors()[0]
        key = ".".join(str(k) for k in err["loc"])
        value = json.dumps(err["input"], default=str) if err["type"] != "missing" else "(absent)"
        return f"{key}={value[:60]}: {err['msg']}"
    return None


def read_record(path: Path, need: tuple[str, ...] = ()) -> dict | None:
    """The record at `path`; None if it is missing, or not JSON or not a valid record
    (`record_problem`): then one line on stderr names the path and the field, and the record is
    skipped by whoever reads it (suites, tables, the report, earlier-run lookups)."""
    try:
        text = Path(path).read_text()
    except OSError:
        return None
    try:
        record = json.loads(text)
    except ValueError as e:
        problem = f"not valid JSON ({e})"
    else:
        problem = record_problem(record, need)
        if problem is None:
            return record
    print(f"warning: {path}: {problem}; skipped", file=sys.stderr)
    return None


def failure_record_path(run_dir: Path) -> Path:
    """Where a failed or interrupted attempt's record goes: record.json, unless that holds an
    earlier attempt's finished result (ok or diverged), which stays; then record.failed.json
    beside it (suites and sweeps then see the earlier result, and redo the run if its
    config_hash is not the one asked for)."""
    rec = read_record(Path(run_dir) / "record.json")
    finished = isinstance(rec, dict) and rec.get("status") in ("ok", "diverged")
    return Path(run_dir) / ("record.failed.json" if finished else "record.json")
