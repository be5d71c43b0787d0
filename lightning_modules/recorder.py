"""One run's record.json from start to end: what ran (the header), what it measured (after fit,
test and export: accuracy, sizes, throughput, FLOPs/BOPs), where it went wrong (a failure).

`Recorder` is what run() holds: `make_dir()` creates the run directory, `guard(trainer, dm, module)`
wraps fit..export (a run that fails leaves its record, status failed and the error's first line,
and nothing else in its folder; a config the method rejects once training starts leaves nothing),
`measure(...)` fills in the results, `write(trainer)` writes the record (rank 0) and returns it.
"""
from __future__ import annotations

import copy
import logging
import math
import os
import shutil
import time
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig

from .callbacks import resume
from .callbacks.record_fields import RecordFields
from .compression.cost import cost
from .compression.pruning.magnitude import nonzero_params
from .config_check import ConfigError
from .loggers import finish
from .precision import loss_scale
from .record import failure_record_path, git_sha, hardware, ordered, write_json_atomic
from .record import header as config_header

log = logging.getLogger("harness")
SMALL_FILE = 4 << 20  # bytes: an earlier attempt's files up to this size are kept in memory


def header(cfg: DictConfig, dm, module: pl.LightningModule) -> dict:
    """What ran: the record's keys known before training (params of the net as built)."""
    return {**config_header(cfg), "dataset": dm.name, "status": "running",
            "params": sum(p.numel() for p in module.net.parameters()),
            "git_sha": git_sha(), "hardware": hardware(), "torch_version": torch.__version__}


def count_flops(net: torch.nn.Module, dm) -> int:
    """Forward FLOPs of one sample at the run's input size (torch.utils.flop_counter; a
    multiply-add counts 2), counted on a CPU copy so the trained net is untouched."""
    from torch.utils.flop_counter import FlopCounterMode
    net = copy.deepcopy(net).cpu().float().eval()
    x = torch.zeros(1, dm.in_channels, dm.image_size, dm.image_size)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        net(x)
    return int(counter.get_total_flops())


def interrupted_by(e: BaseException) -> str | None:
    """"SIGTERM" / "SIGINT" when `e` is how Lightning ends a fit on that signal (SIGTERMException,
    a SystemExit without a code; or, for Ctrl-C, sys.exit(1) raised while handling the
    KeyboardInterrupt), else None."""
    from pytorch_lightning.utilities.exceptions import SIGTERMException
    if isinstance(e, SIGTERMException):
        return "SIGTERM"
    if isinstance(e, KeyboardInterrupt) or (isinstance(e, SystemExit) and isinstance(e.__context__, KeyboardInterrupt)):
        return "SIGINT"
    return None


