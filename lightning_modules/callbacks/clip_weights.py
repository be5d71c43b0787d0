"""Clip latent weights after every optimizer step (BinaryConnect, BNN: w <- clip(w, -1, 1)).

The compression package stays Lightning-free: the quantized layers offer `clip_()` (a no-op for
a layer without `weight_clip`) and this callback calls it on every module that has it, after each
training batch, i.e. after the optimizer step (idempotent, so gradient accumulation is harmless).
"""
from __future__ import annotations

import pytorch_lightning as pl


class ClipWeights(pl.Callback):
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        for m in pl_module.modules():
            clip = getattr(m, "clip_", None)
            if callable(clip):
                clip()
