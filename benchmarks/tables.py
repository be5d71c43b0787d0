"""Records -> a suite's tables (DataFrames of text cells). Pure functions of the records.

`suite_tables(suite, records)` is the one entry: the suite's `table:` key picks the run table
(`quant`: the documents' experiment table; `compression`: the pruning / weight-sharing tables,
with per-layer tables; `compact`: compact nets and their size chain), `pivot:` adds W x A tables,
`reference:` the published rows. benchmarks/render.py writes them as results/tables/<suite>.{md,
csv,html}; the HTML report and the W&B suite run show the same tables.

The quant columns, as in the documents: Bitwidth/method | model | Thruput. (Training) |
Thruput. (Test) | Precision@1 | Precision@5 | Footprint, plus throughput relative to the same
model's FP (32) row (the only speed figure comparable across machines) and the dtype the forward
pass really ran in.
Published numbers come from benchmarks/reference/paper_numbers.csv and are shown beside ours
(benchmarks/published.py: Δ P@1 only on an exact match of model, method, bits and dataset; else
the closest published row, named with its model and dataset, without Δ).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from benchmarks import published
from benchmarks.plots import legend_name
from benchmarks.seeds import aggregate, cell, stats
from lightning_modules.record import hardware_line

PRECISION_LABELS = {"32": "FP (32)", "16-mixed": "FP (16) w/ LS", "16-mixed-noscale": "FP (16) wo/ LS",
                    "bf16-mixed": "BF (16)"}
COLUMNS = ["Bitwidth/method", "model", "Thruput. (Training)", "Thruput. (Test)", "Precision@1",
           "Val P@1", "Precision@5", "Footprint", "Train ×FP32", "Test ×FP32", "compute dtype", "Params",
           "FLOPs", "BOPs"]


# the run-name tag of a mixed-precision allocation (benchmarks.mixed_precision.expand_alloc:
# `-mixed-<kind><value>` before the `-s<seed>` end)
MIXED_RUN = re.compile(r"-mixed-(bops|bytes)([0-9.e+-]+?)(?:-s\d+)?$")


def label(rec: dict) -> str:
    """`FP (16) w/ LS` for full-precision methods, `<method label> (W,A,G)` for the others,
    `<method label> mixed (<budget>, G)` for a run whose per-layer bits an @alloc budget chose
    (its bits per layer are in the table's W/A column)."""
    prec = PRECISION_LABELS.get(rec["precision"], rec["precision"])
    if rec["method"] == "fp32":
        return prec
    b = rec["bits"]
    name = rec.get("method_label") or rec["method"]
    budget = MIXED_RUN.search(rec.get("run_name") or "")
    out = f"{name} mixed ({budget.group(1)} {budget.group(2)}, G{b['g']})" if budget \
        else f"{name} ({b['w']},{b['a']},{b['g']})"
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


def pct_cells(df: pd.DataFrame, col: str, error: bool = False, status: bool = True) -> list[str]:
    """`col` (a fraction) as percent per row, `mean% ± std% (n=k)` for rows of several seeds
    (benchmarks/seeds.py); 1 - mean with `error`; a run that did not finish shows its status."""
    st = df.status if status and "status" in df else pd.Series("ok", index=df.index)
    one = (lambda m: _pct(1 - m)) if error else _pct
    return [cell(m, sd, n, one, _pct) if s == "ok" else str(s) for (m, sd, n), s in zip(stats(df, col), st)]


def val_cells(df: pd.DataFrame, error: bool = False) -> list[str]:
    """Validation P@1 (the last epoch's, on the split held out of the training set; the model
    that was tested), "-" for runs without validation."""
    return pct_cells(df, "val_top1_last", error=error, status=False)


NOT_STEADY = "†"  # a figure over all batches: too few after the warm-up for a steady state


def _speed(it_s, samples_s, steady=True, std=None, n=1) -> str:
    if it_s is None or pd.isna(it_s):
        return "-"
    spread = "" if n is None or pd.isna(n) or n <= 1 or std is None or pd.isna(std) else f" ± {std:.2f}"
    out = f"{it_s:.2f}{spread} it/s ({samples_s:,.0f} img/s)" + (f" {NOT_STEADY}" if steady is False else "")
    return out + (f" (n={int(n)})" if spread else "")


def speeds(df: pd.DataFrame, loop: str) -> list[str]:
    """The `loop` ("train" or "test") throughput cells, marked where the record says the figure
    is not steady (`<loop>_steady`; older records: `throughput_steady`)."""
    col = lambda k: df[k] if k in df else pd.Series(None, index=df.index, dtype=object)  # noqa: E731
    flags = [a if a is not None and not pd.isna(a) else b
             for a, b in zip(col(f"{loop}_steady"), col("throughput_steady"))]
    flags = [None if f is None or pd.isna(f) else bool(f) for f in flags]
    return [_speed(a, b, f, sd, n) for (a, sd, n), b, f in
            zip(stats(df, f"{loop}_it_s"), df[f"{loop}_samples_s"], flags)]


def all_steady(df: pd.DataFrame) -> bool:
    """Whether no throughput figure of the table is marked not steady."""
    return not any(NOT_STEADY in c for loop in ("train", "test") if f"{loop}_it_s" in df for c in speeds(df, loop))


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
        if r.get("deploy_backend"):
            row["deploy_kind"] = deploy_kind(r)
        rows.append(row)
    df = pd.DataFrame(rows)
    return fp32_ratios(df) if not df.empty else df


def with_layer_columns(df: pd.DataFrame, records: list[dict]) -> pd.DataFrame:
    """`frame(records)` with `layer_columns` of each record (the per-layer suites' tables and
    plots: `table: sensitivity` and `table: mixed`)."""
    extra = pd.DataFrame([layer_columns(r) for r in records], index=df.index)
    return pd.concat([df, extra], axis=1) if not extra.empty else df


def layer_columns(rec: dict) -> dict:
    """From the record's per-layer rows (cost.py `layers[]`): the layers computing below 32 bits
    (W or A) by name, the forward position of the first, their params and MACs, and every
    layer's `W/A` bits in forward order (mixed precision); {} for records without the rows."""
    rows = rec.get("layers")
    if not rows or not all(isinstance(r, dict) and "bits" in r for r in rows):
        return {}
    q = [r for r in rows if r["bits"]["w"] < 32 or r["bits"]["a"] < 32]
    return {"quantized_layers": " ".join(r["name"] for r in q),
            "quantized_at": next((i for i, r in enumerate(rows) if r in q), None),  # forward position
            "quantized_params": sum(r["params"] for r in q), "quantized_macs": sum(r["macs"] for r in q),
            "layer_bits": " ".join(f"{r['bits']['w']}/{r['bits']['a']}" for r in rows)}


def mixed(layer_bits) -> bool:
    """Whether a `layer_bits` cell gives the quantized layers (below 32 bits) different bits."""
    if not isinstance(layer_bits, str):
        return False
    return len({b for b in layer_bits.split() if b != "32/32"}) > 1


def deploy_kind(rec: dict) -> str:
    """What the deploy step ran: `binary avx2|avx512` (packed-bit kernels), `onnx int8` (ONNX Runtime, some
    layers on its integer kernels), `onnx fp32`, or `none`; ONNX Runtime on another provider than the
    CPU's is named (`onnx int8 CUDA`)."""
    backend = rec["deploy_backend"]
    if backend == "binary" and rec.get("deploy_isa"):
        return f"binary {rec['deploy_isa']}"
    if backend != "onnx":
        return backend
    kind = "onnx int8" if "int8" in (rec.get("deploy_layers") or {}).values() else "onnx fp32"
    provider = rec.get("deploy_provider") or "CPUExecutionProvider"
    return kind if provider == "CPUExecutionProvider" else f"{kind} {provider.removesuffix('ExecutionProvider')}"


DEPLOYED = "Deployed test ×FP32 (backend)"


def with_deployed(out: pd.DataFrame, df: pd.DataFrame) -> pd.DataFrame:
    """`out` with the deployed-speed column (deploy/deploy.py: the deployed model's test
    throughput over the same architecture in FP32 on its runtime, interleaved in one process)
    when any row has one; tables of records from before the deploy step keep their columns."""
    if "deploy_x_fp32" not in df or df.deploy_x_fp32.isna().all():
        return out
    kinds = df.get("deploy_kind", pd.Series(None, index=df.index))
    out = out.copy()
    out[DEPLOYED] = ["-" if pd.isna(k) else f"- ({k})" if pd.isna(x) else f"{x:.2f}× ({k})"
                     for x, k in zip(df.deploy_x_fp32, kinds)]
    return out


def fp32_ratios(df: pd.DataFrame) -> pd.DataFrame:
    """`train_it_s_vs_fp32`, `test_it_s_vs_fp32`: throughput over the same model's FP32 run."""
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
        "Thruput. (Training)": speeds(df, "train"),
        "Thruput. (Test)": speeds(df, "test"),
        "Precision@1": pct_cells(df, "top1"),
        "Val P@1": val_cells(df),
        "Precision@5": pct_cells(df, "top5"),
        "Footprint": [f"{human_bytes(f)} (ckpt {human_bytes(c)})"
                      for f, c in zip(df.footprint_bytes, df.checkpoint_bytes)],
        "Train ×FP32": [_ratio(x, 1.0) for x in df.train_it_s_vs_fp32],
        "Test ×FP32": [_ratio(x, 1.0) for x in df.test_it_s_vs_fp32],
        "compute dtype": df.get("compute_dtype", pd.Series("-", index=df.index)).fillna("-"),
        **_cost_columns(df),
    })
    return with_deployed(with_step_and_memory(out[COLUMNS], df), df)


