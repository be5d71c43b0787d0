"""Rows that differ only by seed are one table row (benchmarks/seeds.py via tables.suite_tables):
mean, sample std and n of Precision@1/5, Val P@1 and throughput, against hand-computed values;
the CSV keeps one row per record; md, CSV and HTML come from the same function."""
import math

import pandas as pd
import pytest

from benchmarks import render, tables

HW = {"cpu": "Test CPU", "cpu_cores": 2, "torch_threads": 2, "gpu": None, "gpu_count": 0}


def rec(method, seed, top1, train_it, val=None, status="ok", bits=(32, 32, 32), sha="abc", **kw):
    w, a, g = bits
    return {"suite": "t", "run_name": f"lenet5-{method}-W{w}A{a}G{g}-32-s{seed}", "config_hash": f"h{seed}",
            "model": "lenet5", "method": method, "bits": {"w": w, "a": a, "g": g}, "precision": "32",
            "dataset": "fashion_mnist", "epochs": 1, "batch_size": 32, "seed": seed, "status": status,
            "top1": top1, "top5": 0.99, "val_top1_last": val, "train_it_s": train_it,
            "train_samples_s": None if train_it is None else train_it * 32, "test_it_s": 40.0,
            "test_samples_s": 40_000.0, "params": 10 + seed, "footprint_bytes": 1000 + seed,
            "checkpoint_bytes": 3000, "wall_s": 1.0, "git_sha": sha, "hardware": HW,
            "compute_dtype": "float32", "train_steady": True, "test_steady": True, **kw}


RECORDS = [  # FP32 over three seeds; DoReFa over two finished seeds and one failed; XNOR once
    rec("fp32", 0, 0.80, 10.0, val=0.81), rec("fp32", 1, 0.82, 12.0, val=0.83, sha="def"),
    rec("fp32", 2, 0.84, 14.0, val=0.85),
    rec("dorefa", 0, 0.70, 6.0, bits=(2, 2, 32)), rec("dorefa", 1, 0.80, 6.0, bits=(2, 2, 32)),
    rec("dorefa", 2, None, None, status="failed", bits=(2, 2, 32)),
    rec("xnor", 0, 0.60, 3.0, bits=(1, 1, 32)),
]


def test_mean_sample_std_and_n_per_group():
    t = tables.suite_tables({"name": "t"}, RECORDS)
    main = t.main.set_index("Bitwidth/method")
    assert list(main.index) == ["FP (32)", "dorefa (2,2,32)", "xnor (1,1,32)"]
    fp = main.loc["FP (32)"]
    # mean 0.82, sample std sqrt(((-.02)^2 + 0 + .02^2) / 2) = 0.02
    assert fp["Precision@1"] == "82.00% ± 2.00% (n=3)" and fp["Val P@1"] == "83.00% ± 2.00% (n=3)"
    assert fp["Thruput. (Training)"] == "12.00 ± 2.00 it/s (384 img/s) (n=3)"
    assert fp["Precision@5"] == "99.00% ± 0.00% (n=3)"
    assert fp["Commit"] == "abc, def" and fp["Params"] == "10"  # seed 0's run (params 10 + seed)
    d = main.loc["dorefa (2,2,32)"]  # the failed seed is not counted
    assert d["Precision@1"] == f"75.00% ± {100 * math.sqrt(0.005):.2f}% (n=2)"
    assert d["Thruput. (Training)"] == "6.00 ± 0.00 it/s (192 img/s) (n=2)" and d["Val P@1"] == "-"
    assert d["Train ×FP32"] == f"{6 / 12:.2f}×"  # the means' ratio
    x = main.loc["xnor (1,1,32)"]  # one seed: the plain value
    assert x["Precision@1"] == "60.00%" and x["Thruput. (Training)"] == "3.00 it/s (96 img/s)"
    assert t.row_of == [0, 0, 0, 1, 1, 1, 2] and len(t.frame) == len(RECORDS)


def test_the_math_against_pandas_on_other_values():
    vals = [0.913, 0.874, 0.902, 0.888]
    recs = [rec("fp32", s, v, 10.0 + s) for s, v in enumerate(vals)]
    rows, _ = tables.aggregate(tables.frame(recs))
    (row,) = rows.itertuples()
    assert row.top1 == pytest.approx(sum(vals) / 4)
    assert row.top1_std == pytest.approx(pd.Series(vals).std(ddof=1)) and row.top1_n == 4
    assert row.train_it_s == pytest.approx(11.5) and row.seeds == [0, 1, 2, 3]


def test_all_seeds_failed_shows_the_status():
    recs = [rec("bnn", s, None, None, status="failed", bits=(1, 1, 32)) for s in (0, 1)]
    t = tables.suite_tables({"name": "t"}, [rec("fp32", 0, 0.8, 10.0), *recs])
    assert t.main["Precision@1"].tolist() == ["80.00%", "failed"]


def test_compression_and_compact_tables_and_pivots_aggregate_too():
    t = tables.suite_tables({"name": "t", "table": "compression"}, RECORDS)
    assert t.main["Top-1 Error"].tolist()[0] == "18.00% ± 2.00% (n=3)"
    assert t.main["Val Top-1 Error"].tolist()[0] == "17.00% ± 2.00% (n=3)"
    t = tables.suite_tables({"name": "t", "table": "compact"}, RECORDS)
    assert t.main["Val P@1"].tolist() == ["83.00% ± 2.00% (n=3)", "-", "-"]
    pivot = {"rows": "bits_w", "cols": "bits_a", "value": "top1"}
    t = tables.suite_tables({"name": "t", "pivot": pivot}, RECORDS)
    assert t.pivots["dorefa"].loc["W2", "A2"] == f"75.00% ± {100 * math.sqrt(0.005):.2f}% (n=2)"


def test_md_and_html_show_one_row_per_group_and_the_csv_one_per_record(tmp_path):
    paths = render.write("t", {"description": "fixture"}, RECORDS, tmp_path)
    md, html = paths["md"].read_text(), paths["html"].read_text()
    assert md.count("82.00% ± 2.00% (n=3)") == 1 and html.count("82.00% ± 2.00% (n=3)") == 1
    assert "Rows of several seeds: mean ± sample std" in md
    csv = pd.read_csv(paths["csv"])
    assert len(csv) == len(RECORDS) and csv.top1.iloc[:3].tolist() == pytest.approx([0.80, 0.82, 0.84])


def test_the_reports_run_notes_keep_one_line_per_run_named_by_its_row():
    from benchmarks import report
    _, notes = report.suite_table(RECORDS, {"name": "t"})
    assert notes["Bitwidth/method"].tolist() == ["FP (32)"] * 3 + ["dorefa (2,2,32)"] * 3 + ["xnor (1,1,32)"]
    assert notes.seed.tolist() == [0, 1, 2, 0, 1, 2, 0] and notes.status.tolist()[5] == "failed"
