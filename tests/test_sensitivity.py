"""The sensitivity suite: `@layer` runs over the model's candidate layers, the table and the bar
plot from records (benchmarks/sensitivity.py), bad rules refused before anything runs."""
from pathlib import Path

import pandas as pd
import pytest
from hydra import compose, initialize_config_dir

from benchmarks import plots, render, sensitivity, tables
from benchmarks import suite as suite_runner
from lightning_modules.compression.cost import cost
from lightning_modules.compression.errors import ConfigError
from lightning_modules.compression.select import candidates
from lightning_modules.models import LeNet5

REPO = Path(__file__).resolve().parents[1]
LAYER_RULES = "method.layers=[{name:'*',quantize:false},{name:'@layer',quantize:true}]"
BASE = ["model=lenet5", "method=dorefa", "bits.w=2", "bits.a=2", "bits.g=32", "suite=sensitivity"]


def expanded(overrides: list[str]) -> list[tuple[list[str], object]]:
    with initialize_config_dir(str(REPO / "conf"), version_base="1.3"):
        runs = sensitivity.expand_layers(overrides, lambda o: compose("config", overrides=o))
        return [(run, compose("config", overrides=run)) for run in runs]


def test_layer_token_makes_one_run_per_candidate_layer_with_distinct_readable_names():
    names = [n for n, _ in candidates(LeNet5())]
    runs = expanded([*BASE, LAYER_RULES])
    assert len(runs) == len(names) == 4  # LeNet-5: 2 convs, 2 linear layers; first and last included
    for name, (overrides, cfg) in zip(names, runs):
        rules = list(cfg.method.layers)
        assert rules[1]["name"] == name and rules[1]["quantize"] is True and rules[0]["quantize"] is False
        assert cfg.run_name == f"lenet5-dorefa-W2A2G32-32-{name}-s0"  # the layer before -s<seed>
    assert len({cfg.run_dir for _, cfg in runs}) == 4
    assert expanded(BASE)[0][0] == BASE  # no token: the run as it is


def test_a_run_that_names_itself_keeps_its_name_with_the_layer_in_it():
    runs = expanded([*BASE, LAYER_RULES, "run_name=sens-@layer-s${seed}"])
    assert [cfg.run_name for _, cfg in runs] == [f"sens-{n}-s0" for n in
                                                 ("features.0", "features.2", "classifier.1", "classifier.3")]


@pytest.mark.slow  # ~15 s: Hydra composes 18 runs
def test_the_suite_plans_fp32_and_each_layer_at_two_and_four_bits(tmp_path):
    suite, runs = suite_runner.plan("sensitivity", str(tmp_path))
    names = [r["run_name"] for r in runs]
    assert len(names) == len(set(names)) == 1 + 2 * 4
    assert names[0] == "lenet5-fp32-W32A32G32-32-s0"
    assert "lenet5-dorefa-W4A4G32-32-classifier.3-s0" in names
    # another method, with more overrides of its runs only (ptq: its init_from)
    _, runs = suite_runner.plan("sensitivity", str(tmp_path), ["suite.method=uniform",
                                                                "suite.method_args=['method.label=U']"])
    assert {(r["cfg"].method.name, r["cfg"].method.label) for r in runs[1:]} == {("uniform", "U")}
    assert runs[0]["cfg"].method.name == "fp32" and "label" not in runs[0]["cfg"].method


@pytest.mark.parametrize("rule,msg", [
    ("{name:'conv9',bits:{w:2}}", r"^method.layers\[2\].name=conv9: matches no Conv2d/Linear layer; valid names:"),
    ("{name:'@layer',bits:{w:40}}", r"^method.layers\[2\].bits.w=40: must be an integer in 1..32$"),
    ("{name:'@layer',bits:{a:0}}", r"^method.layers\[2\].bits.a=0: must be an integer in 1..32$"),
])
def test_bad_rules_are_one_line_before_any_run(rule, msg):
    bad = f"method.layers=[{{name:'*',quantize:false}},{{name:'@layer',quantize:true}},{rule}]"
    with pytest.raises(ConfigError, match=msg) as e:
        expanded([*BASE, bad])
    assert "\n" not in str(e.value)