def with_step_and_memory(out: pd.DataFrame, df: pd.DataFrame) -> pd.DataFrame:
    """After the training throughput, where any record has them: the median model-only step
    (forward + backward + optimizer, `model_step_ms`) against the loop's (`loop_step_ms`), and the
    training peak memory (`peak_train_mem_bytes`, what `mem_measure` says it is)."""
    if "model_step_ms" not in df or df.model_step_ms.isna().all():
        return out
    col = lambda k: df.get(k, pd.Series(float("nan"), index=df.index))  # noqa: E731
    ms = lambda v: "-" if pd.isna(v) else f"{v:.2f}"  # noqa: E731
    at = out.columns.get_loc("Thruput. (Training)") + 1
    out = out.copy()
    out.insert(at, "Step ms (model / loop)", [f"{ms(m)} / {ms(lp)}" for m, lp in
                                              zip(col("model_step_ms"), col("loop_step_ms"))])
    out.insert(at + 1, "Train peak mem", [human_bytes(b) + ("" if pd.isna(k) else f" ({k})")
                                          for b, k in zip(col("peak_train_mem_bytes"), col("mem_measure"))])
    return out


def _cost_columns(df: pd.DataFrame) -> dict[str, list[str]]:
    """Params, FLOPs (one sample, 2 per multiply-add) and BOPs (compression/cost.py) as text;
    "-" for records written before the key existed."""
    col = lambda k: df.get(k, pd.Series(float("nan"), index=df.index))  # noqa: E731
    return {"Params": [_count(n) for n in col("params")], "FLOPs": [_count(n) for n in col("flops")],
            "BOPs": [_count(n) for n in col("bops")]}


