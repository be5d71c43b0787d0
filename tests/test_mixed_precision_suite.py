"""Mixed precision from the sensitivity table (benchmarks/mixed_precision.py): the greedy
allocation against hand-worked budgets, the budget met and monotone, the packed file at each
layer's own bits, the `@alloc` runs of the suite, the table and plots, bad budgets."""
import math

import pytest
import torch
from hydra import compose, initialize_config_dir

from benchmarks import mixed_precision as mp
from benchmarks import plots, tables
from benchmarks import suite as suite_runner
from lightning_modules.compression import container
from lightning_modules.compression.errors import ConfigError
from lightning_modules.compression.quantization.methods import DoReFa
from lightning_modules.models import LeNet5
from lightning_modules.record import write_json_atomic
from tests.test_sensitivity import REPO, record

# three layers: MACs, params; drops (points) when quantized alone at W = A = 4 and 2
COSTS = {"a": {"macs": 100, "params": 50}, "b": {"macs": 1000, "params": 500}, "c": {"macs": 10, "params": 1000}}
DROPS = {("a", 4): 0.2, ("a", 2): 3.0, ("b", 4): 0.5, ("b", 2): 2.0, ("c", 4): 0.1, ("c", 2): 5.0}
FULL_BOPS = 64 * (100 + 1000 + 10)  # 71,040 at 8 bits


@pytest.mark.parametrize("budget,bits", [
    # BOPs saved per step, MACs x (b_old^2 - b_new^2); the drop added per BOP saved picks the layer:
    # 8->4: a 0.2/4800, b 0.5/48000 (least), c 0.1/480             -> b=4, 23,040 BOPs left
    ("bops:0.5", {"a": 8, "b": 4, "c": 8}),
    # a 8->4 0.2/4800 (least), b 4->2 1.5/12000, c 0.1/480          -> a=4, 18,240
    ("bops:0.3", {"a": 4, "b": 4, "c": 8}),
    # a 4->2 2.8/1200, b 1.5/12000 (least), c 0.1/480               -> b=2, 6,240
    ("bops:0.1", {"a": 4, "b": 2, "c": 8}),
    # then c 8->4 (0.1/480 < 2.8/1200): 5,760; then a 4->2 (2.8/1200 < 4.9/120): 4,560
    ("bops:5000", {"a": 2, "b": 2, "c": 4}),
    # bytes saved ceil(params x b / 8): 8->4: a 0.2/25, b 0.5/250, c 0.1/500 (least) -> c=4, 1,050 B
    ("bytes:0.7", {"a": 8, "b": 8, "c": 4}),
    # c 4->2 4.9/250, a 0.2/25, b 0.5/250 (least)                   -> b=4, 800 B
    ("bytes:0.52", {"a": 8, "b": 4, "c": 4}),
])
def test_greedy_allocation_by_hand(budget, bits):
    assert mp.allocate(DROPS, COSTS, budget) == bits


def total(kind, alloc):
    return sum(mp.layer_cost(kind, COSTS[n], b) for n, b in alloc.items())


@pytest.mark.parametrize("kind", mp.KINDS)
def test_budget_met_and_a_smaller_budget_never_gives_a_layer_more_bits(kind):
    full = total(kind, dict.fromkeys(COSTS, 8))
    least = total(kind, dict.fromkeys(COSTS, 2))
    previous = None
    for value in [v for v in (1.0, 0.8, 0.6, 0.5, 0.4, 0.3, 0.26, 0.2, 0.15, 0.1) if v * full >= least] + [least]:
        alloc = mp.allocate(DROPS, COSTS, f"{kind}:{value!r}")
        assert total(kind, alloc) <= (value * full if value <= 1 else value)
        if previous:
            assert all(alloc[n] <= previous[n] for n in COSTS)
        previous = alloc
    assert previous == dict.fromkeys(COSTS, 2)
    assert mp.allocate(DROPS, COSTS, f"{kind}:1") == dict.fromkeys(COSTS, 8)
    assert kind == "bytes" or total(kind, dict.fromkeys(COSTS, 8)) == FULL_BOPS


def test_a_layer_goes_only_to_bits_measured_for_it():
    drops = {k: v for k, v in DROPS.items() if k != ("c", 2)}
    assert mp.allocate(drops, COSTS, "bops:4600") == {"a": 2, "b": 2, "c": 4}  # 4,560 BOPs


