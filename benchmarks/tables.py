"""Records -> the documents' table, as Markdown, CSV and HTML. Pure functions of the records.

Columns as in the documents: Bitwidth/method | model | Thruput. (Training) | Thruput. (Test) |
Precision@1 | Precision@5 | Footprint, plus throughput relative to the same model's FP (32) row
(the only speed figure comparable across machines) and the dtype the forward pass really ran in.
Published numbers come from benchmarks/reference/paper_numbers.csv and are shown beside ours.
"""
from __future__ import annotations

import html
from pathlib import Path

import pandas as pd

from lightning_modules.record import hardware_line

REFERENCE_CSV = Path(__file__).resolve().parent / "reference" / "paper_numbers.csv"
PRECISION_LABELS = {"32": "FP (32)", "16-mixed": "FP (16) w/ LS", "16-mixed-noscale": "FP (16) wo/ LS",
                    "bf16-mixed": "BF (16)"}
COLUMNS = ["Bitwidth/method", "model", "Thruput. (Training)", "Thruput. (Test)", "Precision@1",
           "Precision@5", "Footprint", "Train ×FP32", "Test ×FP32", "compute dtype", "Params",
           "FLOPs", "BOPs"]


def label(rec: dict) -> str:
    """`FP (16) w/ LS` for full-precision methods, `<method label> (W,A,G)` for the others."""
    prec = PRECISION_LABELS.get(rec["precision"], rec["precision"])
    if rec["method"] == "fp32":
        return prec
    b = rec["bits"]
    name = rec.get("method_label") or rec["method"]
    out = f"{name} ({b['w']},{b['a']},{b['g']})"
    return out if rec["precision"] == "32" else f"{out}, {prec}"


def human_bytes(n: float | None) -> str:
    if n is None or pd.isna(n):
        return "-"
    for unit, size in (("MB", 1e6), ("KB", 1e3)):
        if n >= size:
            return f"{n / size:.2f} {unit}"
    return f"{int(n)} B"


def _pct(x) -> str:
    return "-" if x is None or pd.isna(x) else f"{100 * x:.2f}%"


def _speed(it_s, samples_s) -> str:
    if it_s is None or pd.isna(it_s):
        return "-"
    return f"{it_s:.2f} it/s ({samples_s:,.0f} img/s)"


def _ratio(x, ref) -> str:
    if x is None or ref is None or pd.isna(x) or pd.isna(ref) or not ref:
        return "-"
    return f"{x / ref:.2f}×"


def frame(records: list[dict]) -> pd.DataFrame:
    """One row per record, numeric columns kept (the CSV)."""
    rows = []
    for r in records:
        row = {k: v for k, v in r.items() if not isinstance(v, (dict, list))}
        row.update({f"bits_{k}": v for k, v in r["bits"].items()})
        row["label"] = label(r)
        row["hardware"] = hardware_line(r["hardware"]) if r.get("hardware") else None
        rows.append(row)
    df = pd.DataFrame(rows)
    if df.empty:
        return df
    # each model's FP32 run (a finished one; the last if several) is the throughput reference
    fp32 = df[(df.method == "fp32") & (df.precision == "32") & (df.status == "ok")]
    fp32 = fp32.drop_duplicates("model", keep="last").set_index("model")
    for col in ("train_it_s", "test_it_s"):
        ref = df.model.map(fp32[col]) if not fp32.empty else pd.Series(float("nan"), index=df.index)
        df[f"{col}_vs_fp32"] = df[col] / ref
    return df


