"""The Trainer's profiler when none is configured: Lightning's PassThroughProfiler, cheaper.

Lightning wraps every hook call, every loop stage and the batch fetch in
`trainer.profiler.profile(name)`, ~50 contexts a training step. Its default PassThroughProfiler
does nothing in them, but `Profiler.profile` is a @contextmanager generator: each call builds a
generator and a context object and runs start/stop through it. `NoProfiler.profile` returns one
shared `nullcontext`, which does the same nothing. A profiler the user configures
(`trainer.profiler=simple|advanced|pytorch`) is used as given.
"""
from __future__ import annotations

from contextlib import nullcontext

from pytorch_lightning.profilers import PassThroughProfiler

_NULL = nullcontext()  # reusable and reentrant: enter/exit keep no state


class NoProfiler(PassThroughProfiler):
    def profile(self, action_name: str) -> nullcontext:  # type: ignore[override]
        return _NULL
