"""Published numbers (benchmarks/reference/paper_numbers.csv) beside a suite's runs.

A CSV row: `table` (the name a suite's `reference:` key gives), `label`, `method` (our
conf/method name), `method_label` (when set, our record's label must be the same: PM Quant. with
or without buckets), `precision`, `w`, `a`, `g` (our bits triple), `model` (the paper's name),
`model_id` (our conf/model name of the same net; empty when we have none), `dataset` (the
paper's), the published numbers, and `source` (paper, table, dataset, model; "unverified" where
it was not read in a primary source).

Our run and a published row are an **exact** match when method, precision, bits, model and
dataset are all the same: only then is the difference shown (Δ P@1, ours minus published, in
points). Where the method (and precision) match but not all of the rest, the published row with
the most in common (bits, then model, then dataset; the CSV's order breaks ties) stands as the
**closest published** row, named with its model and dataset, and no Δ is computed.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

REFERENCE_CSV = Path(__file__).resolve().parent / "reference" / "paper_numbers.csv"
# a record's `dataset` (the datamodule's name) -> the name papers use
DATASETS = {"fashion_mnist": "Fashion-MNIST", "mnist": "MNIST", "cifar10": "CIFAR-10",
            "cifar100": "CIFAR-100", "imagenet": "ImageNet"}
EXACT, CLOSEST = "exact", "closest published"
PAPER_COLUMNS = ["paper_match", "paper_row", "paper_ref", "paper_top1", "paper_delta_pts"]


def read(table: str | None, csv_path: Path | None = None) -> pd.DataFrame:
    """The published rows of `table` (none for a suite without `reference:`) from `csv_path`
    (default: REFERENCE_CSV)."""
    ref = pd.read_csv(csv_path or REFERENCE_CSV, dtype={"precision": str, "model_id": str, "method_label": str})
    return ref[ref.table == table].reset_index(drop=True) if table else ref.iloc[:0]


def _is(a, b) -> bool:
    return not (pd.isna(a) or pd.isna(b)) and str(a) == str(b)


def match(row, ref: pd.DataFrame) -> tuple[int | None, str | None]:
    """(index in `ref` of the published row beside our run `row` (a `tables.frame` row), EXACT or
    CLOSEST); (None, None) when no published row has the run's method and precision."""
    best, best_score = None, None
    for i, p in ref.iterrows():
        if not (_is(p.method, row.method) and _is(p.precision, row.precision)):
            continue
        if not pd.isna(p.method_label) and not _is(p.method_label, getattr(row, "method_label", None)):
            continue
        bits = all(_is(p[k], getattr(row, f"bits_{k}", None)) for k in "wag")
        score = (bits, _is(p.model_id, row.model),
                 _is(p.dataset, DATASETS.get(str(getattr(row, "dataset", "")), getattr(row, "dataset", None))))
        if best_score is None or score > best_score:
            best, best_score = i, score
    if best is None:
        return None, None
    return best, EXACT if all(best_score) else CLOSEST


def name(p) -> str:
    """A published row as the tables name it: `<label> (<model>, <dataset>)`."""
    return f"{p.label} ({p.model}, {p.dataset})"


def annotate(df: pd.DataFrame, table: str | None, csv_path: Path | None = None) -> pd.DataFrame:
    """`df` (`tables.frame`) with, per run, its published row (`paper_row`), how it matches
    (`paper_match`: exact, closest published or empty), its index among the table's published
    rows (`paper_ref`), the published P@1 (`paper_top1`) and,
    on exact matches of a finished run only, ours minus published in points (`paper_delta_pts`)."""
    ref = read(table, csv_path)
    cols = {c: [None] * len(df) for c in PAPER_COLUMNS}
    for j, row in enumerate(df.itertuples(index=False)):
        i, kind = match(row, ref)
        if i is None:
            continue
        p = ref.loc[i]
        cols["paper_match"][j], cols["paper_row"][j], cols["paper_ref"][j] = kind, name(p), i
        cols["paper_top1"][j] = p.top1
        if kind == EXACT and row.status == "ok" and not pd.isna(row.top1) and not pd.isna(p.top1):
            cols["paper_delta_pts"][j] = round(100 * (row.top1 - p.top1), 4)
    return df.assign(**{c: pd.Series(v, index=df.index, dtype=object) for c, v in cols.items()})


def notes(df: pd.DataFrame) -> list[str]:
    """Per run (an annotated frame): `+0.12 pts P@1 vs <row>` on an exact match, `closest
    published: <row>, no Δ` on a closest one, `-` without a published row."""
    out = []
    for kind, row, d in zip(df.get("paper_match", [None] * len(df)), df.get("paper_row", [None] * len(df)),
                            df.get("paper_delta_pts", [None] * len(df))):
        if kind == EXACT:
            out.append(f"{d:+.2f} pts P@1 vs {row}" if d is not None and not pd.isna(d) else f"exact: {row}, no P@1")
        elif kind == CLOSEST:
            out.append(f"{CLOSEST}: {row}, no Δ")
        else:
            out.append("-")
    return out


def beside(ref: pd.DataFrame, df: pd.DataFrame | None) -> tuple[list[str], list[str]]:
    """Per published row: (which of our runs it stands beside, `exact: ...` or `closest published
    for: ...`, both where both; its Δ P@1 in points, the mean over our finished exact runs, n)."""
    match_col, delta_col = [], []
    if df is None or "paper_match" not in df:
        return ["-"] * len(ref), ["-"] * len(ref)
    ours = [f"{lab}, {m}" for lab, m in zip(df.get("label", df.method), df.model)]
    for i, _ in ref.iterrows():
        mine = df.paper_ref == i
        parts = []
        for kind, title in ((EXACT, EXACT), (CLOSEST, f"{CLOSEST} for")):
            runs = list(dict.fromkeys(o for o, hit, k in zip(ours, mine, df.paper_match) if hit and k == kind))
            if runs:
                parts.append(f"{title}: {'; '.join(runs)}")
        match_col.append(" — ".join(parts) or "-")
        d = pd.to_numeric(df.paper_delta_pts[mine], errors="coerce").dropna()
        delta_col.append("-" if d.empty else f"{d.mean():+.2f} pts" + (f" (n={len(d)})" if len(d) > 1 else ""))
    return match_col, delta_col