def display(df: pd.DataFrame) -> pd.DataFrame:
    """The documents' table from `frame(records)`."""
    out = pd.DataFrame({
        "Bitwidth/method": df.label,
        "model": df.model,
        "Thruput. (Training)": [_speed(a, b) for a, b in zip(df.train_it_s, df.train_samples_s)],
        "Thruput. (Test)": [_speed(a, b) for a, b in zip(df.test_it_s, df.test_samples_s)],
        "Precision@1": [_pct(x) if s == "ok" else s for x, s in zip(df.top1, df.status)],
        "Precision@5": [_pct(x) if s == "ok" else s for x, s in zip(df.top5, df.status)],
        "Footprint": [f"{human_bytes(f)} (ckpt {human_bytes(c)})"
                      for f, c in zip(df.footprint_bytes, df.checkpoint_bytes)],
        "Train ×FP32": [_ratio(x, 1.0) for x in df.train_it_s_vs_fp32],
        "Test ×FP32": [_ratio(x, 1.0) for x in df.test_it_s_vs_fp32],
        "compute dtype": df.get("compute_dtype", pd.Series("-", index=df.index)).fillna("-"),
        **_cost_columns(df),
    })
    return out[COLUMNS]


def _cost_columns(df: pd.DataFrame) -> dict[str, list[str]]:
    """Params, FLOPs (one sample, 2 per multiply-add) and BOPs (compression/cost.py) as text;
    "-" for records written before the key existed."""
    col = lambda k: df.get(k, pd.Series(float("nan"), index=df.index))  # noqa: E731
    return {"Params": [_count(n) for n in col("params")], "FLOPs": [_count(n) for n in col("flops")],
            "BOPs": [_count(n) for n in col("bops")]}


COMPRESSION_COLUMNS = ["Network", "model", "Top-1 Error", "Top-5 Error", "Parameters",
                       "Compress. rate", "Footprint", "File rate", "FLOPs", "BOPs", "Thruput. (Test)",
                       "Test ×FP32"]


def _count(n) -> str:
    if n is None or pd.isna(n):
        return "-"
    n = float(n)
    for unit, div in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= div:
            return f"{n / div:.2f}{unit}"
    return f"{n:.0f}"


def _err(x, status) -> str:
    return _pct(1 - x) if status == "ok" and x is not None and not pd.isna(x) else str(status)


# row names of methods whose config has no `label` (the documents' words)
METHOD_NAMES = {"prune": "Pruned", "share": "Shared", "prune_share": "Pruned + shared",
                "deep_compression": "Compressed", "filter_prune": "Filter-pruned"}


def _row_name(method: str, label) -> str:
    if method == "fp32":
        return "Ref"
    return label if isinstance(label, str) and label else METHOD_NAMES.get(method, method)


def display_compression(df: pd.DataFrame) -> pd.DataFrame:
    """The documents' pruning / weight-sharing tables: each compressed row against its model's
    `method=fp32` row (Ref): errors, parameters left (non-zero), their rate, the exported file and
    its rate, FLOPs of one sample and measured test throughput."""
    ref = df[(df.method == "fp32") & (df.precision == "32")].drop_duplicates("model", keep="last")
    ref = ref.set_index("model")

    def of(col):
        return df.model.map(ref[col]) if col in ref else pd.Series(float("nan"), index=df.index)

    nz = df.get("nonzero_params", df.params).fillna(df.params)
    flops = df.get("flops", pd.Series(float("nan"), index=df.index))
    return pd.DataFrame({
        "Network": [f"{m} {_row_name(meth, lab)}"
                    for m, meth, lab in zip(df.model, df.method, df.get("method_label", df.method))],
        "model": df.model,
        "Top-1 Error": [_err(x, s) for x, s in zip(df.top1, df.status)],
        "Top-5 Error": [_err(x, s) for x, s in zip(df.top5, df.status)],
        "Parameters": [_count(n) for n in nz],
        "Compress. rate": _ratio_series(of("params"), nz),
        "Footprint": [human_bytes(f) for f in df.footprint_bytes],
        "File rate": _ratio_series(of("footprint_bytes"), df.footprint_bytes),
        "FLOPs": [_count(f) for f in flops],
        "BOPs": _cost_columns(df)["BOPs"],
        "Thruput. (Test)": [_speed(a, b) for a, b in zip(df.test_it_s, df.test_samples_s)],
        "Test ×FP32": [_ratio(x, 1.0) for x in df.test_it_s_vs_fp32],
    })[COMPRESSION_COLUMNS]