COMPRESSION_COLUMNS = ["Network", "model", "Top-1 Error", "Val Top-1 Error", "Top-5 Error", "Parameters",
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
        "Top-1 Error": pct_cells(df, "top1", error=True),
        "Val Top-1 Error": val_cells(df, error=True),
        "Top-5 Error": pct_cells(df, "top5", error=True),
        "Parameters": [_count(n) for n in nz],
        "Compress. rate": _ratio_series(of("params"), nz),
        "Footprint": [human_bytes(f) for f in df.footprint_bytes],
        "File rate": _ratio_series(of("footprint_bytes"), df.footprint_bytes),
        "FLOPs": [_count(f) for f in flops],
        "BOPs": _cost_columns(df)["BOPs"],
        "Thruput. (Test)": speeds(df, "test"),
        "Test ×FP32": [_ratio(x, 1.0) for x in df.test_it_s_vs_fp32],
    })[COMPRESSION_COLUMNS].pipe(with_deployed, df)


COMPACT_COLUMNS = ["Network", "model", "Precision@1", "Val P@1", "Precision@5", "Params", "FLOPs", "BOPs",
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
        "Precision@1": pct_cells(df, "top1"),
        "Val P@1": val_cells(df),
        "Precision@5": pct_cells(df, "top5"),
        **_cost_columns(df),
        "FLOPs eff.": [_count(n) for n in col("flops_effective")],
        "Footprint": [human_bytes(f) for f in df.footprint_bytes],
        "Size ×": _ratio_series(pd.Series(first, index=df.index), df.footprint_bytes),
        "Thruput. (Training)": speeds(df, "train"),
        "Thruput. (Test)": speeds(df, "test"),
    })[COMPACT_COLUMNS].pipe(with_deployed, df)


def _ratio_series(num: pd.Series, den: pd.Series) -> list[str]:
    return [f"{a / b:.1f}×" if a and b and not (pd.isna(a) or pd.isna(b)) else "-"
            for a, b in zip(num, den)]


