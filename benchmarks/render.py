"""A suite's tables (`tables.suite_tables`) as files: results/tables/<suite>.md, .csv and .html
(and <suite>_footprint.png with the suite's `plot: true`). The HTML report (benchmarks/report.py)
shows the same tables through `html_tables`.
"""
from __future__ import annotations

import html
from pathlib import Path

import pandas as pd

from benchmarks import plots, tables
from benchmarks.tables import SuiteTables, suite_tables

STYLE = ("body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
         "td,th{padding:4px 8px;border-bottom:1px solid #ddd;text-align:left}")


def header(name: str, description: str, df: pd.DataFrame, seeded: bool = False) -> list[str]:
    hw = sorted(set(df.hardware.dropna())) if "hardware" in df else []
    shas = sorted(set(df.git_sha.dropna())) if "git_sha" in df else []
    out = [f"Suite `{name}`: {description}",
            f"Hardware: {'; '.join(hw) or 'unknown'}. Commit: {', '.join(shas) or 'unknown'} "
            "(each row's in its Commit column; dirty: the run's code or config differed from it).",
            ("Throughput is measured over steady-state steps (warm-up excluded" if tables.all_steady(df) else
             f"Throughput is measured over steady-state steps (warm-up excluded; {tables.NOT_STEADY}: too few "
             "batches after the warm-up, measured over all of them)")
            + ", data loading included, validation and one-off compression work excluded) at the run's "
            "batch size; Footprint is the exported weights file, ckpt the Lightning checkpoint.",
            "Val P@1 (Val Top-1 Error): the last epoch's, on the validation split held out of the "
            "training set; Precision@1/5 (Top-1/5 Error) on the test set."]
    load = df["load_avg"].dropna() if "load_avg" in df else pd.Series(dtype=float)
    if not load.empty:
        out.append(f"Machine load average (1 min) when each run's test ended: {load.min():.1f} to "
                   f"{load.max():.1f} (records' load_avg; above about 1 another process shared the cores).")
    if seeded:
        out.append("Rows of several seeds: mean ± sample std (n=runs) of Precision@1/5, Val P@1 and "
                   "throughput; other columns from the lowest seed's run; the CSV has one row per run.")
    return out


def markdown(t: SuiteTables) -> list[str]:
    """The tables as Markdown lines: the run table, the pivots, per-layer tables, published rows."""
    md = [t.main.to_markdown(index=False), ""]
    for label, p in t.pivots.items():
        md += [f"{label}: {t.pivot.get('value', 'top1')} by {t.pivot.get('rows', 'bits_w')} (rows) and "
               f"{t.pivot.get('cols', 'bits_a')} (columns)", "", p.to_markdown(), ""]
    for label, p in t.layers.items():
        md += [f"Per layer, {label} (Deep Compression Tables 2/3):", "", p.to_markdown(index=False), ""]
    if not t.reference.empty:
        md += [f"Published reference (`{t.reference_table}` in benchmarks/reference/paper_numbers.csv):", "",
               t.reference.to_markdown(index=False), ""]
    return md


def html_tables(t: SuiteTables, level: int = 2, na_rep: str = "NaN") -> list[str]:
    """The same tables as HTML: the run table (class `results`), then each other one under an
    <h`level`> heading."""
    h = lambda text: f"<h{level}>{html.escape(text)}</h{level}>"  # noqa: E731
    out = [t.main.to_html(index=False, border=0, classes="results", na_rep=na_rep)]
    for label, p in t.pivots.items():
        out += [h(label), p.to_html(border=0, classes="pivot", na_rep=na_rep)]
    for label, p in t.layers.items():
        out += [h(f"Per layer, {label}"), p.to_html(index=False, border=0, na_rep=na_rep)]
    if not t.reference.empty:
        out += [h(f"Published reference ({t.reference_table})"),
                t.reference.to_html(index=False, border=0, classes="reference", na_rep=na_rep)]
    return out


def write(name: str, suite: dict, records: list[dict], out_dir: Path) -> dict[str, Path]:
    """Write <out_dir>/<name>.md, .csv and .html of the suite (conf/suite/<name>.yaml as a dict)
    from its records, and <name>_footprint.png with `plot: true`; return their paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    t = suite_tables(suite, records)
    head = header(name, suite.get("description", ""), t.frame, seeded=len(t.main) < len(t.frame))
    paths = {"md": out_dir / f"{name}.md", "csv": out_dir / f"{name}.csv", "html": out_dir / f"{name}.html"}
    png = plots.suite_plots(name, t.frame, out_dir, which=("footprint",)) if suite.get("plot") else {}
    md = [f"# {name}", "", *[line + "  " for line in head], "", *markdown(t)]
    body = [f"<h1>{html.escape(name)}</h1>", *[f"<p>{html.escape(line)}</p>" for line in head], *html_tables(t)]
    for title, path in png.items():
        paths["png"] = path
        md += [f"![{title}]({path.name})", ""]
        body += [f"<h2>{html.escape(title)}</h2><img src='{html.escape(path.name)}' alt='{html.escape(title)}'>"]
    paths["md"].write_text("\n".join(md))
    t.frame.to_csv(paths["csv"], index=False)
    paths["html"].write_text(f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(name)}"
                             f"</title><style>{STYLE}</style></head><body>{''.join(body)}</body></html>\n")
    return paths
