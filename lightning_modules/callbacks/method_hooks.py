"""The Lightning side of every method: calls the method's training-time hooks.

The compression package is pure torch; this callback is the one place where Lightning's events
meet the method contract (compression/method.py): `check` at fit start, `on_time` at every epoch
and batch start (on every rank: methods broadcast their decisions from rank 0 themselves),
`after_step` after every optimizer step (a torch step post-hook on the run's optimizers, so it
runs exactly once per real step, with that step's learning rate), `unfinished` at the end of
training.
"""
from __future__ import annotations

import pytorch_lightning as pl

from ..compression.errors import ConfigError


class MethodHooks(pl.Callback):
    def __init__(self, method):
        self.method = method
        self._handles: list = []

    @staticmethod
    def _net(pl_module):
        return pl_module.net

    def on_fit_start(self, trainer, pl_module) -> None:
        self.method.check(trainer.max_epochs)

    def on_train_start(self, trainer, pl_module) -> None:
        net = self._net(pl_module)

        def after(optimizer, args, kwargs):
            self.method.after_step(net, float(optimizer.param_groups[0]["lr"]))
        self._handles = [opt.register_step_post_hook(after) for opt in trainer.optimizers]

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.method.on_time(self._net(pl_module), trainer.current_epoch, "epoch")

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.method.on_time(self._net(pl_module), trainer.global_step, "step")

    def on_train_end(self, trainer, pl_module) -> None:
        for h in self._handles:
            h.remove()
        why = self.method.unfinished()
        if why and not trainer.should_stop:
            raise ConfigError(why)
