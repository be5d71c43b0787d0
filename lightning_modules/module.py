"""The one LightningModule of the project: net + method + metrics + measurement hooks.

Everything that differs between compression methods lives in the method object
(`lightning_modules.compression.method.Method`): this module asks it to transform the net, for
its callbacks and for an extra loss; it never branches on the method's name.
"""
from __future__ import annotations

import inspect
import math
from typing import Callable

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.classification import MulticlassAccuracy

from .callbacks.method_hooks import MethodHooks
from .compression.method import Method


class CompressionModule(pl.LightningModule):
    def __init__(self, net: nn.Module, method: Method, optimizer: Callable, num_classes: int,
                 scheduler: Callable | None = None, scheduler_interval: str = "step"):
        super().__init__()
        self.method = method
        self.net = method.apply(net)
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self.scheduler_interval = scheduler_interval
        k = min(5, num_classes)
        self.val_top1 = MulticlassAccuracy(num_classes, top_k=1, average="micro")
        self.val_top5 = MulticlassAccuracy(num_classes, top_k=k, average="micro")
        self.test_top1 = MulticlassAccuracy(num_classes, top_k=1, average="micro")
        self.test_top5 = MulticlassAccuracy(num_classes, top_k=k, average="micro")
        self.diverged = False
        self.compute_dtype: str | None = None  # dtype of the logits in the first training step
        self.test_samples = torch.zeros((), dtype=torch.long)  # summed over ranks in on_test_epoch_end
        # a device flag, set by any non-finite training loss since the last divergence check: no
        # host sync per step (on GPU); read and reduced over ranks every log_every_n_steps steps
        self._nonfinite = torch.zeros((), dtype=torch.bool)
        # one MethodHooks for the module's life: fit and test attach the same object, so its
        # compression_s survives until the record is written
        self.hooks = MethodHooks(method)

    def __setattr__(self, name: str, value) -> None:
        # Lightning sets `_current_fx_name` on the module around every hook it calls, ~46 times a
        # training step (cProfile); nn.Module.__setattr__ first checks the value against
        # Parameter, Module and buffer (Parameter's isinstance is a Python-level check): 3.3 us a
        # call against 0.3 us stored directly (timeit, 2-core EPYC). A str/None name is never a
        # parameter, module or buffer, so storing it directly changes nothing else
        if name == "_current_fx_name":
            object.__setattr__(self, name, value)
        else:
            super().__setattr__(name, value)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        logits = self(x)
        if self.compute_dtype is None:
            self.compute_dtype = str(logits.dtype).removeprefix("torch.")
        loss = self.method.loss(logits, y, batch)
        if loss is None:
            loss = F.cross_entropy(logits, y)
        if self._nonfinite.device != loss.device:
            self._nonfinite = self._nonfinite.to(loss.device)
        torch.logical_or(self._nonfinite, ~torch.isfinite(loss.detach()), out=self._nonfinite)
        # Lightning's logging costs ~0.2 ms a call: log on the steps the logger writes anyway. A
        # progress-bar value is converted to a Python number (.item(), a CUDA sync) on every step
        # after the first log, so only where a progress bar shows it
        if self.trainer.global_step % self.trainer.log_every_n_steps == 0:
            self.log("train/loss", loss, on_step=True, on_epoch=False,
                     prog_bar=self.trainer.progress_bar_callback is not None)
        return loss

    # Lightning reads training_step's signature on every step (does it take batch_idx?):
    # inspect.signature returns a function's __signature__ when it has one
    training_step.__signature__ = inspect.signature(training_step)

    def on_train_batch_end(self, outputs, batch, batch_idx):
        # a NaN/inf loss on any rank stops every rank within log_every_n_steps steps (one host read
        # and, under DDP, one collective per check, on the steps that log anyway); the run ends
        # with status "diverged"
        if self.trainer.global_step % self.trainer.log_every_n_steps == 0:
            self._check_divergence()

    def on_train_end(self):
        self._check_divergence()  # the steps since the last check (every rank calls it)

    def _check_divergence(self) -> None:
        bad = bool(self._nonfinite)
        if self.trainer.strategy.reduce_boolean_decision(bad, all=False):
            self.diverged = True
            self.trainer.should_stop = True

    def _eval_step(self, batch, top1: MulticlassAccuracy, top5: MulticlassAccuracy, prefix: str):
        x, y = batch
        logits = self(x)
        top1.update(logits, y)
        top5.update(logits, y)
        self.log(f"{prefix}/top1", top1, on_step=False, on_epoch=True, prog_bar=prefix == "val")
        self.log(f"{prefix}/top5", top5, on_step=False, on_epoch=True)
        return logits

    def validation_step(self, batch, batch_idx):
        self._eval_step(batch, self.val_top1, self.val_top5, "val")

    def on_test_epoch_start(self):
        self.test_samples = torch.zeros((), dtype=torch.long, device=self.device)

    def test_step(self, batch, batch_idx):
        self.test_samples += batch[1].numel()
        self._eval_step(batch, self.test_top1, self.test_top5, "test")

    def on_test_epoch_end(self):
        self.test_samples = self.trainer.strategy.reduce(self.test_samples, reduce_op="sum")

    def configure_optimizers(self):
        opt = self.optimizer_factory(params=self.parameters())
        if self.scheduler_factory is None:
            return opt
        params = inspect.signature(self.scheduler_factory).parameters
        steps = stepping_batches(self.trainer)
        if self.scheduler_interval == "epoch":
            steps = self.trainer.max_epochs
        kw = {k: steps for k in ("total_steps", "T_max") if k in params}
        sched = self.scheduler_factory(opt, **kw)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": self.scheduler_interval}}

    def configure_callbacks(self):
        # attached once (at fit); trainer.test finds it already there
        return [] if self.hooks in self.trainer.callbacks else [self.hooks]


def stepping_batches(trainer: pl.Trainer) -> int:
    """`trainer.estimated_stepping_batches` (the schedule's total steps), computed from the length
    of a resumable training loader (TensorLoader) without letting Lightning build and iterate it
    here: Lightning would start that iterator before a resumed fit restores the loader's position
    from the checkpoint (callbacks/resume.py), and the resumed run would replay the epoch's start."""
    dm = trainer.datamodule
    loader = dm.train_dataloader() if dm is not None else None
    if loader is None or not hasattr(loader, "consumed"):
        return int(trainer.estimated_stepping_batches)
    n, limit = len(loader), trainer.limit_train_batches
    n = min(n, limit) if isinstance(limit, int) else int(n * limit)  # as Lightning's _parse_num_batches
    steps = math.ceil(n / trainer.accumulate_grad_batches) * max(trainer.max_epochs, 1)
    return min(steps, trainer.max_steps) if trainer.max_steps != -1 else steps
