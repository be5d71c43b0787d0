"""Sweeps: `train.py -m model=lenet5,resnet8 bits.w=1,2,4 bits.a=2,4` (any launcher).

Each job is one run with its own record. In a sweep, train.py hands each job to `job()`:
- a run already done (its record has status ok and the same config_hash) is skipped, so
  rerunning a sweep redoes only what failed or never ran;
- a run that fails leaves its record with status "failed" and the error line (run.py writes it;
  `job()` writes one when the run failed before run.py could) and the sweep goes on;
- each job writes its outcome to `<sweep dir>/jobs/<job number>.json` (one file per job, written
  atomically: local processes and SLURM nodes on a shared file system alike).
`SweepReport`, a Hydra callback (conf/config.yaml), lists the outcomes when the sweep ends;
train.py then exits 1 if any run failed (`failures()`).
"""
from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from .config_check import ConfigError
from .record import config_hash, failure_record_path, header, ordered, read_record, write_json_atomic

log = logging.getLogger("harness")
_FAILED: list[dict] = []  # filled by SweepReport in the process that launched the sweep


def _error_line(e: BaseException) -> str:
    line = f"{type(e).__name__}: {e}".strip().splitlines()
    return line[0] if line else type(e).__name__


def done(record_path: Path, cfg_hash: str) -> dict | None:
    """The record at `record_path` if its run is done: status ok and this config_hash (the one
    skip-if-done rule, for sweeps and suites alike)."""
    rec = read_record(record_path)
    if rec and rec.get("status") == "ok" and rec.get("config_hash") == cfg_hash:
        return rec
    return None


def failed_record(cfg: DictConfig, error: str) -> dict:
    """A record for a run that failed before run.py wrote one (the contract's keys, unknowns None)."""
    return ordered({**header(cfg), "status": "failed", "error": error})


# keys the default run_name is made of, and keys that say where results go: a sweep over anything
# else would give several jobs one run directory
NAMED = ("model", "method", "bits", "bits.w", "bits.a", "bits.g", "precision", "seed", "results_dir",
         "logger", "callbacks", "suite", "deploy")


def sweep_run_name(run_name: str, task_overrides: list[str]) -> str:
    """The job's run name: as configured when the sweep sets `run_name` itself or varies only the
    keys the default name spells out; else `<name>-<6 hex of the swept overrides outside it>`
    ($LWB_SWEPT: the keys given several values; all overrides when unknown), so
    `-m data.train_subset=256,512` gives two runs two directories (the same job of a re-run
    gets the same name: the skip-if-done rule still finds it)."""
    import hashlib
    keys = [o.partition("=")[0].lstrip("+~") for o in task_overrides]
    if "run_name" in keys or "run_dir" in keys:
        return run_name
    import os
    swept = os.environ.get("LWB_SWEPT")  # the keys the launching train.py saw swept (train.py)
    swept = None if swept is None else set(swept.split(","))
    other = sorted(o for o, k in zip(task_overrides, keys)
                   if k not in NAMED and not k.startswith(("hydra.", "hydra/", "wandb."))
                   and (swept is None or k in swept))
    if not other:
        return run_name
    return f"{run_name}-{hashlib.sha1(chr(10).join(other).encode()).hexdigest()[:6]}"


def job(cfg: DictConfig, run) -> dict:
    """One job of a sweep: skip if done, else `run(cfg)`; never raises for a failed run."""
    from datamodules.fashion_mnist import DataError

    cfg.run_name = sweep_run_name(cfg.run_name, list(HydraConfig.get().overrides.task))
    record_path = Path(cfg.run_dir) / "record.json"
    outcome = {"run_name": cfg.run_name, "run_dir": str(cfg.run_dir), "config_hash": config_hash(cfg)}
    if done(record_path, outcome["config_hash"]):
        log.info("skip      %s (done, config_hash %s)", cfg.run_name, outcome["config_hash"])
        outcome["status"] = "skipped"
    else:
        try:
            outcome["status"] = run(cfg)["status"]
        except (ConfigError, DataError) as e:  # bad input: nothing written, said in one line
            outcome.update(status="failed", error=str(e))
            print(f"error: {e}", file=sys.stderr)
        except Exception as e:
            outcome.update(status="failed", error=_error_line(e))
            log.exception("run %s failed", cfg.run_name)
            target = failure_record_path(record_path.parent)
            rec = read_record(target)
            if not rec or rec.get("status") not in ("failed", "interrupted") \
                    or rec.get("config_hash") != outcome["config_hash"]:
                write_json_atomic(target, failed_record(cfg, outcome["error"]))
    hc = HydraConfig.get()
    write_json_atomic(Path(hc.sweep.dir) / "jobs" / f"{hc.job.num}.json", outcome)
    return outcome


def outcomes(sweep_dir: Path) -> list[dict]:
    """The sweep's job outcomes (jobs/<n>.json: run_name, status ok / skipped / diverged /
    failed): not records, so not read through the record schema (which has no `skipped`)."""
    files = sorted(Path(sweep_dir).glob("jobs/*.json"), key=lambda p: int(p.stem))
    out = []
    for p in files:
        try:
            o = json.loads(p.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(o, dict) and "status" in o:
            out.append(o)
    return out


class SweepReport(Callback):
    """At the end of a sweep: how many runs finished, were skipped or failed; the failures listed."""

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        outs = outcomes(Path(config.hydra.sweep.dir))
        counts = {s: sum(o["status"] == s for o in outs) for s in ("ok", "skipped", "diverged", "failed")}
        print(f"sweep: {len(outs)} runs: " + ", ".join(f"{n} {s}" for s, n in counts.items() if n)
              + f" (outcomes in {Path(config.hydra.sweep.dir) / 'jobs'})", flush=True)
        _FAILED[:] = [o for o in outs if o["status"] == "failed"]
        if _FAILED:
            lines = [f"  {o['run_name']}: {o.get('error')}" for o in _FAILED]
            print(f"error: {len(_FAILED)} run(s) failed:", *lines, sep="\n", file=sys.stderr, flush=True)


def failures() -> list[dict]:
    """The failed runs of the sweep this process launched (empty for a single run)."""
    return list(_FAILED)
