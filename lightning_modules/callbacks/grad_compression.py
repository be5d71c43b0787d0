"""`trainer.grad_compression=sketch|fp16|powersgd|none`: a DDP communication hook registered on
the wrapped model when fitting starts (Lightning's own `ddp_comm_hook` argument is applied on CUDA
only; this works on gloo/CPU too). The hook counts the bytes each rank sends; `summary()` gives
the record's `comm_bytes_per_step` (and what the fp32 all-reduce would have sent)."""
from __future__ import annotations

import pytorch_lightning as pl
from torch.nn.parallel import DistributedDataParallel

from ..compression.sketch import METHODS, make_hook


class GradCompression(pl.Callback):
    def __init__(self, method: str = "none", bits: int = 4):
        if method not in METHODS:
            raise ValueError(f"trainer.grad_compression={method}: valid: {', '.join(METHODS)}")
        self.method, self.bits = method, bits
        self.state = None

    def on_fit_start(self, trainer, pl_module):
        model = trainer.strategy.model
        if not isinstance(model, DistributedDataParallel):
            return  # one process: nothing is communicated
        self.state, hook = make_hook(self.method, bits=self.bits)
        model.register_comm_hook(self.state, hook)

    def summary(self) -> dict:
        if self.state is None:
            return {"grad_compression": self.method, "comm_bytes_per_step": None}
        return self.state.summary()
