"""Per-layer sensitivity: one layer at a time at low bits, the others full precision.

A suite run entry may name the token `@layer` in its overrides, e.g.

    [method=dorefa, bits.w=2, bits.a=2,
     "method.layers=[{name:'*',quantize:false},{name:'@layer',quantize:true}]"]

and the suite runner (benchmarks/suite.py) makes one run per candidate layer of the run's model
(every exact Conv2d / Linear, first and last included: compression/select.py `candidates`), the
token replaced by the layer's name. The net is built from the composed config without loading
data (earlier_runs.data_shape). A run that does not set `run_name` gets the default name with the
layer before its `-s<seed>` end (`lenet5-dorefa-W2A2G32-32-features.2-s0`), so the runs' names
are distinct and say which layer, and seeds still group (benchmarks/seeds.py).

Which layer a record quantized is read from the record itself (its `layers[]` rows: the layers
whose W or A bits are below 32), so the table is a pure function of the records:
`layer_rows(records)` -> one row per one-layer run with its validation Precision@1 and the drop
from the same model's FP32 run (tables.display_sensitivity, plots.plot_sensitivity).
"""
from __future__ import annotations

from collections.abc import Callable

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from lightning_modules.compression.errors import ConfigError
from lightning_modules.compression.select import candidates, parse, plan
from lightning_modules.earlier_runs import data_shape

LAYER = "@layer"
SEED_END = "-s${seed}"


def build_net(cfg: DictConfig):
    """The run's net (the method not applied), its input shape from the data config's class
    attributes: nothing is loaded."""
    c, size, classes = data_shape(cfg.data)
    return instantiate(cfg.model.net, in_channels=c, image_size=size, num_classes=classes, _convert_="all")


def layer_names(cfg: DictConfig) -> list[str]:
    """The candidate layers of the run's model, in registration order."""
    return [n for n, _ in candidates(build_net(cfg))]


def named_run(overrides: list[str], cfg: DictConfig, tag: str) -> list[str]:
    """`overrides` plus a `run_name` carrying `tag` before the default name's `-s${seed}` end;
    unchanged when the run sets its own run_name (the token inside it is replaced instead)."""
    if any(o.partition("=")[0].lstrip("+~") == "run_name" for o in overrides):
        return overrides
    raw = OmegaConf.to_container(cfg, resolve=False)["run_name"]
    name = f"{raw.removesuffix(SEED_END)}-{tag}{SEED_END}" if raw.endswith(SEED_END) else f"{raw}-{tag}"
    return [*overrides, f"run_name={name}"]


def check_rules(cfg: DictConfig) -> None:
    """The run's `method.layers` rules against its model: a name that matches no layer, bits
    outside 1..32: ConfigError of one line (select.plan), before any run starts."""
    rules = cfg.method.get("layers")
    if rules is not None:
        plan(build_net(cfg), parse(OmegaConf.to_container(rules, resolve=True)))


def expand_layers(overrides: list[str], compose: Callable[[list[str]], DictConfig]) -> list[list[str]]:
    """One override list per candidate layer when an override holds `@layer` (the token
    replaced by the layer's name, a run_name with it added); else [overrides]."""
    if not any(LAYER in o for o in overrides):
        return [overrides]
    cfg = compose(overrides)
    out = []
    for name in layer_names(cfg):
        run = named_run([o.replace(LAYER, name) for o in overrides], cfg, name)
        check_rules(compose(run))
        out.append(run)
    return out


def quantized(rec: dict) -> list[dict]:
    """The record's per-layer rows (cost.py) of layers computing below 32 bits (W or A)."""
    return [r for r in rec.get("layers") or [] if r["bits"]["w"] < 32 or r["bits"]["a"] < 32]


def val_top1(rec: dict) -> float | None:
    """Validation Precision@1 of the tested model (the last epoch's)."""
    return rec.get("val_top1_last")


def layer_rows(records: list[dict]) -> list[dict]:
    """One row per finished run that quantized exactly one layer: model, method, layer, W/A bits,
    val P@1, its drop (points) from the mean val P@1 of the same model's FP32 runs (None
    without one), the layer's params and MACs, seed."""
    base: dict[str, list[float]] = {}
    for r in records:
        if r.get("method") == "fp32" and r.get("status") == "ok" and val_top1(r) is not None:
            base.setdefault(r["model"], []).append(val_top1(r))
    rows = []
    for r in records:
        q = quantized(r) if r.get("status") == "ok" else []
        if len(q) != 1:
            continue
        fp = base.get(r["model"])
        v = val_top1(r)
        ref = sum(fp) / len(fp) if fp else None
        rows.append({"model": r["model"], "method": r["method"], "method_label": r.get("method_label"),
                     "layer": q[0]["name"], "type": q[0]["type"], "bits_w": q[0]["bits"]["w"],
                     "bits_a": q[0]["bits"]["a"], "val_top1": v, "fp32_val_top1": ref,
                     "drop": None if v is None or ref is None else 100 * (ref - v),
                     "params": q[0]["params"], "macs": q[0]["macs"], "seed": r.get("seed")})
    return rows

