"""Named points where the tests kill a run with SIGKILL (kill -9), to prove that it resumes.

`LWB_KILL_AT=<point>` (e.g. `step:5`, `method_step`, `export`) makes the process send itself
SIGKILL the first time it reaches that point: nothing is cleaned up, no handler runs, exactly as
when a node dies or `kill -9` is typed. Unset (always, outside tests), `point` is one dict lookup.
The points: `step:<n>` at the end of training step n (after its checkpoint, if one was due),
`method_step` right after a method's scheduled work (a pruning step, k-means), `export` inside
the model file's write (the temporary file written, not yet renamed).
`LWB_SIGNAL_AT=<point>=<SIGNAME>` (e.g. `step:5=SIGUSR1`) sends that signal instead, as SLURM
sends its preemption warning: the process's handlers run (Lightning's auto-requeue on SIGUSR1).
"""
from __future__ import annotations

import os
import signal


def point(name: str) -> None:
    if os.environ.get("LWB_KILL_AT") == name:
        os.kill(os.getpid(), signal.SIGKILL)
    at, _, sig = os.environ.get("LWB_SIGNAL_AT", "").partition("=")
    if at == name:
        os.kill(os.getpid(), getattr(signal, sig))
