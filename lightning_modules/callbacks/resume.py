"""Mid-run checkpoints with everything needed to continue, and finding one to resume from.

`ResumeCheckpoint` (added by run.py when `checkpoint.every_n_steps` or `checkpoint.every_minutes`
is set) writes `resume-s<step>.ckpt` in the run directory: Lightning's full checkpoint (net with
its masks, codebooks and learned scales; optimizer, scheduler, GradScaler; loop progress) plus
the callbacks' states: the method's own state (MethodHooks: scheduled times done, pruning history,
compression seconds), the training loader's position (TensorLoader: epoch and batch), and this
callback's: the config hash of the run and the RNG states (torch, CUDA, numpy, python) of every
rank. Each file is written beside, renamed into place, then its SHA-256 written to
`<file>.sha256` the same way; the older ones are removed only after that, so a kill at any moment
leaves at least one whole, verifiable checkpoint.

`find(run_dir, config_hash)` picks what `resume=auto` continues from: the newest checkpoint whose
checksum matches (a `hpc_ckpt_<n>.ckpt` that Lightning's SLURM auto-requeue wrote on the
preemption signal counts too; it has no checksum, and is read with weights_only=True) and whose
config hash is this run's. Anything else is skipped with one warning line naming the file.
"""
from __future__ import annotations

import hashlib
import logging
import os
import random
import re
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
import torch.distributed as dist

from ..compression import faults

log = logging.getLogger("harness")
PATTERN = re.compile(r"resume-s(\d+)\.ckpt")
HPC = re.compile(r"hpc_ckpt_(\d+)\.ckpt")


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _replace_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.partial")
    tmp.write_text(text)
    os.replace(tmp, path)


# --- RNG states as plain values (the checkpoint loads with weights_only=True) ------------------

