"""Measured training and test throughput, the documents' "Thruput." columns.

Steady state: the first `warmup_steps` training (and test) batches are excluded. Data loading is
included: each interval runs from the end of one batch (or the start of the epoch) to the end of
the next, so fetching the batch counts. Excluded from the training clock: validation (the clock
restarts when validation ends) and the method's one-off compression work (MethodHooks times its
`on_time` calls into `compression_s`; the seconds spent between two clock readings are
subtracted from that interval). On CUDA the device is synchronized before each clock reading.

Samples/s is global: each rank counts its own batches, and every DDP rank runs the same number of
training steps in parallel, so the per-rank rate is multiplied by the world size.

A loop with no batch after the warm-up (tiny test runs, a 2-batch test set) is measured over all
its batches and marked `steady: False` (`train_steady` / `test_steady` in the record): such a
figure includes the warm-up and must be marked as such wherever it is shown.

`loop_step_ms` is the median training interval (steady batches): the loop's wall time per step,
beside `model_step_ms` (callbacks/step_time.py), the forward + backward + optimizer time alone.
The meter also drives StepTime and PeakMemory (callbacks/memory.py) and returns their fields:
Lightning calls every hook of every callback in the Trainer on every step, overridden or not,
through a profiler context, so each extra callback costs the loop time on every step.

On a CPU-only machine the meter also undoes one per-step cost that importing Lightning adds
(`nvml_check_off`), so the clock measures training, not a failing driver probe.
"""
from __future__ import annotations

import ctypes
import os
import statistics
import time
from dataclasses import dataclass, field

import pytorch_lightning as pl
import torch

from .memory import PeakMemory
from .method_hooks import MethodHooks
from .record_fields import RecordFields
from .step_time import StepTime


@dataclass
class _Clock:
    warmup: int
    seen: int = 0           # batches seen in this loop (all epochs)
    t0: float | None = None
    excluded0: float = 0.0  # the excluded-work total at t0
    steady_s: float = 0.0
    steady_batches: int = 0
    steady_samples: int = 0
    all_s: float = 0.0
    all_batches: int = 0
    all_samples: int = 0
    steady_dts: list = field(default_factory=list)  # each steady interval (s), for the median

    def start(self, now: float, excluded: float = 0.0) -> None:
        self.t0, self.excluded0 = now, excluded

    def tick(self, now: float, samples: int, excluded: float = 0.0) -> None:
        """One batch ended at `now`; `excluded` = the running total of excluded seconds."""
        if self.t0 is None:  # a fit resumed mid-epoch (no epoch start): the clock starts here
            self.start(now, excluded)
            return
        dt = (now - self.t0) - (excluded - self.excluded0)
        self.t0, self.excluded0 = now, excluded
        self.seen += 1
        self.all_s += dt
        self.all_batches += 1
        self.all_samples += samples
        if self.seen > self.warmup:
            self.steady_s += dt
            self.steady_batches += 1
            self.steady_samples += samples
            self.steady_dts.append(dt)

    def result(self, world_size: int) -> dict:
        steady = self.steady_batches > 0
        s, b, n = ((self.steady_s, self.steady_batches, self.steady_samples) if steady
                   else (self.all_s, self.all_batches, self.all_samples))
        if b == 0 or s <= 0:
            return {"it_s": None, "samples_s": None, "batches": 0, "steady": False}
        # every rank runs the same number of steps in parallel: global samples/s = per-rank x world
        return {"it_s": b / s, "samples_s": n * world_size / s, "batches": b, "steady": steady}

    def median_ms(self) -> float | None:
        """The median steady interval in ms (None before any steady batch)."""
        return 1000 * statistics.median(self.steady_dts) if self.steady_dts else None


