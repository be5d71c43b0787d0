"""A suite's plots, from `tables.frame(records)`: PNGs drawn with matplotlib, pure functions of the
records. Precision@1 against footprint and against deployed latency (log scale, Pareto front), a W x A heat map of P@1 per
method swept over both bitwidths, training and test throughput relative to FP32; for per-layer
suites, the validation P@1 drop per layer (sensitivity) and P@1 against BOPs beside the uniform
rows (mixed precision).
"""
from __future__ import annotations

import re
from pathlib import Path

import pandas as pd


def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _save(plt, fig, path: Path, legend: dict | None = None) -> Path:
    """The figure's tail: the legend (`legend`: its keyword arguments; None for none), a tight
    layout, the PNG at `path`, the figure closed (matplotlib keeps open figures alive)."""
    if legend is not None:
        fig.axes[0].legend(**legend)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def slug(name: str) -> str:
    """A suite name as a file name and HTML id: letters, digits, `_`, `-`, `.`."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name) or "_"


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


def plot_front(name: str, df: pd.DataFrame, path: Path, x: str, y: str, x_scale: float,
               x_label: str, title: str) -> Path | None:
    """Precision@1 against a cost `x` (times `x_scale`, log scale), one marker per method, the
    Pareto front (lower cost, higher P@1) as a line and each point labelled with its bits; None
    when no finished run has both."""
    ok = df[(df.status == "ok") & df[x].notna() & df[y].notna()].reset_index(drop=True) \
        if x in df and y in df else pd.DataFrame()
    if ok.empty:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    markers = "osD^vP*Xh<>"
    for i, (method, g) in enumerate(ok.groupby("method", sort=False)):
        shown = legend_name(g.get("method_label", g.method).iloc[0], method)
        ax.scatter(g[x] * x_scale, 100 * g[y], marker=markers[i % len(markers)], label=shown, s=36)
        for _, r in g.iterrows():
            ax.annotate(point_label(r), (r[x] * x_scale, 100 * r[y]), fontsize=6,
                        xytext=(3, 3), textcoords="offset points")
    front = ok.iloc[pareto(list(zip(ok[x], ok[y])))]
    ax.step(front[x] * x_scale, 100 * front[y], where="post", color="k", lw=0.8, ls="--",
            label="Pareto front")
    ax.set_xscale("log")
    ax.set_xlabel(x_label)
    ax.set_ylabel("Precision@1 (%)")
    ax.set_title(f"{name}: {title}")
    ax.grid(True, which="both", alpha=0.3)
    return _save(plt, fig, path, {"fontsize": 7, "loc": "best"})  # the legend away from the points


def point_label(r) -> str:
    """A point's bits, `W,A`; `mixed` for a run whose layers compute at different bits."""
    from benchmarks.tables import mixed
    return "mixed" if mixed(r.get("layer_bits")) else f"{r.bits_w},{r.bits_a}"


def plot_bops(name: str, df: pd.DataFrame, path: Path) -> Path | None:
    """Precision@1 against BOPs (cost.py: MACs x W x A per layer at its own bits), for suites with
    a mixed-precision run (its layers at different bits) beside the uniform ones; runs without
    BOPs (full precision) are left out."""
    from benchmarks.tables import mixed
    if "bops" not in df or "layer_bits" not in df or not df.layer_bits.map(mixed).any():
        return None
    return plot_front(name, df.assign(bops=df.bops.where(df.bops > 0)), path, "bops", "top1", 1.0,
                      "BOPs (one image, log scale)", "Precision@1 against BOPs")


def sensitivity_frame(df: pd.DataFrame) -> pd.DataFrame:
    """The finished runs that quantized exactly one layer, with `drop`: the validation P@1 drop
    (points) from the same model's FP32 run; empty unless two layers or more of one model were."""
    from benchmarks.tables import fp32_val
    if "quantized_layers" not in df or "val_top1_last" not in df:
        return pd.DataFrame()
    ref = fp32_val(df)
    one = df[(df.status == "ok") & df.model.isin(list(ref)) & df.val_top1_last.notna()
             & df.quantized_layers.map(lambda q: isinstance(q, str) and q != "" and " " not in q)]
    one = one.assign(drop=[100 * (ref[m] - v) for m, v in zip(one.model, one.val_top1_last)])
    return one if one.quantized_layers.nunique() >= 2 else pd.DataFrame()


