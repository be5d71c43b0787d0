"""Model-only step time: forward + loss + backward + optimizer step, without the loop around it.

`model_step_ms` (record) is the median over the steady training steps (the first `warmup_steps`
excluded, as the throughput meter does) of the time from the LightningModule's forward (a forward
pre-hook: `training_step` calls `self(x)`, the batch already loaded and on the device) to the end
of the optimizer step (a step post-hook registered after the method's `after_step`, so that runs
inside). In between: the method's loss (a teacher's forward for KD), the loss check, zero_grad,
backward, the optimizer and the method's `after_step`, plus the four near-empty Lightning hooks
inside automatic optimization (on_before_zero_grad, on_before_backward, on_after_backward,
on_before_optimizer_step) and `self.log` on logging steps. Outside: fetching the batch, the batch
hooks (the method's `on_time`, the throughput meter, the divergence check), the LR scheduler and
the loop's bookkeeping: compare with `loop_step_ms` (callbacks/throughput.py), the wall time per
step of the whole loop.

On CUDA two events per step are recorded and read once they are done (no synchronisation is
added); on CPU `time.perf_counter`. Under DDP the figure is rank 0's and includes its gradient
all-reduce (it runs inside backward).
"""
from __future__ import annotations

import statistics
import time

import pytorch_lightning as pl
import torch

from .record_fields import RecordFields


class StepTime(RecordFields):
    def __init__(self, warmup_steps: int = 5):
        self.warmup_steps = warmup_steps
        self.steps = 0          # training steps begun (all epochs)
        self.ms: list[float] = []
        self._pending: list = []  # CUDA (start, end) event pairs not read yet
        self._t0 = None         # this step's start (a float on CPU, an event on CUDA)
        self._handles: list = []
        self._post_hooked = False

    def _mark(self, pl_module):
        if pl_module.device.type == "cuda":
            ev = torch.cuda.Event(enable_timing=True)
            ev.record()
            return ev
        return time.perf_counter()

    def on_train_start(self, trainer, pl_module) -> None:
        def before_forward(module, args):
            if module.training and self._t0 is None:  # the first forward of a step
                self._t0 = self._mark(module)
        self._handles = [pl_module.register_forward_pre_hook(before_forward)]
        self._post_hooked = False

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if not self._post_hooked:  # after MethodHooks' on_train_start: the method's after_step runs first
            self._handles += [opt.register_step_post_hook(lambda *a, m=pl_module: self._end(m))
                              for opt in trainer.optimizers]
            self._post_hooked = True
        self._t0 = None

    def _end(self, pl_module) -> None:
        if self._t0 is None:  # a step without a forward through the module (not this harness's)
            return
        self.steps += 1
        t0, self._t0 = self._t0, None
        if self.steps <= self.warmup_steps:
            return
        if isinstance(t0, float):
            self.ms.append(1000 * (time.perf_counter() - t0))
        else:
            self._pending.append((t0, self._mark(pl_module)))
            self._read(block=False)

    def _read(self, block: bool) -> None:
        """Elapsed times of the finished CUDA event pairs (all of them when `block`)."""
        while self._pending and (block or self._pending[0][1].query()):
            start, end = self._pending.pop(0)
            end.synchronize()
            self.ms.append(start.elapsed_time(end))

    def on_train_end(self, trainer, pl_module) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []
        self._read(block=True)

    def fields(self, trainer: pl.Trainer) -> dict:
        self._read(block=True)
        return {"model_step_ms": statistics.median(self.ms) if self.ms else None}