@pytest.mark.parametrize("budget,msg", [
    ("flops:0.2", r"^@alloc\(flops:0.2\): budget kind 'flops' unknown; valid: bops, bytes"),
    ("bops:-1", r"^@alloc\(bops:-1\): budget value '-1' must be a number > 0"),
    ("bops", r"^@alloc\(bops\): budget value '' must be a number > 0"),
    ("bops:0.05", r"^@alloc\(bops:0.05\): no allocation over bits \[8, 4, 2\] meets it: 3,552 bops asked, "
                  r"4,440 at the fewest bits measured; valid: a budget >= 0.0625 \(of 71,040 bops at 8 bits\) "
                  r"or >= 4440$"),
])
def test_bad_budgets_are_one_line(budget, msg):
    with pytest.raises(ConfigError, match=msg) as e:
        mp.allocate(DROPS, COSTS, budget)
    assert "\n" not in str(e.value)


def test_the_packed_file_stores_each_layer_at_its_own_bits(tmp_path):
    """An allocation's rules give each layer its bits in the packed file: its size lies between the
    uniform 2-bit and 8-bit files', it codes each layer at no more than its bits, and reloads to
    the same predictions."""
    alloc = {"features.0": 8, "features.2": 2, "classifier.1": 2, "classifier.3": 4}
    eight = {"w": 8, "a": 8, "g": 32}
    files, models = {}, {}
    for key, method in [("mixed", DoReFa(eight, layers=mp.rules(alloc))),
                        ("w2", DoReFa({"w": 2, "a": 2, "g": 32}, layers=[{"name": "*"}])),
                        ("w8", DoReFa(eight, layers=[{"name": "*"}]))]:
        torch.manual_seed(0)
        models[key] = method.apply(LeNet5()).eval()
        files[key] = method.export(models[key], tmp_path / f"{key}.pt")
        if key == "mixed":
            assert method.layer_bits(models[key]) == {n: {"w": b, "a": b, "g": 32} for n, b in alloc.items()}
    size = {k: p.stat().st_size for k, p in files.items()}
    assert size["w2"] < size["mixed"] < size["w8"]
    coded = {m["name"]: m["bits"] for m in container.read(files["mixed"], "packed")["layers"]}
    assert all(coded[n] <= b for n, b in alloc.items()) and coded["features.0"] > 4
    x = torch.randn(8, 1, 28, 28)
    loaded = DoReFa(eight, layers=mp.rules(alloc)).load(LeNet5(), files["mixed"]).eval()
    with torch.no_grad():
        assert torch.equal(loaded(x), models["mixed"](x))


LENET_DROPS = {"features.0": (0.03, 0.01), "features.2": (0.02, 0.002), "classifier.1": (0.01, 0.001),
               "classifier.3": (0.05, 0.004)}  # val P@1 drop at W=A=2, 4


def sensitivity_records() -> list[dict]:
    out = [record("fp32", 0.90, {})]
    for n, (d2, d4) in LENET_DROPS.items():
        out += [record("dorefa", 0.90 - d2, {n: 2}, w=2), record("dorefa", 0.90 - d4, {n: 4}, w=4)]
    return out


def test_drops_and_costs_from_the_sensitivity_records():
    drops, costs = mp.sensitivity(sensitivity_records(), "lenet5", "dorefa")
    assert drops == pytest.approx({(n, b): 100 * d for n, ds in LENET_DROPS.items() for b, d in zip((2, 4), ds)})
    fc = LeNet5().classifier[1]
    assert list(costs) == list(LENET_DROPS)
    assert costs["classifier.1"] == {"params": (fc.in_features + 1) * fc.out_features,
                                     "macs": fc.in_features * fc.out_features}
    assert mp.sensitivity(sensitivity_records(), "lenet5", "lqnet") == ({}, costs)


def write_records(results_dir, records):
    for r in records:
        write_json_atomic(results_dir / "runs" / "sensitivity" / r["run_name"] / "record.json", r)


def expand(overrides, results_dir):
    with initialize_config_dir(str(REPO / "conf"), version_base="1.3"):
        run = mp.expand_alloc([*overrides, f"results_dir={results_dir}"], lambda o: compose("config", overrides=o))
        return run, compose("config", overrides=run)


