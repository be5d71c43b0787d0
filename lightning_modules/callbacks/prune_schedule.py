"""Run a Deep Compression method's schedule (pruning ramp, k-means step) during training.

The compression package stays Lightning-free: the method offers `on_time(net, t, interval)`
(prune / cluster when the schedule says so) and this callback calls it at the start of every
training epoch (t = current_epoch) and batch (t = global_step), on every rank (the masks and
centroids are broadcast from rank 0 inside). A schedule that cannot finish within
`trainer.max_epochs` fails at fit start with a one-line ConfigError; one that did not finish
(a step schedule past the last step) fails at the end of training.
"""
from __future__ import annotations

import pytorch_lightning as pl

from ..config_check import ConfigError


class CompressionSchedule(pl.Callback):
    def __init__(self, method):
        self.method = method

    @staticmethod
    def _net(pl_module):
        return getattr(pl_module, "net", pl_module)

    def on_fit_start(self, trainer, pl_module) -> None:
        last = self.method.last_time()
        max_epochs = trainer.max_epochs
        if last and last[0] == "epoch" and isinstance(max_epochs, int) and 0 < max_epochs <= last[1]:
            raise ConfigError(f"{last[2]}={last[1]}: must be < trainer.max_epochs={max_epochs} "
                              "(epochs count from 0)")

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.method.on_time(self._net(pl_module), trainer.current_epoch, "epoch")

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.method.on_time(self._net(pl_module), trainer.global_step, "step")

    def on_train_end(self, trainer, pl_module) -> None:
        why = self.method.unfinished()
        if why and not trainer.should_stop:
            raise ConfigError(why)