class Recorder:
    def __init__(self, cfg: DictConfig):
        self.cfg, self.dir = cfg, Path(cfg.run_dir)
        self.model_file, self.checkpoint_file = self.dir / "model.pt", self.dir / "last.ckpt"
        self.record = {"started_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        self.t_start = time.perf_counter()
        self.created: Path | None = None
        self.before: set[str] = set()  # the run directory's entries before this attempt
        self.saved: dict[str, bytes] = {}

    def make_dir(self) -> Path:
        # the highest folder this run creates: removed again if the config turns out to be bad
        self.created = next((d for d in reversed([self.dir, *self.dir.parents]) if not d.exists()), None)
        self.dir.mkdir(parents=True, exist_ok=True)
        # an earlier attempt killed while writing left its temporary files (the harness's own
        # `.<name>.<random>.tmp` / `.<name>.partial`, never renamed into place): they go
        for p in self.dir.iterdir():
            if p.is_file() and p.name.startswith(".") and p.name.endswith((".tmp", ".partial")):
                p.unlink(missing_ok=True)
        self.before = {p.name for p in self.dir.iterdir()}
        # an earlier attempt's small files that loggers rewrite in place (hparams.yaml,
        # metrics.csv): restored if this attempt fails; the large ones (model, checkpoint) are
        # only ever replaced whole, by a rename, once this attempt has them complete
        self.saved = {p.name: p.read_bytes() for p in self.dir.iterdir()
                      if p.is_file() and p.stat().st_size <= SMALL_FILE}
        return self.dir

    def remove_own_files(self) -> None:
        """Delete what this attempt created in the run directory and nothing else: an earlier
        attempt's files (a previous result) stay, bar the record, which says this attempt failed."""
        keep = set(map(str, resume.files(self.dir)))  # mid-run checkpoints: the next attempt continues
        for p in self.dir.iterdir():
            if p.name not in self.before and str(p) not in keep and str(p).removesuffix(".sha256") not in keep:
                shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
        for name, data in self.saved.items():
            path = self.dir / name
            if not path.is_file() or path.read_bytes() != data:
                tmp = path.with_name(f".{name}.restore")
                tmp.write_bytes(data)
                os.replace(tmp, path)

    @contextmanager
    def guard(self, trainer: pl.Trainer, dm, module: pl.LightningModule):
        self.record = {**header(self.cfg, dm, module), **self.record}
        try:
            yield self
        except ConfigError:
            # a config the method rejects once training starts (e.g. a schedule longer than the
            # run): bad input, so nothing is left behind
            if self.created is not None and trainer.is_global_zero:
                shutil.rmtree(self.created, ignore_errors=True)
            raise
        except BaseException as e:
            signal = interrupted_by(e)
            if signal:
                self.record.update({"status": "interrupted", "error": f"{signal} received"})
            else:
                self.record.update({"status": "failed", "error": f"{type(e).__name__}: {e}".splitlines()[0]})
            if trainer.is_global_zero:
                self.record["wall_s"] = time.perf_counter() - self.t_start
                # no half-written file of this attempt beside the record (exports are atomic, so
                # an earlier attempt's model file is either untouched or wholly replaced)
                self.remove_own_files()
                write_json_atomic(failure_record_path(self.dir), ordered(self.record))
                finish(trainer.loggers, ordered(self.record), exit_code=1)
            raise

    def measure(self, trainer: pl.Trainer, module: pl.LightningModule, dm) -> None:
        """The results, after fit, test, checkpoint and export."""
        diverged, metrics, zero = module.diverged, trainer.callback_metrics, trainer.is_global_zero
        for cb in trainer.callbacks:  # the throughput meter, gradient compression (conf/callbacks/)
            if isinstance(cb, RecordFields):
                self.record.update(cb.fields(trainer))
        self.record.update({
            "status": "diverged" if diverged else "ok",
            "top1": None if diverged else float(metrics["test/top1"]),
            "top5": None if diverged else float(metrics["test/top5"]),
            "test_samples": None if diverged else int(module.test_samples),
            "footprint_bytes": self.model_file.stat().st_size if zero else None,
            "checkpoint_bytes": self.checkpoint_file.stat().st_size if zero else None,
            "model_file": str(self.model_file), "checkpoint_file": str(self.checkpoint_file),
            "params": sum(p.numel() for p in module.net.parameters()),
            "nonzero_params": nonzero_params(module.net),
            "flops": count_flops(module.net, dm),
            "report": module.method.report(module.net),  # the method's per-layer rows (Deep Compression)
            "compute_dtype": module.compute_dtype, "loss_scale": loss_scale(trainer.precision_plugin),
            "world_size": trainer.world_size,
            # the machine's 1-minute load average when training and testing ended: throughput is
            # only as good as the machine was quiet (one torch thread per process when it was not)
            "load_avg": round(os.getloadavg()[0], 2),
        })
        # per layer (name, type, bits, params, MACs, BOPs) at the bits the method declares for it;
        # BOPs of the layers with quantized weights and inputs, FLOPs + BOPs/64 (compression/cost.py)
        self.record.update(cost(module.net, (dm.in_channels, dm.image_size, dm.image_size),
                                module.method.layer_bits(module.net), self.record["flops"]))

    def write(self, trainer: pl.Trainer) -> dict:
        self.record["wall_s"] = time.perf_counter() - self.t_start
        record = ordered(self.record)
        if trainer.is_global_zero:
            write_json_atomic(self.dir / "record.json", record)
            finish(trainer.loggers, record)
            log.info("record    %s (top1=%s, train %.1f it/s, test %.1f it/s, footprint %s B)",
                     self.dir / "record.json", record["top1"], record.get("train_it_s") or math.nan,
                     record.get("test_it_s") or math.nan, record["footprint_bytes"])
        return record