BASE = ["suite=mixed_precision", "model=lenet5", "method=dorefa", "bits.w=8", "bits.a=8", "bits.g=32"]


def test_alloc_token_becomes_the_allocations_rules_and_names_the_run(tmp_path):
    write_records(tmp_path, sensitivity_records())
    run, cfg = expand([*BASE, "method.layers=@alloc(bops:0.2)"], tmp_path)
    drops, costs = mp.sensitivity(sensitivity_records(), "lenet5", "dorefa")
    alloc = mp.allocate(drops, costs, "bops:0.2")
    assert len(set(alloc.values())) > 1  # really mixed
    assert [dict(r) | {"bits": dict(r.bits)} for r in cfg.method.layers] == mp.rules(alloc)
    assert cfg.run_name == "lenet5-dorefa-W8A8G32-32-mixed-bops0.2-s0"
    with pytest.raises(ConfigError, match=r"^@alloc\(bits:0.2\): budget kind 'bits' unknown"):
        expand([*BASE, "method.layers=@alloc(bits:0.2)"], tmp_path)
    with pytest.raises(ConfigError, match=r"^@alloc: 2 tokens in one run \(@alloc\(bops:0.2\), @alloc\(bytes:0.3\)\)"):
        expand([*BASE, "method.layers=@alloc(bops:0.2)", "+method.more=@alloc(bytes:0.3)"], tmp_path)


def test_without_sensitivity_records_the_suite_says_run_it_first(tmp_path, capsys):
    assert suite_runner.main(["mixed_precision", "--results-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "run `python -m benchmarks.suite sensitivity` first" in err
    assert not any(tmp_path.iterdir())  # nothing written


@pytest.mark.slow  # ~15 s: Hydra composes the suite's runs
def test_the_suite_plans_uniform_rows_and_four_allocations(tmp_path):
    write_records(tmp_path, sensitivity_records())
    _, runs = suite_runner.plan("mixed_precision", str(tmp_path))
    names = [r["run_name"] for r in runs]
    assert len(set(names)) == len(names) == 8
    assert {n for n in names if "mixed" in n} == {f"lenet5-dorefa-W8A8G32-32-mixed-{b}-s0" for b in
                                                  ("bops0.1", "bops0.2", "bytes0.3", "bytes0.4")}


def mixed_records() -> list[dict]:
    """FP32, uniform 2/2, 4/4, 8/8 (every layer) and one mixed run, P@1 rising with bits."""
    names = list(LENET_DROPS)
    rows = [record("fp32", 0.90, {})]
    for b, acc in ((2, 0.80), (4, 0.86), (8, 0.89)):
        rows.append(record("dorefa", acc, dict.fromkeys(names, b), w=b))
    alloc = dict(zip(names, (8, 2, 4, 8)))
    rows.append(record("dorefa", 0.875, alloc, w=8, method_label="DoReFa-Net mixed"))
    for r in rows:
        r["bops"] = sum(x["bops"] for x in r["layers"])
        r["footprint_bytes"] = math.ceil(sum(x["params"] * min(x["bits"]["w"], 32) / 8 for x in r["layers"]))
    return rows


def test_mixed_table_and_plots_from_records(tmp_path):
    suite = {"name": "mixed_precision", "table": "mixed", "plot": True}
    t = tables.suite_tables(suite, mixed_records())
    assert t.main["W/A per layer"].tolist() == ["32/32 32/32 32/32 32/32", "2/2 2/2 2/2 2/2", "4/4 4/4 4/4 4/4",
                                                "8/8 8/8 8/8 8/8", "8/8 2/2 4/4 8/8"]
    assert [tables.mixed(b) for b in t.frame.layer_bits] == [False, False, False, False, True]
    png = plots.suite_plots("mixed_precision", t.frame, tmp_path, which=("bops", "footprint"))
    assert set(png) == {"Precision@1 against BOPs", "Precision@1 against footprint"}
    assert all(p.stat().st_size > 0 for p in png.values())
    uniform = tables.with_layer_columns(tables.frame(mixed_records()[:4]), mixed_records()[:4])
    assert plots.plot_bops("t", uniform, tmp_path / "x.png") is None  # no mixed run: no BOPs plot
