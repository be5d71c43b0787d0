"""The validation figures of the record: `val_top1_last`, `val_top1_best` and `val_best_epoch`.

Validation runs on the datamodule's fixed split of the training set (Fashion-MNIST: the 5,000
images of `data.val_size`, chosen by `data.split_seed`, the same for every run seed), never on the
test set: these are the figures a suite may select a setting by. The module logs `val/top1` at
each validation's end; this callback reads it there (Lightning's sanity check excluded).
`val_best_epoch` is the 0-based epoch (Lightning's `current_epoch`, as the methods' schedules
count) whose validation was best; the earliest on a tie. With validation off
(`trainer.limit_val_batches=0`) the three are None. Validation time is outside the throughput
clock (callbacks/throughput.py).
"""
from __future__ import annotations

import pytorch_lightning as pl

from .record_fields import RecordFields


class ValidationFigures(RecordFields):
    def __init__(self, monitor: str = "val/top1"):
        self.monitor = monitor
        self.history: list[tuple[int, float]] = []  # (epoch, val top-1) per validation

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        value = trainer.callback_metrics.get(self.monitor)
        if trainer.sanity_checking or value is None:
            return
        self.history.append((int(trainer.current_epoch), float(value)))

    def fields(self, trainer: pl.Trainer) -> dict:
        if not self.history:
            return {"val_top1_last": None, "val_top1_best": None, "val_best_epoch": None}
        best_epoch, best = max(self.history, key=lambda ev: (ev[1], -ev[0]))
        return {"val_top1_last": self.history[-1][1], "val_top1_best": best, "val_best_epoch": best_epoch}