def layers_of(bits: dict) -> list[dict]:
    """A LeNet-5 record's per-layer rows (cost.py) with `bits` {layer: W=A bits}, others 32."""
    return cost(LeNet5(), (1, 28, 28), {n: {"w": b, "a": b} for n, b in bits.items()}, flops=0)["layers"]


def record(method: str, val: float, bits: dict, w: int = 32, seed: int = 0, **kw) -> dict:
    name = "-".join(["lenet5", method, *(f"{n}:{b}" for n, b in bits.items())]) + f"-s{seed}"
    return {"suite": "sensitivity", "run_name": name, "config_hash": name, "model": "lenet5", "method": method,
            "bits": {"w": w, "a": w, "g": 32}, "precision": "32", "dataset": "fashion_mnist", "status": "ok",
            "seed": seed, "top1": val - 0.01, "top5": 0.99, "val_top1_last": val, "train_it_s": 10.0,
            "train_samples_s": 320.0, "test_it_s": 5.0, "test_samples_s": 5000.0, "footprint_bytes": 1000,
            "checkpoint_bytes": 3000, "params": 61706, "git_sha": "abc", "layers": layers_of(bits), **kw}


DROPS = {"features.0": 0.04, "features.2": 0.01, "classifier.1": 0.005, "classifier.3": 0.02}
RECORDS = [record("fp32", 0.90, {})] + [record("dorefa", 0.90 - d, {n: 2}, w=2) for n, d in DROPS.items()]


def test_rows_say_the_layer_its_drop_params_and_macs():
    rows = sensitivity.layer_rows(RECORDS)
    assert [r["layer"] for r in rows] == list(DROPS)
    fp = {r["name"]: r for r in layers_of({})}
    for r in rows:
        assert r["drop"] == pytest.approx(100 * DROPS[r["layer"]])
        assert (r["params"], r["macs"]) == (fp[r["layer"]]["params"], fp[r["layer"]]["macs"])
        assert (r["bits_w"], r["bits_a"]) == (2, 2)


def test_table_and_bar_plot_from_records(tmp_path):
    suite = {"name": "sensitivity", "table": "sensitivity", "description": "fixture"}
    t = tables.suite_tables(suite, RECORDS)
    main = t.main.set_index("Layer")
    assert main.loc["- (FP32)", "Δ Val P@1 vs FP32"] == "+0.00 pts"
    for name, d in DROPS.items():
        assert main.loc[name, "Δ Val P@1 vs FP32"] == f"{-100 * d:+.2f} pts"
        assert main.loc[name, "Bits (W/A)"] == "2/2"
    fp = {r["name"]: r for r in layers_of({})}
    assert main.loc["classifier.1", "Layer params"] == tables._count(fp["classifier.1"]["params"])
    assert main.loc["features.2", "Layer MACs"] == tables._count(fp["features.2"]["macs"])
    assert t.frame.quantized_at.tolist()[1:] == [0, 1, 2, 3]  # the bars' order: forward
    png = plots.suite_plots("sensitivity", t.frame, tmp_path, which=("sensitivity",))
    assert list(png.values()) == [tmp_path / "sensitivity_sensitivity.png"]
    assert png["Validation P@1 drop per layer"].stat().st_size > 0
    paths = render.write("sensitivity", suite, RECORDS, tmp_path)
    assert "| features.0" in paths["md"].read_text() and len(pd.read_csv(paths["csv"])) == 5


def test_no_bar_plot_for_suites_that_are_not_a_sensitivity_sweep(tmp_path):
    uniform = [RECORDS[0], record("dorefa", 0.8, {n: 2 for n in DROPS}, w=2)]
    for recs in (uniform, RECORDS[:2]):  # every layer quantized; one layer alone
        df = tables.with_layer_columns(tables.frame(recs), recs)
        assert plots.plot_sensitivity("t", df, tmp_path / "x.png") is None
    assert plots.plot_sensitivity("t", tables.frame(RECORDS), tmp_path / "x.png") is None  # not a per-layer table
