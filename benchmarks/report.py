"""The HTML report: `python -m benchmarks.report [--results-dir results] [--out DIR]` (`make report`).

One page, `<results_dir>/report/index.html`, from every record under `<results_dir>/runs/`, with
its PNG plots beside it (nothing loaded from elsewhere): per suite the tables of
results/tables/<suite>.html, built by the same function (`tables.suite_tables`) from the suite's
YAML, so the same columns; then each run's status (the error of a failed run) and the difference
from the paper's number where the paper has the row; and plots: Precision@1 against footprint
(log scale, Pareto front), a W x A heat map of P@1 for each method swept over both bitwidths,
training and test throughput relative to FP32. Hardware and git commit in the header. Every string
is HTML-escaped. A record being written (not yet valid JSON) is left out, so the report can be
built while runs go on.
"""
from __future__ import annotations

import argparse
import html
import os
import tempfile
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from benchmarks import published, render, tables
from benchmarks import suite as suite_runner
from benchmarks.plots import slug, suite_plots
from lightning_modules.record import TABLE_KEYS, git_sha, hardware_line, read_record

REPO = Path(__file__).resolve().parents[1]


def load_records(results_dir: Path) -> dict[str, list[dict]]:
    """Records by suite (the record's `suite`), suites and runs in name order. A record that is
    half-written, of the wrong types or ranges, or lacks the fields a table needs is skipped with
    a one-line warning on stderr (`read_record`)."""
    out: dict[str, list[dict]] = {}
    for path in sorted(Path(results_dir).glob("runs/*/*/record.json")):
        rec = read_record(path, TABLE_KEYS)
        if rec is None:
            continue
        out.setdefault(str(rec.get("suite") or path.parent.parent.name), []).append(rec)
    return dict(sorted(out.items()))


def suite_config(name: str) -> dict:
    """conf/suite/<name>.yaml as the suite runner composes it; a suite without one gets the
    default (quant) table."""
    path = REPO / "conf" / "suite" / f"{name}.yaml"
    return suite_runner.suite_config(name) if path.is_file() else {"name": name}


def paper_delta(df: pd.DataFrame, table: str | None, csv_path: Path | None = None) -> list[str]:
    """Per row: our Precision@1 minus the paper's (points) where the paper has the same model,
    method, precision, bits and dataset; else the closest published row (same method), named with
    its model and dataset, without Δ (benchmarks/published.py)."""
    return published.notes(published.annotate(df, table, csv_path))


def suite_table(records: list[dict], cfg: dict) -> tuple[tables.SuiteTables, pd.DataFrame]:
    """(the suite's tables, as results/tables/ shows them; per record (run) its row's name, seed,
    status with the error of a failed run and its Δ vs paper)."""
    t = tables.suite_tables(cfg, records)
    df = t.frame
    errors = df.get("error", pd.Series(None, index=df.index))
    notes = pd.DataFrame({
        t.main.columns[0]: t.main.iloc[:, 0].to_numpy()[t.row_of], "model": df.model,
        "seed": df.get("seed", pd.Series(None, index=df.index)),
        "status": [f"{s}: {e}" if s == "failed" and isinstance(e, str) else s for s, e in zip(df.status, errors)],
        "Δ vs paper": paper_delta(df, cfg.get("reference"))})
    return t, notes


def _e(s) -> str:
    return html.escape(str(s), quote=True)


def section(name: str, records: list[dict], out_dir: Path) -> str:
    """The suite's section: the tables of results/tables/<suite>.html (render.html_tables), the
    runs' status and Δ vs paper where there is something to say, and the plots."""
    cfg = suite_config(name)
    t, notes = suite_table(records, cfg)
    df = t.frame
    hw = sorted(set(df.hardware.dropna())) if "hardware" in df else []
    shas = sorted(set(df.git_sha.dropna())) if "git_sha" in df else []
    n_ok = int((df.status == "ok").sum())
    main, *rest = render.html_tables(t, level=3, na_rep="-")
    parts = [f"<section id='suite-{slug(name)}' class='suite'><h2>{_e(name)}</h2>",
             f"<p>{_e(cfg.get('description', ''))}</p>",
             f"<p class='meta'>{len(df)} runs ({n_ok} ok). Hardware: {_e('; '.join(hw) or 'unknown')}. "
             f"Commit: {_e(', '.join(shas) or 'unknown')}.</p>", main]
    if (notes.status != "ok").any() or (notes["Δ vs paper"] != "-").any():
        parts += ["<h3>Runs: status and Δ vs paper</h3>",
                  notes.to_html(index=False, border=0, classes="notes", na_rep="-")]
    parts += rest
    for title, png in suite_plots(name, df, out_dir).items():
        parts.append(f"<figure><img src='{_e(png.name)}' alt='{_e(title)}'>"
                     f"<figcaption>{_e(title)}</figcaption></figure>")
    return "".join(parts) + "</section>"


STYLE = ("body{font-family:sans-serif;margin:2em;max-width:1400px}table{border-collapse:collapse;"
         "font-size:13px;margin:.5em 0}td,th{padding:3px 7px;border-bottom:1px solid #ddd;text-align:left}"
         "figure{display:inline-block;margin:.5em 1em .5em 0}img{max-width:100%}.meta{color:#555}"
         "section{border-top:2px solid #333;margin-top:2em}")


def build(results_dir: Path, out_dir: Path | None = None) -> Path:
    """Write <out_dir>/index.html (default <results_dir>/report) and its PNGs; return the page."""
    out_dir = Path(out_dir) if out_dir else Path(results_dir) / "report"
    out_dir.mkdir(parents=True, exist_ok=True)
    by_suite = load_records(results_dir)
    hw = sorted({hardware_line(r["hardware"]) for rs in by_suite.values() for r in rs
                 if isinstance(r.get("hardware"), dict)})
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    head = ["<h1>Compression benchmark report</h1>",
            f"<p class='meta'>Built {_e(now)} from {sum(map(len, by_suite.values()))} records in "
            f"{_e(Path(results_dir).resolve() / 'runs')}. Commit: {_e(git_sha() or 'unknown')}. "
            f"Hardware: {_e('; '.join(hw) or 'unknown')}.</p>",
            "<nav><ul>" + "".join(f"<li><a href='#suite-{slug(n)}'>{_e(n)}</a> ({len(rs)} runs)</li>"
                                  for n, rs in by_suite.items()) + "</ul></nav>"]
    if not by_suite:
        head.append("<p>No records yet: run a suite (`make bench`).</p>")
    body = head + [section(n, rs, out_dir) for n, rs in by_suite.items()]
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>Compression benchmark report</title>"
            f"<style>{STYLE}</style></head><body>{''.join(body)}</body></html>\n")
    index = out_dir / "index.html"
    fd, tmp = tempfile.mkstemp(prefix=".index.", suffix=".html", dir=out_dir)
    with os.fdopen(fd, "w") as f:
        f.write(page)
    os.chmod(tmp, 0o644)
    os.replace(tmp, index)
    return index


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--results-dir", default="results")
    p.add_argument("--out", default=None, help="default: <results-dir>/report")
    args = p.parse_args(argv)
    index = build(Path(args.results_dir), args.out)
    print(f"report: {index}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