COMPACT_COLUMNS = ["Network", "model", "Precision@1", "Precision@5", "Params", "FLOPs", "BOPs",
                   "FLOPs eff.", "Footprint", "Size ×", "Thruput. (Training)", "Thruput. (Test)"]


def display_compact(df: pd.DataFrame) -> pd.DataFrame:
    """Compact nets side by side, in the suite's order: accuracy, cost (parameters, FLOPs,
    BOPs and FLOPs + BOPs/64 of one sample), the exported file and how many times smaller than
    the first row's it is (the documents' size chain), measured throughput."""
    first = df.footprint_bytes.iloc[0]
    col = lambda k: df.get(k, pd.Series(float("nan"), index=df.index))  # noqa: E731
    return pd.DataFrame({
        "Network": [m if meth == "fp32" else f"{m} + {lab if isinstance(lab, str) and lab else meth}"
                    for m, meth, lab in zip(df.model, df.method, col("method_label"))],
        "model": df.model,
        "Precision@1": [_pct(x) if s == "ok" else s for x, s in zip(df.top1, df.status)],
        "Precision@5": [_pct(x) if s == "ok" else s for x, s in zip(df.top5, df.status)],
        **_cost_columns(df),
        "FLOPs eff.": [_count(n) for n in col("flops_effective")],
        "Footprint": [human_bytes(f) for f in df.footprint_bytes],
        "Size ×": _ratio_series(pd.Series(first, index=df.index), df.footprint_bytes),
        "Thruput. (Training)": [_speed(a, b) for a, b in zip(df.train_it_s, df.train_samples_s)],
        "Thruput. (Test)": [_speed(a, b) for a, b in zip(df.test_it_s, df.test_samples_s)],
    })[COMPACT_COLUMNS]


def _ratio_series(num: pd.Series, den: pd.Series) -> list[str]:
    return [f"{a / b:.1f}×" if a and b and not (pd.isna(a) or pd.isna(b)) else "-"
            for a, b in zip(num, den)]


def reference_compression(table: str, csv_path: Path = REFERENCE_CSV) -> pd.DataFrame:
    """Published rows of a pruning / weight-sharing table (errors, parameters, size, rate)."""
    ref = pd.read_csv(csv_path, dtype={"precision": str})
    ref = ref[ref.table == table]
    if ref.empty:
        return ref
    return pd.DataFrame({
        "Network": ref.label, "dataset": ref.dataset,
        "Top-1 Error": ref.top1.map(lambda v: _pct(1 - v) if not pd.isna(v) else "-"),
        "Top-5 Error": ref.top5.map(lambda v: _pct(1 - v) if not pd.isna(v) else "-"),
        "Parameters": ref.params.fillna("-"), "Footprint": ref.footprint.fillna("-"),
        "rate": ref.rate.fillna("-"), "source": ref.source,
    })


LAYER_COLUMNS = {"layer": "Layer", "weights": "#Weights", "kept_pct": "Weights% (P)",
                 "weight_bits_pq": "Weight bits (P+Q)", "weight_bits_pqh": "Weight bits (P+Q+H)",
                 "index_bits_pq": "Index bits (P+Q)", "index_bits_pqh": "Index bits (P+Q+H)",
                 "compression": "Compress rate (P+Q+H)"}


def layer_table(records: list[dict]) -> dict[str, pd.DataFrame]:
    """Deep Compression's Tables 2/3 per compressed run (the record's `layers`): weights, % kept,
    weight bits P+Q / P+Q+H, index bits P+Q / P+Q+H, compression rate P+Q / P+Q+H."""
    out = {}
    for r in records:
        rows = r.get("layers")
        if not rows or r.get("status") != "ok":
            continue
        t = pd.DataFrame(rows)
        fmt = {"weights": _count, "kept_pct": lambda v: "-" if pd.isna(v) else f"{v:.1f}%"}
        for col in t.columns:
            if col in fmt:
                t[col] = t[col].map(fmt[col])
            elif col != "layer":
                t[col] = t[col].map(lambda v: "-" if v is None or pd.isna(v) else
                                    (f"{v:.2f}" if isinstance(v, float) else str(v)))
        if "compression" in t:
            t["compression"] = [f"{float(v):.1f}×" if v != "-" else v for v in t["compression"]]
        out[f"{r['model']} {_row_name(r['method'], r.get('method_label'))}"] = t.rename(columns=LAYER_COLUMNS)
    return out


