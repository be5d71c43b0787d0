"""Mixed precision from the sensitivity table: per-layer bits chosen greedily under a budget.

`allocate(drops, costs, budget)` starts every layer at the highest candidate bits (8: W = A = 8)
and, while the model's cost is over the budget, lowers by one candidate step the layer whose
validation Precision@1 drop grows least per unit of cost saved (ties: the earlier layer), where

- cost in BOPs: MACs x W x A (compression/cost.py; W = A = b here), and
- cost in bytes: ceil(params x b / 8), the layer's codes in the packed file
  (quantization/pack.py; biases, codebooks and the container's header come on top);

and `drops[(layer, b)]` is the drop (points) of the sensitivity suite's run that quantized that
layer alone at W = A = b (benchmarks/sensitivity.py); a layer is lowered only to bits measured
for it, and its drop at the highest candidate is 0 unless measured. The steps taken do not
depend on the budget, so a smaller budget never gives any layer more bits.

A budget is `<kind>:<value>`: kind bops or bytes; value in (0, 1] a fraction of the cost with
every layer at the highest candidate, above 1 an absolute number of BOPs / bytes.

In a suite, the run entry token `@alloc(bops:0.25)` inside an override (e.g.
`method.layers=@alloc(bops:0.25)`) is replaced by the allocation's `method.layers` rules (one per
layer: its own W/A bits, compression/select.py), from the records of the suite named by the
mixed suite's `sensitivity_suite` key (default `sensitivity`) under the same results_dir, of the
run's model and method; candidate bits from its `candidate_bits` key (default [8, 4, 2]). The run
name gets `-mixed-<kind><value>` before its `-s<seed>` end. Pure functions of the records.
"""
from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from omegaconf import DictConfig

from benchmarks.sensitivity import layer_rows, named_run
from lightning_modules.compression.errors import ConfigError
from lightning_modules.record import read_record

KINDS = ("bops", "bytes")
CANDIDATES = (8, 4, 2)
TOKEN = re.compile(r"@alloc\(([^)]*)\)")


def parse_budget(text: str) -> tuple[str, float]:
    """`bops:0.25` -> ("bops", 0.25); ConfigError naming the value and what is valid."""
    kind, _, value = str(text).partition(":")
    kind = kind.strip()
    if kind not in KINDS:
        raise ConfigError(f"@alloc({text}): budget kind {kind!r} unknown; valid: {', '.join(KINDS)} "
                          "(e.g. @alloc(bops:0.25), @alloc(bytes:20000))")
    try:
        v = float(value)
    except ValueError:
        v = float("nan")
    if not v > 0 or math.isinf(v):
        raise ConfigError(f"@alloc({text}): budget value {value!r} must be a number > 0 (a fraction "
                          "in (0, 1] of the highest-bit cost, or an absolute number above 1)")
    return kind, v


def layer_cost(kind: str, layer: Mapping, bits: int) -> int:
    """One layer's cost at W = A = `bits`: BOPs = MACs x W x A, bytes = ceil(params x bits / 8)."""
    if kind == "bops":
        return int(layer["macs"]) * bits * bits
    return math.ceil(int(layer["params"]) * bits / 8)


def allocate(drops: Mapping[tuple[str, int], float], costs: Mapping[str, Mapping], budget: str,
             candidates: Sequence[int] = CANDIDATES) -> dict[str, int]:
    """{layer: bits} (layers in the order of `costs`, each {params, macs}) meeting `budget`
    (module docstring); ConfigError when no allocation over `candidates` meets it."""
    kind, value = parse_budget(budget)
    cands = sorted({int(b) for b in candidates}, reverse=True)
    top = cands[0]
    drop = lambda name, b: drops.get((name, b), 0.0 if b == top else None)  # noqa: E731
    steps = {n: [b for b in cands if drop(n, b) is not None] for n in costs}
    bits = {n: top for n in costs}
    full = sum(layer_cost(kind, c, top) for c in costs.values())
    limit = value * full if value <= 1 else value
    total = full
    while total > limit:
        best = None
        for n, c in costs.items():
            lower = [b for b in steps[n] if b < bits[n]]
            if not lower:
                continue
            saved = layer_cost(kind, c, bits[n]) - layer_cost(kind, c, lower[0])
            if saved <= 0:
                continue
            score = (drop(n, lower[0]) - drop(n, bits[n])) / saved
            if best is None or score < best[0]:
                best = (score, n, lower[0], saved)
        if best is None:
            raise ConfigError(f"@alloc({budget}): no allocation over bits {cands} meets it: "
                              f"{math.floor(limit):,} {kind} asked, {total:,} at the fewest bits measured; "
                              f"valid: a budget >= {math.ceil(total / full * 1e4) / 1e4:g} (of {full:,} "
                              f"{kind} at {top} bits) or >= {total}")
        _, n, b, saved = best
        bits[n], total = b, total - saved
    return bits


