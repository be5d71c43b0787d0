"""A callback whose measurements go into record.json (conf/callbacks/default.yaml lists them)."""
from __future__ import annotations

import pytorch_lightning as pl


class RecordFields(pl.Callback):
    """After fit and test, `fields(trainer)` gives the record keys this callback measured."""

    def fields(self, trainer: pl.Trainer) -> dict:
        raise NotImplementedError
