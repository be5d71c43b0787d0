"""Logger factories that need a decision at run time, the end of a W&B run, and `quiet()`: what
Lightning and torch print that is not the run's story.

A W&B run (logger=wandb) holds: the flat config (`model.name`, `bits.w`, ...), the per-step
metrics (Lightning), the final record as its summary and the exported model file as an artifact
of type `model` with the footprint in its metadata. Offline unless WANDB_API_KEY is set: runs land
in `<results_dir>/wandb/offline-run-*` and `make wandb-sync` (`wandb sync`) uploads them unchanged.
The API key is read by wandb itself from the environment; the harness never logs or records it.
"""
from __future__ import annotations

import logging
import os
import re
import warnings
from pathlib import Path

# Lightning's rank_zero_info lines that say nothing about this run: the device inventory
# (trainer/setup.py: "GPU available: False, used: False", "TPU available: ..."; older versions
# "HPU available"), the litlogger and litmodels advertisements (trainer/connectors/
# logger_connector.py, callback_connector.py) and Trainer.estimated_stepping_batches' notice.
CHATTER = ("GPU available:", "TPU available:", "HPU available:", "💡 Tip:",
           "Loading `train_dataloader` to estimate number of stepping batches")


def _not_chatter(record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith(CHATTER)


def quiet() -> None:
    """Drop exactly those lines and torch's deprecation of `LeafSpec`, which Lightning's
    utilities/_pytree.py still uses (a FutureWarning on every fit); everything else still shows."""
    for name in ("pytorch_lightning.utilities.rank_zero", "lightning_fabric.utilities.rank_zero"):
        logging.getLogger(name).addFilter(_not_chatter)  # where rank_zero_info logs
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated",
                            category=FutureWarning, module=r"pytorch_lightning\.utilities\._pytree")


def offline() -> bool:
    """Offline unless a key is set (WANDB_MODE=offline/online forces either way)."""
    mode = os.environ.get("WANDB_MODE", "")
    return mode in ("offline", "dryrun") or (mode != "online" and not os.environ.get("WANDB_API_KEY"))


def flat(d: dict, prefix: str = "") -> dict:
    """{"model": {"name": "lenet5"}} -> {"model.name": "lenet5"} (lists kept as values)."""
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        out.update(flat(v, f"{key}.") if isinstance(v, dict) and v else {key: v})
    return out


def stage_in(save_dir: str | Path) -> None:
    """Artifacts are staged (copied before upload) under <save_dir>/wandb/data, not in the home
    folder: the offline run and the files it names stay together for `wandb sync`."""
    os.environ.setdefault("WANDB_DATA_DIR", str(Path(save_dir).resolve() / "wandb" / "data"))


def wandb_logger(project: str, save_dir: str, name: str | None = None, entity: str | None = None,
                 group: str | None = None, tags: list | None = None, job_type: str | None = None,
                 **kwargs):
    """Lightning's WandbLogger with the harness's run identity; config logged flat."""
    from pytorch_lightning.loggers import WandbLogger

    class FlatConfigWandbLogger(WandbLogger):
        def log_hyperparams(self, params) -> None:
            super().log_hyperparams(flat(dict(params)))

    Path(save_dir).mkdir(parents=True, exist_ok=True)
    stage_in(save_dir)
    return FlatConfigWandbLogger(project=project, name=name, entity=entity, group=group,
                                 job_type=job_type, tags=[str(t) for t in tags or []],
                                 save_dir=str(save_dir), offline=offline(), **kwargs)


def artifact_name(run_name: str) -> str:
    """W&B artifact names allow letters, digits, `-`, `_` and `.`."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", run_name)[:120]


def finish(loggers, record: dict, exit_code: int = 0) -> None:
    """Each W&B run: the final record as its summary, the model file as an artifact; then close."""
    from pytorch_lightning.loggers import WandbLogger

    for lg in loggers:
        if not isinstance(lg, WandbLogger):
            continue
        run = lg.experiment
        run.summary.update({k: v for k, v in record.items() if not isinstance(v, (dict, list))})
        run.summary.update({f"{k}.{kk}": vv for k, v in record.items() if isinstance(v, dict)
                            for kk, vv in v.items()})
        model_file = record.get("model_file")
        if record.get("status") == "ok" and model_file and Path(model_file).is_file():
            import wandb

            art = wandb.Artifact(artifact_name(f"{record['run_name']}-model"), type="model",
                                 metadata={k: record.get(k) for k in (
                                     "footprint_bytes", "params", "nonzero_params", "bits", "method",
                                     "model", "precision", "top1", "top5", "config_hash")})
            art.add_file(model_file, name=Path(model_file).name)
            run.log_artifact(art)
        run.finish(exit_code=exit_code)
