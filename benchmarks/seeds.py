"""Rows that differ only by seed, as one table row: the mean, the sample std and n of each
measured figure (Precision@1/5, validation P@1, throughput), every other column from one run.

`aggregate(frame)` is what `tables.suite_tables` calls between the records' frame (one row per
record: the CSV) and the shown tables; `cell(...)` formats `mean ± std (n=3)`, or the plain value
when n = 1. Two records belong together when they have the same run name but for its `-s<seed>`
end, model, method, label, bits, precision and dataset: within a suite that is "the same run,
another seed" (two runs that also agree on the seed would share a run directory).
"""
from __future__ import annotations

import re

import pandas as pd

# the measured figures shown as mean ± std (n); `<col>_std` and `<col>_n` beside each
STATS = ("top1", "top5", "val_top1_last", "val_top1_best", "train_it_s", "train_samples_s",
         "test_it_s", "test_samples_s")
KEY = ("model", "method", "method_label", "bits_w", "bits_a", "bits_g", "precision", "dataset")


def stem(run_name, seed) -> str:
    """The run name without its `-s<seed>` end."""
    name = str(run_name)
    return re.sub(rf"-s{int(seed)}$", "", name) if seed is not None and not pd.isna(seed) else name


def groups(df: pd.DataFrame) -> list[list[int]]:
    """Positions of the rows of each group, groups in order of first appearance, rows by seed."""
    col = lambda k: df[k] if k in df else pd.Series(None, index=df.index, dtype=object)  # noqa: E731
    seeds = col("seed")
    keys = [(stem(n, s), *(None if v is None or (not isinstance(v, str) and pd.isna(v)) else v
                            for v in vals))
            for n, s, *vals in zip(col("run_name"), seeds, *(col(k) for k in KEY))]
    out: dict[tuple, list[int]] = {}
    for pos, key in enumerate(keys):
        out.setdefault(key, []).append(pos)
    order = lambda p: (seeds.iloc[p] if not pd.isna(seeds.iloc[p]) else 0, p)  # noqa: E731
    return [sorted(rows, key=order) for rows in out.values()]


def aggregate(df: pd.DataFrame) -> tuple[pd.DataFrame, list[int]]:
    """(one row per group, for each frame row the position of its group's row). A group's row is
    its lowest-seed finished run (else its lowest seed) with, for each of STATS, the mean over its
    finished runs that have the figure, `<col>_std` (sample std, NaN for n = 1) and `<col>_n`;
    status ok when any run finished; `<loop>_steady` only if every run's was; `seeds` and
    `git_shas` list them all; `record_pos` is the position of the record shown."""
    rows, row_of = [], [0] * len(df)
    for g, pos in enumerate(groups(df)):
        part = df.iloc[pos]
        ok = part[part.status == "ok"] if "status" in part else part
        row = (ok if not ok.empty else part).iloc[0].copy()
        row["record_pos"] = df.index.get_loc(row.name)  # the record its other columns come from
        for col in STATS:
            if col not in part:
                continue
            vals = pd.to_numeric(ok[col], errors="coerce").dropna()
            row[col] = vals.mean() if len(vals) else (row[col] if ok.empty else float("nan"))
            row[f"{col}_std"] = vals.std(ddof=1) if len(vals) > 1 else float("nan")
            row[f"{col}_n"] = len(vals)
        for flag in ("train_steady", "test_steady", "throughput_steady"):
            if flag in part:
                known = [bool(v) for v in part[flag] if v is not None and not pd.isna(v)]
                row[flag] = all(known) if known else None
        row["seeds"] = [s for s in part.get("seed", [])]
        row["git_shas"] = list(dict.fromkeys(part.get("git_sha", [None] * len(part))))
        rows.append(row)
        for p in pos:
            row_of[p] = g
    return pd.DataFrame(rows).reset_index(drop=True), row_of


def stats(df: pd.DataFrame, col: str) -> list[tuple]:
    """(mean, std, n) of `col` per row; std NaN and n 1 where the frame has no `_std`/`_n`."""
    nan = pd.Series(float("nan"), index=df.index)
    means = df[col] if col in df else nan
    stds = df[f"{col}_std"] if f"{col}_std" in df else nan
    ns = df[f"{col}_n"] if f"{col}_n" in df else pd.Series(1, index=df.index)
    return list(zip(means, stds, ns))


def cell(mean, std, n, one, spread=None) -> str:
    """`one(mean)`, or `one(mean) ± spread(std) (n=<n>)` when n > 1; "-" without a value."""
    if mean is None or pd.isna(mean):
        return "-"
    if n is None or pd.isna(n) or int(n) <= 1 or std is None or pd.isna(std):
        return one(mean)
    return f"{one(mean)} ± {(spread or one)(std)} (n={int(n)})"
