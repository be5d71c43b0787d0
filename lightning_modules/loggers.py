"""Logger factories that need a decision at run time."""
from __future__ import annotations

import os
from pathlib import Path


def wandb_logger(project: str, save_dir: str, name: str | None = None, entity: str | None = None,
                 group: str | None = None, tags: list | None = None, **kwargs):
    """Lightning's WandbLogger, offline unless WANDB_API_KEY is set (or WANDB_MODE says otherwise).

    Offline runs land in `<save_dir>/wandb/offline-run-*` and upload later with `wandb sync`.
    The API key is read by wandb itself from the environment and never logged by the harness.
    """
    from pytorch_lightning.loggers import WandbLogger

    offline = not os.environ.get("WANDB_API_KEY") and os.environ.get("WANDB_MODE") != "online"
    Path(save_dir).mkdir(parents=True, exist_ok=True)
    return WandbLogger(project=project, name=name, entity=entity, group=group, tags=list(tags or []),
                       save_dir=str(save_dir), offline=offline, **kwargs)


def finish(loggers, record: dict) -> None:
    """Put the final record into each W&B run's summary, then close it."""
    from pytorch_lightning.loggers import WandbLogger

    for lg in loggers:
        if isinstance(lg, WandbLogger):
            lg.experiment.summary.update({k: v for k, v in record.items() if not isinstance(v, dict)})
            lg.experiment.summary.update({f"{k}.{kk}": vv for k, v in record.items() if isinstance(v, dict)
                                          for kk, vv in v.items()})
            lg.experiment.finish()
