"""The Lightning side of every method: calls the method's training-time hooks.

The compression package is pure torch; this callback is the one place where Lightning's events
meet the method contract (compression/method.py): `check` at fit start, `on_time` at every epoch
and batch start (on every rank: methods broadcast their decisions from rank 0 themselves),
`after_step` after every optimizer step (a torch step post-hook on the run's optimizers, so it
runs exactly once per real step, with that step's learning rate), `unfinished` at the end of
training, and `finalize` after fit (run.py calls `finalize(module)`).

One-off compression work is timed here: every `on_time` call and `finalize` add their seconds
(CUDA synchronised) to `compression_s`, a record field. The throughput meter reads the running
total at each clock reading and subtracts what was spent in between, so pruning steps, k-means
and PQ's EM never count as training time, whatever the order the callbacks run in.
`after_step` runs every step and stays in the training clock.
"""
from __future__ import annotations

import time

import torch

from ..compression import faults
from ..compression.errors import ConfigError
from .record_fields import RecordFields


class MethodHooks(RecordFields):
    def __init__(self, method):
        self.method = method
        self.compression_s = 0.0  # seconds of on_time calls and finalize so far (monotonic)
        self._handles: list = []

    @staticmethod
    def _net(pl_module):
        return pl_module.net

    def _timed(self, pl_module, fn):
        cuda = pl_module.device.type == "cuda"
        if cuda:
            torch.cuda.synchronize(pl_module.device)
        t0 = time.perf_counter()
        try:
            return fn()
        finally:
            if cuda:
                torch.cuda.synchronize(pl_module.device)
            self.compression_s += time.perf_counter() - t0

    def on_fit_start(self, trainer, pl_module) -> None:
        self.method.check(trainer.max_epochs)

    def on_train_start(self, trainer, pl_module) -> None:
        net = self._net(pl_module)

        def after(optimizer, args, kwargs):
            self.method.after_step(net, float(optimizer.param_groups[0]["lr"]))
        self._handles = [opt.register_step_post_hook(after) for opt in trainer.optimizers]

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        net = self._net(pl_module)
        if self._timed(pl_module, lambda: self.method.on_time(net, trainer.current_epoch, "epoch")):
            faults.point("method_step")

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        net = self._net(pl_module)
        if self._timed(pl_module, lambda: self.method.on_time(net, trainer.global_step, "step")):
            faults.point("method_step")

    def on_train_end(self, trainer, pl_module) -> None:
        for h in self._handles:
            h.remove()
        why = self.method.unfinished()
        if why and not trainer.should_stop:
            raise ConfigError(why)

    def finalize(self, pl_module) -> None:
        """The trained structure made physical (filter pruning drops masked channels), timed."""
        pl_module.net = self._timed(pl_module, lambda: self.method.finalize(pl_module.net))

    # a mid-run checkpoint (callbacks/resume.py) holds the method's own state and the time spent
    def state_dict(self) -> dict:
        return {"method": self.method.state_dict(), "compression_s": self.compression_s}

    def load_state_dict(self, state: dict) -> None:
        self.method.load_state_dict(state["method"])
        self.compression_s = float(state["compression_s"])

    def fields(self, trainer) -> dict:
        return {"compression_s": self.compression_s}