def rules(alloc: Mapping[str, int]) -> list[dict]:
    """The allocation as `method.layers` rules: each layer quantized at its own W = A bits."""
    return [{"name": n, "quantize": True, "bits": {"w": b, "a": b}} for n, b in alloc.items()]


def rules_override(alloc: Mapping[str, int]) -> str:
    """The rules in Hydra's override grammar: [{name:'features.0',quantize:true,bits:{w:8,a:8}},...]."""
    return "[" + ",".join(f"{{name:'{n}',quantize:true,bits:{{w:{b},a:{b}}}}}" for n, b in alloc.items()) + "]"


def sensitivity(records: list[dict], model: str, method: str) -> tuple[dict, dict]:
    """(drops {(layer, bits): mean drop over seeds, points}, costs {layer: {params, macs}} in
    forward order) from the sensitivity runs of `model` quantized by `method` at W = A."""
    sums: dict[tuple[str, int], list[float]] = {}
    for r in layer_rows(records):
        if r["model"] == model and r["method"] == method and r["bits_w"] == r["bits_a"] and r["drop"] is not None:
            sums.setdefault((r["layer"], r["bits_w"]), []).append(r["drop"])
    drops = {k: sum(v) / len(v) for k, v in sums.items()}
    costs = {}
    for rec in records:
        if rec.get("model") == model and rec.get("status") == "ok" and rec.get("layers"):
            costs = {row["name"]: {"params": row["params"], "macs": row["macs"]} for row in rec["layers"]}
            break
    return drops, costs


def read_records(results_dir: str | Path, suite: str) -> list[dict]:
    """The finished records under <results_dir>/runs/<suite>/."""
    recs = (read_record(p) for p in sorted(Path(results_dir).glob(f"runs/{suite}/*/record.json")))
    return [r for r in recs if r and r.get("status") == "ok"]


def from_suite(cfg: DictConfig, budget: str) -> dict[str, int]:
    """The allocation for a composed run: its model and method, the records of its suite's
    `sensitivity_suite`, its `candidate_bits`."""
    source = cfg.suite.get("sensitivity_suite") or "sensitivity"
    parse_budget(budget)
    drops, costs = sensitivity(read_records(cfg.results_dir, source), cfg.model.name, cfg.method.name)
    if not drops or not costs:
        raise ConfigError(f"@alloc({budget}): no finished sensitivity runs of {cfg.model.name} with "
                          f"method {cfg.method.name} (and an fp32 run) under {cfg.results_dir}/runs/{source}; "
                          f"run `python -m benchmarks.suite {source}` first")
    return allocate(drops, costs, budget, cfg.suite.get("candidate_bits") or CANDIDATES)


def expand_alloc(overrides: list[str], compose: Callable[[list[str]], DictConfig]) -> list[str]:
    """`overrides` with its `@alloc(<budget>)` token replaced by the allocation's rules and a
    run_name saying the budget; unchanged without a token."""
    found = [(i, m) for i, o in enumerate(overrides) for m in TOKEN.finditer(o)]
    if not found:
        return overrides
    if len(found) > 1:
        tokens = ", ".join(m.group(0) for _, m in found)
        raise ConfigError(f"@alloc: {len(found)} tokens in one run ({tokens}); valid: one per run")
    i, m = found[0]
    cfg = compose(overrides[:i] + overrides[i + 1:])
    alloc = from_suite(cfg, m.group(1))
    kind, value = parse_budget(m.group(1))
    run = [*overrides[:i], overrides[i].replace(m.group(0), rules_override(alloc)), *overrides[i + 1:]]
    return named_run(run, cfg, f"mixed-{kind}{value:g}")