def reference_compression(table: str, df: pd.DataFrame | None = None,
                          csv_path: Path | None = None) -> pd.DataFrame:
    """Published rows of a pruning / weight-sharing table (errors, parameters, size, rate), each
    with the runs of `df` (an annotated frame) it stands beside: Match and Δ P@1 (published.beside)."""
    ref = published.read(table, csv_path)
    if ref.empty:
        return ref
    match, delta = published.beside(ref, df)
    return pd.DataFrame({
        "Network": ref.label, "model": ref.model, "dataset": ref.dataset,
        "Top-1 Error": ref.top1.map(lambda v: _pct(1 - v) if not pd.isna(v) else "-"),
        "Top-5 Error": ref.top5.map(lambda v: _pct(1 - v) if not pd.isna(v) else "-"),
        "Parameters": ref.params.fillna("-"), "Footprint": ref.footprint.fillna("-"),
        "rate": ref.rate.fillna("-"), "Match": match, "Δ P@1": delta, "source": ref.source,
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
        rows = r.get("report")
        if rows is None and r.get("layers") and "layer" in r["layers"][0]:  # records before `report`
            rows = r["layers"]
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


def reference(table: str, df: pd.DataFrame | None = None, csv_path: Path | None = None) -> pd.DataFrame:
    """The published rows of `table`, with throughput relative to the same model's FP (32) row,
    each with the runs of `df` (an annotated frame) it stands beside: Match (exact or closest
    published) and Δ P@1 on exact matches only (published.beside)."""
    ref = published.read(table, csv_path)
    if ref.empty:
        return ref
    fp = ref[(ref.method == "fp32") & (ref.precision == "32")].drop_duplicates("model").set_index("model")
    it_s = lambda v: "-" if pd.isna(v) else f"{v:.2f} it/s"  # noqa: E731
    match, delta = published.beside(ref, df)
    out = pd.DataFrame({
        "Bitwidth/method": ref.label, "model": ref.model, "dataset": ref.dataset,
        "Thruput. (Training)": ref.train_it_s.map(it_s), "Thruput. (Test)": ref.test_it_s.map(it_s),
        "Precision@1": ref.top1.map(_pct), "Precision@5": ref.top5.map(_pct),
        "Footprint": ref.footprint.fillna("-"), "Params": ref.params.fillna("-"),
        "Train ×FP32": [_ratio(x, fp.train_it_s.get(m)) for x, m in zip(ref.train_it_s, ref.model)],
        "Test ×FP32": [_ratio(x, fp.test_it_s.get(m)) for x, m in zip(ref.test_it_s, ref.model)],
        "Match": match, "Δ P@1": delta, "source": ref.source,
    })
    return out.drop(columns="Params") if ref.params.isna().all() else out


def pivot_tables(df: pd.DataFrame, rows: str = "bits_w", cols: str = "bits_a",
                 value: str = "top1") -> dict[str, pd.DataFrame]:
    """Per method: `value` with `rows` down and `cols` across (a W x A table of P@1; mean ± std
    (n) where `df` holds several seeds of a cell, as suite_tables' aggregated rows)."""
    out = {}
    for method, g in df[df.status == "ok"].groupby("method", sort=False):
        g = g.assign(_cell=pct_cells(g, value)).drop_duplicates([rows, cols], keep="last")
        t = g.pivot(index=rows, columns=cols, values="_cell").sort_index()
        t = t[sorted(t.columns)].fillna("-")
        t.index = [f"W{w}" for w in t.index]
        t.columns = [f"A{a}" for a in t.columns]
        out[str(g.get("method_label", g.method).iloc[0] or method)] = t
    return out


def fp32_val(df: pd.DataFrame) -> dict:
    """Per model, the validation P@1 of its (first) finished FP32 row."""
    fp = df[(df.method == "fp32") & (df.status == "ok")] if "val_top1_last" in df else df.iloc[:0]
    return {m: v for m, v in zip(fp.model[::-1], fp.val_top1_last[::-1]) if not pd.isna(v)}


def display_sensitivity(df: pd.DataFrame) -> pd.DataFrame:
    """The sensitivity table (benchmarks/sensitivity.py): per run the layer it quantized (alone),
    its bits, validation P@1 and the drop from the same model's FP32 run (points), test P@1, and
    the layer's params and MACs."""
    col = lambda k: df.get(k, pd.Series(None, index=df.index, dtype=object))  # noqa: E731
    ref = fp32_val(df)
    drop = [ref.get(m) - v if m in ref and not pd.isna(v) and s == "ok" else None
            for m, v, s in zip(df.model, col("val_top1_last"), df.status)]
    layers = ["- (FP32)" if not isinstance(q, str) or not q else q for q in col("quantized_layers")]
    return pd.DataFrame({
        "Layer": layers, "model": df.model,
        "Method": [legend_name(lab, m) for lab, m in zip(col("method_label"), df.method)],
        "Bits (W/A)": ["-" if m == "fp32" else f"{w}/{a}" for m, w, a in zip(df.method, df.bits_w, df.bits_a)],
        "Val P@1": val_cells(df),
        "Δ Val P@1 vs FP32": ["-" if d is None else f"{0.0 - 100 * d:+.2f} pts" for d in drop],
        "Precision@1": pct_cells(df, "top1"),
        "Layer params": [_count(n) for n in col("quantized_params")],
        "Layer MACs": [_count(n) for n in col("quantized_macs")],
    })


def display_mixed(df: pd.DataFrame) -> pd.DataFrame:
    """The quant table plus each run's W/A bits per layer, forward order (mixed precision)."""
    bits = df.get("layer_bits", pd.Series(None, index=df.index, dtype=object))
    return display(df).assign(**{"W/A per layer": [b if isinstance(b, str) else "-" for b in bits]})


# a suite's `table:` -> (its run table, its published rows)
TABLE_TYPES = {"quant": (display, reference), "compression": (display_compression, reference_compression),
               "compact": (display_compact, reference), "sensitivity": (display_sensitivity, reference),
               "mixed": (display_mixed, reference)}
LAYER_TABLES = ("sensitivity", "mixed")  # tables whose frame has the records' layer_columns


@dataclass
class SuiteTables:
    """A suite's tables, as every output shows them: results/tables/<suite>.{md,csv,html}, the
    HTML report and the W&B suite run."""
    frame: pd.DataFrame                        # one row per record, numbers kept (the CSV)
    main: pd.DataFrame                         # the run table of the suite's `table:` type
    pivots: dict[str, pd.DataFrame] = field(default_factory=dict)  # `pivot:`, per method
    layers: dict[str, pd.DataFrame] = field(default_factory=dict)  # per layer (table: compression)
    reference: pd.DataFrame = field(default_factory=pd.DataFrame)  # `reference:`, published rows
    pivot: dict = field(default_factory=dict)  # the `pivot:` spec (rows, cols, value)
    reference_table: str | None = None         # the `reference:` name in paper_numbers.csv
    row_of: list[int] = field(default_factory=list)  # per frame row (record), its row in `main`


def commit(sha) -> str:
    """A row's commit, short, and `dirty` when the run's code or config differed from it."""
    if not isinstance(sha, str) or not sha:
        return "-"
    return sha.removesuffix("-dirty")[:7] + (" dirty" if sha.endswith("-dirty") else "")


def suite_tables(suite: dict, records: list[dict]) -> SuiteTables:
    """THE function from a suite's config (conf/suite/<name>.yaml as a dict: its `table:` type,
    quant, compression or compact; `pivot:`; `reference:`) and its records to its tables; the
    run table's last column is each row's Commit (the CSV keeps the full `git_sha`).

    Records that differ only by seed are one row of the run table and the pivots
    (benchmarks/seeds.py): Precision@1/5, validation P@1 and throughput as `mean ± std (n=k)`
    (sample std), every other column from the lowest-seed finished run, its per-layer table
    too, Commit listing every run's. `frame`, the CSV, keeps one row per record."""
    name, kind = suite.get("name"), suite.get("table") or "quant"
    if kind not in TABLE_TYPES:
        raise ValueError(f"suite {name}: table={kind!r}; valid: {', '.join(TABLE_TYPES)}")
    df = frame(records)
    if df.empty:
        raise ValueError(f"suite {name}: no records to tabulate")
    if kind in LAYER_TABLES:  # per-layer suites: which layers ran at which bits
        df = with_layer_columns(df, records)
    df = published.annotate(df, suite.get("reference"))  # paper_* columns: exact / closest published, Δ
    shown, read_reference = TABLE_TYPES[kind]
    pivot, ref_table = suite.get("pivot") or {}, suite.get("reference")
    rows, row_of = aggregate(df)
    rows = fp32_ratios(rows)
    main = shown(rows).assign(Commit=[", ".join(dict.fromkeys(commit(s) for s in shas))
                                      for shas in rows.git_shas])
    shown_records = [records[p] for p in rows.record_pos]  # each row's lowest-seed finished run
    return SuiteTables(frame=df, main=main, pivots=pivot_tables(rows, **pivot) if pivot else {},
                       layers=layer_table(shown_records) if kind == "compression" else {},
                       reference=read_reference(ref_table, df) if ref_table else pd.DataFrame(),
                       pivot=pivot, reference_table=ref_table, row_of=row_of)
