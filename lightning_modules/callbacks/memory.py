"""Peak memory of training and of testing: `peak_train_mem_bytes`, `peak_test_mem_bytes`.

`mem_measure` (record) says what the two numbers are:
- "cuda_max_allocated": `torch.cuda.max_memory_allocated` of the run's device, reset when fit
  (and test) starts: the tensors PyTorch allocated (weights, gradients, optimizer state,
  activations kept for backward, workspace), not the caching allocator's reserve;
- "cpu_peak_rss": the peak resident set (VmHWM) of the whole process, reset when fit (and test)
  starts by writing 5 to /proc/self/clear_refs (Linux): Python, torch's libraries and the
  in-memory dataset are in it, so a bigger net shows as a difference, not as the whole number;
- "cpu_peak_rss_since_start": the same where the peak cannot be reset (not Linux): the peak of
  the process so far (getrusage), an upper bound for each phase.
Training's peak includes validation inside fit. Under DDP the figures are rank 0's.
"""
from __future__ import annotations

import resource
import sys
from pathlib import Path

import pytorch_lightning as pl
import torch

from .record_fields import RecordFields

STATUS, CLEAR_REFS = Path("/proc/self/status"), Path("/proc/self/clear_refs")


def reset_peak_rss() -> bool:
    """Reset the process's VmHWM to its current RSS (Linux); False where that is not possible."""
    try:
        CLEAR_REFS.write_text("5")
        return True
    except OSError:
        return False


def peak_rss_bytes() -> int:
    """The process's peak resident set in bytes: VmHWM (since the last reset) or getrusage."""
    try:
        for line in STATUS.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024  # kB
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # bytes on macOS, kB on Linux


class PeakMemory(RecordFields):
    def __init__(self):
        self.train: int | None = None
        self.test: int | None = None
        self.measure: str | None = None

    def _start(self, pl_module) -> None:
        if pl_module.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(pl_module.device)
            self.measure = "cuda_max_allocated"
        else:
            self.measure = "cpu_peak_rss" if reset_peak_rss() else "cpu_peak_rss_since_start"

    @staticmethod
    def _peak(pl_module) -> int:
        if pl_module.device.type == "cuda":
            return int(torch.cuda.max_memory_allocated(pl_module.device))
        return peak_rss_bytes()

    def on_fit_start(self, trainer, pl_module) -> None:
        self._start(pl_module)

    def on_fit_end(self, trainer, pl_module) -> None:
        self.train = self._peak(pl_module)

    def on_test_start(self, trainer, pl_module) -> None:
        self._start(pl_module)

    def on_test_end(self, trainer, pl_module) -> None:
        self.test = self._peak(pl_module)

    def fields(self, trainer: pl.Trainer) -> dict:
        return {"peak_train_mem_bytes": self.train, "peak_test_mem_bytes": self.test,
                "mem_measure": self.measure}
