"""Model-only step time: forward + loss + backward + optimizer update, without the loop around it.

`model_step_ms` (record) is the median over the steady training steps (the first `warmup_steps`
excluded, as the throughput meter does) of the sum of three spans of each step:
1. forward and loss: from the LightningModule's forward (a forward pre-hook: `training_step`
   calls `self(x)`, the batch already loaded and on the device) to `on_before_backward`: the
   method's loss (a teacher's forward for KD), the loss check, zero_grad;
2. backward: `on_before_backward` to `on_after_backward` (under DDP the gradient all-reduce);
3. the optimizer: `on_before_optimizer_step` to a step post-hook registered after the method's
   `after_step`, so the update and `after_step` (gradient clipping, if configured, too).
Lightning runs 1 and 2 inside `optimizer.step(closure)`; the time between the spans is its
closure and hook machinery and stays out, as do fetching the batch, the batch hooks (the method's
`on_time`, the throughput meter, the divergence check), the LR scheduler and the loop's
bookkeeping: compare with `loop_step_ms` (callbacks/throughput.py), the wall time per step of the
whole loop. Several forward/backward passes per step (gradient accumulation) add up.

On CUDA each span is a pair of events, read once they are done (no synchronisation is added);
on CPU `time.perf_counter`. Under DDP the figure is rank 0's. The throughput meter drives this
callback (one callback less for Lightning to call on every step).
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
        self.steps = 0          # optimizer steps ended (all epochs)
        self.ms: list[float] = []
        self._pending: list = []  # CUDA: each step's [(start, end) event pairs] not read yet
        self._open = None       # the open span's start (a float on CPU, an event on CUDA)
        self._spans: list = []  # this step's closed spans
        self._handles: list = []
        self._post_hooked = False

    def _mark(self, pl_module):
        if pl_module.device.type == "cuda":
            ev = torch.cuda.Event(enable_timing=True)
            ev.record()
            return ev
        return time.perf_counter()

    def _begin(self, pl_module) -> None:
        if self._open is None:
            self._open = self._mark(pl_module)

    def _close(self, pl_module) -> None:
        if self._open is not None:
            self._spans.append((self._open, self._mark(pl_module)))
            self._open = None

    def on_train_start(self, trainer, pl_module) -> None:
        def before_forward(module, args):
            if module.training:  # not validation inside the epoch
                self._begin(module)
        self._handles = [pl_module.register_forward_pre_hook(before_forward)]
        self._post_hooked = False

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if not self._post_hooked:  # after MethodHooks' on_train_start: the method's after_step runs first
            self._handles += [opt.register_step_post_hook(lambda *a, m=pl_module: self._end(m))
                              for opt in trainer.optimizers]
            self._post_hooked = True

    def on_before_backward(self, trainer, pl_module, loss) -> None:
        self._close(pl_module)
        self._begin(pl_module)

    def on_after_backward(self, trainer, pl_module) -> None:
        self._close(pl_module)

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        self._begin(pl_module)

    def _end(self, pl_module) -> None:
        self._close(pl_module)
        spans, self._spans = self._spans, []
        if not spans:  # a step without a forward through the module (not this harness's)
            return
        self.steps += 1
        if self.steps <= self.warmup_steps:
            return
        if isinstance(spans[0][0], float):
            self.ms.append(1000 * sum(end - start for start, end in spans))
        else:
            self._pending.append(spans)
            self._read(block=False)

    def _read(self, block: bool) -> None:
        """Elapsed times of the finished CUDA steps (all of them when `block`)."""
        while self._pending and (block or self._pending[0][-1][1].query()):
            spans = self._pending.pop(0)
            spans[-1][1].synchronize()
            self.ms.append(sum(start.elapsed_time(end) for start, end in spans))

    def on_train_end(self, trainer, pl_module) -> None:
        for h in self._handles:
            h.remove()
        self._handles, self._open, self._spans = [], None, []
        self._read(block=True)

    def fields(self, trainer: pl.Trainer) -> dict:
        self._read(block=True)
        return {"model_step_ms": statistics.median(self.ms) if self.ms else None}
