"""Precision as its own axis: the documents' FP(32), FxP(16) w/ and wo/ loss scaling, plus BF16.

Lightning replaces `precision="16-mixed"` on CPU by bf16 without asking; here every name means the
same on CPU and GPU:

| name               | autocast dtype | loss scaling                    | the documents' row |
|--------------------|----------------|---------------------------------|--------------------|
| `32`               | none           | none                            | FP (32)            |
| `16-mixed`         | float16        | dynamic `GradScaler` (init 2^16) | FxP (16) w/ LS     |
| `16-mixed-noscale` | float16        | none (a disabled `GradScaler`)  | FxP (16) wo/ LS    |
| `bf16-mixed`       | bfloat16       | none (bf16 has fp32's range)    | (not in the table) |
"""
from __future__ import annotations

import torch
from pytorch_lightning.plugins.precision import MixedPrecision, Precision

NAMES = ("32", "16-mixed", "16-mixed-noscale", "bf16-mixed")
LABELS = {"32": "FP (32)", "16-mixed": "FP (16) w/ LS", "16-mixed-noscale": "FP (16) wo/ LS",
          "bf16-mixed": "BF (16)"}


def precision_plugin(name: str, accelerator: str) -> Precision:
    """The Lightning precision plugin for `name` on `accelerator` ('cpu' or 'gpu'/'cuda')."""
    device = "cuda" if accelerator in ("gpu", "cuda") else "cpu"
    if name == "32":
        return Precision()
    if name == "16-mixed":
        return MixedPrecision("16-mixed", device, scaler=torch.amp.GradScaler(device))
    if name == "16-mixed-noscale":
        return MixedPrecision("16-mixed", device, scaler=torch.amp.GradScaler(device, enabled=False))
    if name == "bf16-mixed":
        return MixedPrecision("bf16-mixed", device)
    raise ValueError(f"precision={name}: valid: {', '.join(NAMES)}")


def loss_scale(plugin: Precision) -> float | None:
    """Current loss scale, or None when no scaling is applied."""
    scaler = getattr(plugin, "scaler", None)
    if scaler is None or not scaler.is_enabled():
        return None
    return float(scaler.get_scale())
