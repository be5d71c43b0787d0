"""`grad_compression=sketch|fp16|powersgd|none` (with trainer=ddp*): a DDP communication hook
registered on the wrapped model when fitting starts (Lightning's own `ddp_comm_hook` argument is
applied on CUDA only; this works on gloo/CPU too). The hook counts the bytes each rank sends; the
record gets `grad_compression`, `comm_bytes_per_step` (and what the fp32 all-reduce would have
sent). A run without DDP communicates nothing and records nothing here."""
from __future__ import annotations

from torch.nn.parallel import DistributedDataParallel

from ..compression.communication.sketch import METHODS, make_hook
from .record_fields import RecordFields


class GradCompression(RecordFields):
    def __init__(self, method: str = "none", bits: int = 4):
        if method not in METHODS:
            raise ValueError(f"grad_compression={method}: valid: {', '.join(METHODS)}")
        self.method, self.bits = method, bits
        self.state = None

    def on_fit_start(self, trainer, pl_module):
        model = trainer.strategy.model
        if not isinstance(model, DistributedDataParallel):
            return  # one process: nothing is communicated
        self.state, hook = make_hook(self.method, bits=self.bits)
        model.register_comm_hook(self.state, hook)

    def summary(self) -> dict:
        return {} if self.state is None else self.state.summary()

    def fields(self, trainer) -> dict:
        return self.summary()