def reference(table: str, csv_path: Path = REFERENCE_CSV) -> pd.DataFrame:
    """The published rows of `table`, with throughput relative to the same model's FP (32) row."""
    ref = pd.read_csv(csv_path, dtype={"precision": str})
    ref = ref[ref.table == table].copy()
    if ref.empty:
        return ref
    fp = ref[(ref.method == "fp32") & (ref.precision == "32")].set_index("model")
    return pd.DataFrame({
        "Bitwidth/method": ref.label, "model": ref.model, "dataset": ref.dataset,
        "Thruput. (Training)": ref.train_it_s.map(lambda v: f"{v:.2f} it/s"),
        "Thruput. (Test)": ref.test_it_s.map(lambda v: f"{v:.2f} it/s"),
        "Precision@1": ref.top1.map(_pct), "Precision@5": ref.top5.map(_pct),
        "Footprint": ref.footprint,
        "Train ×FP32": [_ratio(x, fp.train_it_s.get(m)) for x, m in zip(ref.train_it_s, ref.model)],
        "Test ×FP32": [_ratio(x, fp.test_it_s.get(m)) for x, m in zip(ref.test_it_s, ref.model)],
        "source": ref.source,
    })


def pivot_tables(df: pd.DataFrame, rows: str = "bits_w", cols: str = "bits_a",
                 value: str = "top1") -> dict[str, pd.DataFrame]:
    """Per method: `value` with `rows` down and `cols` across (a W x A table of P@1)."""
    out = {}
    for method, g in df[df.status == "ok"].groupby("method", sort=False):
        t = g.pivot_table(index=rows, columns=cols, values=value, aggfunc="last").sort_index()
        t = t[sorted(t.columns)].map(_pct)
        t.index = [f"W{w}" for w in t.index]
        t.columns = [f"A{a}" for a in t.columns]
        out[str(g.get("method_label", g.method).iloc[0] or method)] = t
    return out