def nvml_check_off() -> bool:
    """Unset PYTORCH_NVML_BASED_CUDA_CHECK where NVML cannot be loaded; True if it was unset.

    Importing lightning_fabric sets it to 1 (a CUDA check that does not initialise CUDA, for
    fork safety). Then every `torch.cuda.is_available()` asks NVML first, and before CUDA is
    initialised nothing is cached: on a machine without the NVIDIA driver each call dlopens
    libnvidia-ml.so.1, fails, and falls back to the runtime's check anyway. Adam and AdamW call it
    on every step (`_accelerator_graph_capture_health_check`): ~0.06 ms a step here, about 2 % of a
    LeNet-300-100 step at batch 32. Without NVML the variable changes no answer, only the cost."""
    if os.environ.get("PYTORCH_NVML_BASED_CUDA_CHECK") != "1":
        return False
    try:
        ctypes.CDLL("libnvidia-ml.so.1")
    except OSError:
        del os.environ["PYTORCH_NVML_BASED_CUDA_CHECK"]
        return True
    return False


class ThroughputMeter(RecordFields):
    def __init__(self, warmup_steps: int = 5):
        self.warmup_steps = warmup_steps
        self.train = _Clock(warmup_steps)
        self.test = _Clock(warmup_steps)
        self.parts = (StepTime(warmup_steps), PeakMemory())  # driven from this callback's hooks

    def setup(self, trainer, pl_module, stage):
        nvml_check_off()

    def _parts(self, hook: str, trainer, pl_module, *args) -> None:
        for part in self.parts:
            getattr(part, hook)(trainer, pl_module, *args)

    def on_fit_start(self, trainer, pl_module):
        self._parts("on_fit_start", trainer, pl_module)

    def on_fit_end(self, trainer, pl_module):
        self._parts("on_fit_end", trainer, pl_module)

    def on_train_start(self, trainer, pl_module):
        self._parts("on_train_start", trainer, pl_module)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self._parts("on_train_batch_start", trainer, pl_module, batch, batch_idx)

    def on_before_backward(self, trainer, pl_module, loss):
        self._parts("on_before_backward", trainer, pl_module, loss)

    def on_after_backward(self, trainer, pl_module):
        self._parts("on_after_backward", trainer, pl_module)

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        self._parts("on_before_optimizer_step", trainer, pl_module, optimizer)

    def on_train_end(self, trainer, pl_module):
        self._parts("on_train_end", trainer, pl_module)

    def on_test_start(self, trainer, pl_module):
        self._parts("on_test_start", trainer, pl_module)

    def on_test_end(self, trainer, pl_module):
        self._parts("on_test_end", trainer, pl_module)

    @staticmethod
    def _now(pl_module: pl.LightningModule) -> float:
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)
        return time.perf_counter()

    @staticmethod
    def _excluded(trainer) -> float:
        """Seconds of one-off compression work so far (MethodHooks.compression_s)."""
        return sum(cb.compression_s for cb in trainer.callbacks if isinstance(cb, MethodHooks))

    @staticmethod
    def _samples(batch) -> int:
        x = batch[0] if isinstance(batch, (list, tuple)) else batch
        return int(x.shape[0]) if hasattr(x, "shape") else 1

    def on_train_epoch_start(self, trainer, pl_module):
        self.train.start(self._now(pl_module), self._excluded(trainer))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.train.tick(self._now(pl_module), self._samples(batch), self._excluded(trainer))

    def on_validation_end(self, trainer, pl_module):
        # validation inside a training epoch (val_check_interval < 1): the next interval starts
        # here (at an epoch's end the next epoch restarts the clock anyway)
        self.train.start(self._now(pl_module), self._excluded(trainer))

    def on_test_epoch_start(self, trainer, pl_module):
        self.test.start(self._now(pl_module))

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        self.test.tick(self._now(pl_module), self._samples(batch))

    def summary(self, world_size: int = 1) -> dict:
        tr, te = self.train.result(world_size), self.test.result(world_size)
        return {"train_it_s": tr["it_s"], "train_samples_s": tr["samples_s"],
                "test_it_s": te["it_s"], "test_samples_s": te["samples_s"],
                "train_steady": tr["steady"], "test_steady": te["steady"],
                "throughput_steady": tr["steady"] and te["steady"],
                "loop_step_ms": self.train.median_ms()}

    def fields(self, trainer: pl.Trainer) -> dict:
        out = self.summary(trainer.world_size)
        for part in self.parts:
            out.update(part.fields(trainer))
        return out