def rng_state() -> dict:
    version, state, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    out = {"torch": torch.get_rng_state(),
           "python": [version, list(state), gauss],
           "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)]}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out["cuda"] = torch.cuda.get_rng_state_all()
    return out


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    version, keys, gauss = state["python"]
    random.setstate((version, tuple(keys), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _all_ranks(value):
    """`value` of every rank, in rank order (one element outside DDP)."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        out = [None] * dist.get_world_size()
        dist.all_gather_object(out, value)
        return out
    return [value]


class ResumeCheckpoint(pl.Callback):
    def __init__(self, run_dir: str | Path, config_hash: str, every_n_steps: int | None = None,
                 every_minutes: float | None = None):
        self.dir, self.config_hash = Path(run_dir), config_hash
        self.every_n_steps, self.every_minutes = every_n_steps, every_minutes
        self._last = time.monotonic()
        self.saved: list[int] = []  # global steps saved by this attempt

    # what the checkpoint holds of this callback
    def state_dict(self) -> dict:
        return {"config_hash": self.config_hash, "rng": _all_ranks(rng_state())}

    def load_state_dict(self, state: dict) -> None:
        rng = state["rng"]
        rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
        if len(rng) > rank:
            set_rng_state(rng[rank])

    def _due(self, trainer: pl.Trainer) -> bool:
        step = trainer.global_step
        due = bool(self.every_n_steps) and step % self.every_n_steps == 0
        if self.every_minutes and not due:
            late = time.monotonic() - self._last >= 60 * self.every_minutes
            if trainer.world_size > 1:  # every rank must take part in the save (a collective)
                late = bool(trainer.strategy.broadcast(late, src=0)) if step % 50 == 0 else False
            due = late
        return due

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        # the loader's position, for any checkpoint from here to the next batch's end (ours, or
        # Lightning's on SLURM's preemption signal, which may come at any moment)
        self._mark(trainer, batch_idx + 1)
        if (self.every_n_steps or self.every_minutes) and self._due(trainer) and trainer.global_step not in self.saved:
            self.save(trainer)
        faults.point(f"step:{trainer.global_step}")

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        # the end of training: a rerun after a kill in test or export starts from here
        last = trainer.current_epoch + 1 >= (trainer.max_epochs or 0) or trainer.should_stop
        if last and (self.every_n_steps or self.every_minutes) and trainer.global_step not in self.saved:
            self._mark(trainer, None)
            self.save(trainer)

    @staticmethod
    def _mark(trainer: pl.Trainer, batches: int | None) -> None:
        """Tell resumable loaders how many batches of this epoch training consumed (None: all)."""
        epoch_done = batches is None or batches >= trainer.num_training_batches
        loaders = trainer.train_dataloader
        for dl in (loaders.values() if isinstance(loaders, dict) else
                   loaders if isinstance(loaders, (list, tuple)) else [loaders]):
            if hasattr(dl, "consumed"):  # datamodules.tensor_loader.TensorLoader (resumable)
                dl.consumed(batches or 0, epoch_done)

    def save(self, trainer: pl.Trainer) -> None:
        """Write resume-s<step>.ckpt and its checksum; then drop the older ones."""
        step = trainer.global_step
        path = self.dir / f"resume-s{step}.ckpt"
        partial = path.with_name(f".{path.name}.partial")
        trainer.save_checkpoint(partial, weights_only=False)  # collective: every rank
        if trainer.is_global_zero:
            digest = sha256(partial)
            os.replace(partial, path)
            _replace_text(path.with_name(path.name + ".sha256"), f"{digest}  {path.name}\n")
            for old in files(self.dir):
                if old != path and old.name.startswith("resume-"):
                    remove(old)
        self.saved.append(step)
        self._last = time.monotonic()
        log.info("checkpoint %s (step %d)", path.name, step)


def files(run_dir: Path) -> list[Path]:
    """The run directory's resume checkpoints (ours and Lightning's SLURM ones), newest first."""
    found = []
    for p in Path(run_dir).glob("*.ckpt"):
        m = PATTERN.fullmatch(p.name) or HPC.fullmatch(p.name)
        if m:
            found.append((p.stat().st_mtime, p))
    return [p for _, p in sorted(found, reverse=True)]


def remove(path: Path) -> None:
    path.unlink(missing_ok=True)
    path.with_name(path.name + ".sha256").unlink(missing_ok=True)


@dataclass
class Resume:
    path: Path
    step: int


def find(run_dir: Path, config_hash: str) -> Resume | None:
    """The checkpoint to resume from (see the module doc), or None."""
    for path in files(run_dir):
        why = _unusable(path, config_hash)
        if why is None:
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
            return Resume(path, int(ckpt.get("global_step", 0)))
        log.warning("warning: not resuming from %s: %s", path, why)
    return None


def _unusable(path: Path, config_hash: str) -> str | None:
    side = path.with_name(path.name + ".sha256")
    if PATTERN.fullmatch(path.name):
        if not side.is_file():
            return "no checksum file beside it (an interrupted write)"
        if side.read_text().split()[0:1] != [sha256(path)]:
            return "its SHA-256 differs from the one written with it (corrupted or truncated)"
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a truncated or damaged archive, or content that is not plain data
        return f"unreadable ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
    own = (ckpt.get("callbacks") or {}).get(ResumeCheckpoint.__qualname__)
    theirs = own.get("config_hash") if isinstance(own, dict) else None
    if theirs != config_hash:
        return (f"written by a run of another config (config_hash {theirs}, this run {config_hash}); "
                "delete it or set resume=never to start afresh")
    return None


def drop_slurm(run_dir: Path) -> None:
    """After fit: Lightning's SLURM checkpoints are spent, and must go before `trainer.test`, which
    under SLURM would otherwise load the newest hpc_ckpt (Lightning's ckpt_path="hpc" default)
    instead of testing the trained net."""
    for p in files(run_dir):
        if HPC.fullmatch(p.name):
            remove(p)


def clean(run_dir: Path) -> None:
    """After a finished run: its resume checkpoints are spent."""
    for p in files(run_dir):
        remove(p)