def pareto(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats: smaller x (footprint) and higher y (P@1)."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    front, best = [], float("-inf")
    for i in order:
        if points[i][1] > best:
            front.append(i)
            best = points[i][1]
    return front


def legend_name(label, method: str) -> str:
    """A run's method label for a legend; the method name when the record has none (None, NaN
    in a frame, or empty)."""
    return method if label is None or label == "" or (isinstance(label, float) and pd.isna(label)) else str(label)


def plot_footprint(name: str, df: pd.DataFrame, path: Path, x: str = "footprint_bytes",
                   y: str = "top1") -> Path | None:
    """Precision@1 against footprint (log scale), one marker per method, the Pareto front as a line
    and each point labelled with its bits; None when no run finished."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = df[(df.status == "ok") & df[x].notna() & df[y].notna()].reset_index(drop=True)
    if ok.empty:
        return None
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    markers = "osD^vP*Xh<>"
    for i, (method, g) in enumerate(ok.groupby("method", sort=False)):
        shown = legend_name(g.get("method_label", g.method).iloc[0], method)
        ax.scatter(g[x] / 1024, 100 * g[y], marker=markers[i % len(markers)], label=shown, s=36)
        for _, r in g.iterrows():
            ax.annotate(f"{r.bits_w},{r.bits_a}", (r[x] / 1024, 100 * r[y]), fontsize=6,
                        xytext=(3, 3), textcoords="offset points")
    front = ok.iloc[pareto(list(zip(ok[x], ok[y])))]
    ax.step(front[x] / 1024, 100 * front[y], where="post", color="k", lw=0.8, ls="--",
            label="Pareto front")
    ax.set_xscale("log")
    ax.set_xlabel("footprint (KB, exported file, log scale)")
    ax.set_ylabel("Precision@1 (%)")
    ax.set_title(f"{name}: Precision@1 against footprint")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="best")  # away from the points
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def _header(name: str, description: str, df: pd.DataFrame) -> list[str]:
    hw = sorted(set(df.hardware.dropna())) if "hardware" in df else []
    shas = sorted(set(df.git_sha.dropna())) if "git_sha" in df else []
    return [f"Suite `{name}`: {description}",
            f"Hardware: {'; '.join(hw) or 'unknown'}. Commit: {', '.join(shas) or 'unknown'}.",
            "Throughput is measured over steady-state steps (warm-up excluded, data loading "
            "included) at the run's batch size; Footprint is the exported weights file, "
            "ckpt the Lightning checkpoint."]


def write(name: str, description: str, records: list[dict], out_dir: Path,
          reference_table: str | None = None, pivot: dict | None = None,
          plot: bool = False, kind: str = "quant") -> dict[str, Path]:
    """Write <out_dir>/<name>.md, .csv and .html (and <name>_footprint.png with `plot`); return
    their paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    df = frame(records)
    if df.empty:
        raise ValueError(f"suite {name}: no records to tabulate")
    if kind not in ("quant", "compression", "compact"):
        raise ValueError(f"suite {name}: table={kind!r}; valid: quant, compression, compact")
    compression = kind == "compression"
    shown = {"compression": display_compression, "compact": display_compact}.get(kind, display)(df)
    read_ref = reference_compression if compression else reference
    ref = read_ref(reference_table) if reference_table else pd.DataFrame()
    head = _header(name, description, df)
    md = [f"# {name}", "", *[h + "  " for h in head], "", shown.to_markdown(index=False), ""]
    pivots = pivot_tables(df, **pivot) if pivot else {}
    for label_, t in pivots.items():
        md += [f"{label_}: {pivot.get('value', 'top1')} by {pivot.get('rows', 'bits_w')} (rows) and "
               f"{pivot.get('cols', 'bits_a')} (columns)", "", t.to_markdown(), ""]
    per_layer = layer_table(records) if compression else {}
    for label_, t in per_layer.items():
        md += [f"Per layer, {label_} (Deep Compression Tables 2/3):", "", t.to_markdown(index=False), ""]
    if not ref.empty:
        md += [f"Published reference (`{reference_table}` in benchmarks/reference/paper_numbers.csv):", "",
               ref.to_markdown(index=False), ""]
    paths = {"md": out_dir / f"{name}.md", "csv": out_dir / f"{name}.csv", "html": out_dir / f"{name}.html"}
    png = plot_footprint(name, df, out_dir / f"{name}_footprint.png") if plot else None
    if png:
        paths["png"] = png
        md += [f"![Precision@1 against footprint]({png.name})", ""]
    paths["md"].write_text("\n".join(md))
    df.to_csv(paths["csv"], index=False)
    body = [f"<h1>{html.escape(name)}</h1>", *[f"<p>{html.escape(h)}</p>" for h in head],
            shown.to_html(index=False, border=0, classes="results")]
    for label_, t in pivots.items():
        body += [f"<h2>{html.escape(label_)}</h2>", t.to_html(border=0, classes="pivot")]
    for label_, t in per_layer.items():
        body += [f"<h2>Per layer, {html.escape(label_)}</h2>", t.to_html(index=False, border=0)]
    if not ref.empty:
        body += [f"<h2>Published reference ({html.escape(reference_table)})</h2>",
                 ref.to_html(index=False, border=0, classes="reference")]
    if png:
        body += [f"<h2>Precision@1 against footprint</h2><img src='{html.escape(png.name)}' "
                 "alt='Precision@1 against footprint'>"]
    style = ("body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
             "td,th{padding:4px 8px;border-bottom:1px solid #ddd;text-align:left}")
    paths["html"].write_text(f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(name)}"
                             f"</title><style>{style}</style></head><body>{''.join(body)}</body></html>\n")
    return paths
