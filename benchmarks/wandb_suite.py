"""After a suite run with logger=wandb: one more W&B run in the suite's project holding its
comparison table (a wandb.Table: the rows and columns of results/tables/<suite>.md and the
report, built by the same `tables.suite_tables`, plus each run's status and Δ vs paper) and its
plots (images), so the project's default workspace shows the README's comparison.

Offline unless WANDB_API_KEY is set, like the runs (lightning_modules/loggers.py): it lands in
`<results_dir>/wandb/offline-run-*` beside them and `make wandb-sync` uploads it.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from benchmarks import report
from benchmarks.plots import slug, suite_plots
from lightning_modules.loggers import offline, stage_in


def wanted(overrides: list[str]) -> dict | None:
    """{"project", "entity"} if these run overrides log to W&B (`logger=wandb`), else None."""
    if "logger=wandb" not in overrides:
        return None
    kv = dict(o.split("=", 1) for o in overrides if "=" in o)
    return {"project": kv.get("wandb.project"), "entity": kv.get("wandb.entity") or None}


def log_suite(name: str, cfg: dict, records: list[dict], results_dir: Path, project: str | None = None,
              entity: str | None = None) -> str:
    """Log the suite's table, pivot tables and plots as the run `<name>-table`; return its dir."""
    import wandb

    t, notes = report.suite_table(records, cfg)
    df = t.frame
    plots = suite_plots(name, df, Path(results_dir) / "report")
    stage_in(results_dir)
    run = wandb.init(project=project or name, entity=entity, group=name, job_type="table",
                     name=f"{name}-table", tags=["table", f"suite:{name}"], dir=str(results_dir),
                     mode="offline" if offline() else "online",
                     config={"suite": name, "description": cfg.get("description", ""), "runs": len(records),
                             "reference": cfg.get("reference")})
    # a row of several seeds: its runs' distinct statuses and Δs, joined
    per_row = notes[["status", "Δ vs paper"]].astype(str).groupby(t.row_of).agg(
        lambda s: "; ".join(dict.fromkeys(s)))
    shown = pd.concat([t.main, per_row], axis=1)
    logged = {"comparison": wandb.Table(dataframe=shown.astype(str))}
    for label, p in t.pivots.items():
        logged[f"pivot/{label}"] = wandb.Table(dataframe=p.reset_index(names="W").astype(str))
    for title, png in plots.items():
        logged[f"plots/{png.stem.removeprefix(slug(name) + '_')}"] = wandb.Image(str(png), caption=title)
    run.log(logged)
    run.summary.update({"runs": len(records), "ok": int((df.status == "ok").sum())})
    run_dir = str(run.dir)
    run.finish()
    return run_dir
