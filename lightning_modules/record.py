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
import tempfile
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

REPO = Path(__file__).resolve().parents[1]

# The code a run executes: its content (not mtimes) enters config_hash.
CODE = ("lightning_modules", "datamodules", "train.py")
# Keys that say where or how results are kept, not what was run: they do not enter config_hash.
NOT_HASHED = ("results_dir", "run_dir", "run_name", "logger", "wandb", "suite", "checkpoint", "resume")

RECORD_KEYS = ("suite", "run_name", "config_hash", "model", "method", "bits", "precision", "dataset",
               "epochs", "batch_size", "seed", "status", "top1", "top5", "train_it_s",
               "train_samples_s", "test_it_s", "test_samples_s", "params", "footprint_bytes",
               "checkpoint_bytes", "wall_s", "started_at", "git_sha", "hardware", "torch_version")


def header(cfg: DictConfig) -> dict:
    """What ran, from the config alone: the record's identity keys (every record has them, a
    finished run's and a sweep's failed-before-start one alike)."""
    return {"suite": cfg.suite.name, "run_name": cfg.run_name, "config_hash": config_hash(cfg),
            "model": cfg.model.name, "method": cfg.method.name, "method_label": cfg.method.get("label"),
            "bits": {k: int(cfg.bits[k]) for k in ("w", "a", "g")}, "precision": cfg.precision.name,
            "epochs": int(cfg.trainer.max_epochs), "batch_size": int(cfg.data.batch_size),
            "seed": int(cfg.seed), "code_hash": code_hash(), "torch_threads": torch_threads()}


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


def hardware() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    hw = {"cpu": cpu, "cpu_cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
          "gpu": None, "gpu_count": 0, "platform": platform.platform()}
    if torch.cuda.is_available():
        hw["gpu"] = torch.cuda.get_device_name(0)
        hw["gpu_count"] = torch.cuda.device_count()
    return hw


def hardware_line(hw: dict) -> str:
    if hw.get("gpu"):
        return f"{hw['gpu_count']}x {hw['gpu']}, {hw['cpu']}"
    return f"{hw['cpu']}, {hw['cpu_cores']} cores, {hw['torch_threads']} torch threads, no GPU"


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


def read_record(path: Path) -> dict | None:
    """The record at `path`, or None if it is missing or not (yet) valid JSON."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def failure_record_path(run_dir: Path) -> Path:
    """Where a failed or interrupted attempt's record goes: record.json, unless that holds an
    earlier attempt's finished result (ok or diverged), which stays; then record.failed.json
    beside it (suites and sweeps then see the earlier result, and redo the run if its
    config_hash is not the one asked for)."""
    rec = read_record(Path(run_dir) / "record.json")
    finished = isinstance(rec, dict) and rec.get("status") in ("ok", "diverged")
    return Path(run_dir) / ("record.failed.json" if finished else "record.json")