def plot_sensitivity(name: str, df: pd.DataFrame, path: Path) -> Path | None:
    """Validation P@1 drop from FP32 (points) per layer quantized alone, one bar per method and
    bits, layers in forward order; None for suites that are not a sensitivity sweep."""
    one = sensitivity_frame(df)
    if one.empty:
        return None
    plt = _plt()
    layers = list(dict.fromkeys(one.sort_values("quantized_at", kind="stable").quantized_layers))  # forward order
    series = list(dict.fromkeys(zip(one.method, one.bits_w, one.bits_a)))
    width = 0.8 / len(series)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * len(layers) * len(series) + 2), 4.2), dpi=110)
    for k, (method, w, a) in enumerate(series):
        g = one[(one.method == method) & (one.bits_w == w) & (one.bits_a == a)]
        d = g.groupby("quantized_layers").drop.mean()
        label = legend_name(g.get("method_label", g.method).iloc[0], method)
        ax.bar([i + (k - (len(series) - 1) / 2) * width for i in range(len(layers))],
               [d.get(n, float("nan")) for n in layers], width=width, label=f"{label} W{w}A{a}")
    ax.axhline(0, color="k", lw=0.8)
    ax.set_xticks(range(len(layers)), layers, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("validation P@1 drop from FP32 (points)")
    ax.set_title(f"{name}: one layer quantized, the others full precision", fontsize=10)
    return _save(plt, fig, path, {"fontsize": 7})


def plot_footprint(name: str, df: pd.DataFrame, path: Path) -> Path | None:
    """Precision@1 against the exported file's size."""
    return plot_front(name, df, path, "footprint_bytes", "top1", 1 / 1024,
                      "footprint (KB, exported file, log scale)", "Precision@1 against footprint")


def plot_deployed(name: str, df: pd.DataFrame, path: Path) -> Path | None:
    """The deployed model's Precision@1 against its time per test image on its runtime (the
    deploy step: binary kernels or ONNX Runtime, at the test batch size); None before the deploy
    step existed."""
    if "deploy_test_samples_s" not in df:
        return None
    df = df.assign(deploy_ms=1000 / df.deploy_test_samples_s)
    return plot_front(name, df, path, "deploy_ms", "deploy_top1", 1.0,
                      "deployed time per test image (ms, at the test batch size, log scale)",
                      "Precision@1 against deployed latency")


def sweeps(df: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Per method, its ok rows when it was swept over at least two W and two A bitwidths."""
    ok = df[df.status == "ok"]
    return {str(g.get("method_label", g.method).iloc[0] or m): g for m, g in ok.groupby("method", sort=False)
            if g.bits_w.nunique() >= 2 and g.bits_a.nunique() >= 2}


def plot_heatmap(name: str, df: pd.DataFrame, path: Path) -> Path | None:
    """A W (rows) x A (columns) heat map of Precision@1 per swept method; None if none was."""
    swept = sweeps(df)
    if not swept:
        return None
    plt = _plt()
    fig, axes = plt.subplots(1, len(swept), figsize=(3.6 * len(swept) + 1, 3.8), dpi=110, squeeze=False)
    for ax, (label, g) in zip(axes[0], swept.items()):
        t = g.pivot_table(index="bits_w", columns="bits_a", values="top1", aggfunc="last").sort_index()
        t = t[sorted(t.columns)] * 100
        im = ax.imshow(t.values, cmap="viridis", aspect="auto", vmin=t.min().min(), vmax=t.max().max())
        ax.set_xticks(range(len(t.columns)), [f"A{a}" for a in t.columns])
        ax.set_yticks(range(len(t.index)), [f"W{w}" for w in t.index])
        mid = (t.min().min() + t.max().max()) / 2
        for (i, j), v in pd.DataFrame(t.values).stack().items():
            ax.text(j, i, f"{v:.1f}", ha="center", va="center", fontsize=8, color="k" if v > mid else "w")
        ax.set_title(label, fontsize=9)
        fig.colorbar(im, ax=ax, label="Precision@1 (%)")
    fig.suptitle(f"{name}: Precision@1 (%), W bits (rows) x A bits (columns)", fontsize=9)
    return _save(plt, fig, path)


def plot_throughput(name: str, df: pd.DataFrame, path: Path) -> Path | None:
    """Training and test throughput relative to the same model's FP32 row, one bar pair per run."""
    ok = df[(df.status == "ok") & (df.train_it_s_vs_fp32.notna() | df.test_it_s_vs_fp32.notna())]
    if ok.empty:
        return None
    plt = _plt()
    labels = [f"{lab} · {m}" for lab, m in zip(ok.label, ok.model)]
    y = range(len(ok))
    fig, ax = plt.subplots(figsize=(7.5, 0.32 * len(ok) + 1.4), dpi=110)
    ax.barh([i - 0.2 for i in y], ok.train_it_s_vs_fp32.fillna(0), height=0.4, label="training")
    ax.barh([i + 0.2 for i in y], ok.test_it_s_vs_fp32.fillna(0), height=0.4, label="test")
    ax.axvline(1.0, color="k", lw=0.8, ls="--")
    ax.set_yticks(list(y), labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("throughput relative to the model's FP32 run (×)")
    ax.set_title(f"{name}: throughput relative to FP32", fontsize=10)
    return _save(plt, fig, path, {"fontsize": 7})


PLOTS = {"footprint": ("Precision@1 against footprint", plot_footprint),
         "deployed": ("Precision@1 against deployed latency", plot_deployed),
         "heatmap": ("Precision@1, W x A", plot_heatmap),
         "throughput": ("Throughput relative to FP32", plot_throughput),
         "bops": ("Precision@1 against BOPs", plot_bops),
         "sensitivity": ("Validation P@1 drop per layer", plot_sensitivity)}


def suite_plots(name: str, df: pd.DataFrame, out_dir: Path, which=tuple(PLOTS)) -> dict[str, Path]:
    """The suite's plots `which` as <out_dir>/<slug(name)>_<plot>.png: {title: path}, only those
    with something to show."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    drawn = {title: draw(name, df, out_dir / f"{slug(name)}_{key}.png")
             for key, (title, draw) in PLOTS.items() if key in which}
    return {k: v for k, v in drawn.items() if v is not None}
