"""The documents' table from fixture records: labels, formatting, ratios, the three files."""
import pandas as pd
import pytest

from benchmarks import plots, render, tables

HW = {"cpu": "Test CPU", "cpu_cores": 2, "torch_threads": 2, "gpu": None, "gpu_count": 0}


def rec(model, precision, train_it, test_it, top1, method="fp32", bits=(32, 32, 32), status="ok", **kw):
    return {"suite": "t", "run_name": f"{model}-{precision}", "config_hash": "h", "model": model,
            "method": method, "bits": dict(zip("wag", bits)), "precision": precision,
            "dataset": "fashion_mnist", "epochs": 1, "batch_size": 32, "seed": 0, "status": status,
            "top1": top1, "top5": 0.99, "train_it_s": train_it, "train_samples_s": train_it * 32,
            "test_it_s": test_it, "test_samples_s": test_it * 1000, "params": 10,
            "footprint_bytes": 1_727_537, "checkpoint_bytes": 5_185_155, "wall_s": 1.0,
            "git_sha": "abc", "hardware": HW, "compute_dtype": "float16" if "16" in precision else "float32",
            **kw}


RECORDS = [rec("lenet5", "32", 50.0, 10.0, 0.9012, val_top1_last=0.9104), rec("lenet5", "16-mixed", 10.0, 2.0, 0.8999),
           rec("lenet5", "16-mixed-noscale", 12.5, 2.5, None, status="diverged"),
           rec("lenet5", "32", 20.0, 5.0, 0.80, method="dorefa", bits=(1, 2, 6), method_label="DoReFa-Net")]


def test_rows_in_the_documents_shape():
    shown = tables.display(tables.frame(RECORDS))
    assert list(shown.columns)[:8] == ["Bitwidth/method", "model", "Thruput. (Training)", "Thruput. (Test)",
                                       "Precision@1", "Val P@1", "Precision@5", "Footprint"]
    assert shown["Bitwidth/method"].tolist() == ["FP (32)", "FP (16) w/ LS", "FP (16) wo/ LS", "DoReFa-Net (1,2,6)"]
    assert shown["Precision@1"].tolist() == ["90.12%", "89.99%", "diverged", "80.00%"]
    assert shown["Val P@1"].tolist() == ["91.04%", "-", "-", "-"]  # records without validation: "-"
    assert shown["Thruput. (Training)"][1] == "10.00 it/s (320 img/s)"
    assert shown["Train ×FP32"].tolist() == ["1.00×", "0.20×", "0.25×", "0.40×"]
    assert shown["Footprint"][0] == "1.73 MB (ckpt 5.19 MB)"


def test_reference_ratios_are_computed_from_the_papers_numbers():
    ref = tables.reference("seed_table")
    alex = ref[ref.model == "AlexNet"].set_index("Bitwidth/method")
    assert alex.loc["FxP (16) w/ LS", "Train ×FP32"] == f"{1.13 / 1.26:.2f}×"
    assert alex.loc["XNOR-Net (1,1,32)", "Precision@1"] == "47.63%"
    assert (ref.source.str.len() > 0).all()


def test_three_files_written(tmp_path):
    paths = render.write("t", {"description": "fixture", "reference": "seed_table"}, RECORDS, tmp_path)
    md = paths["md"].read_text()
    assert "| FP (16) w/ LS" in md and "Test CPU, 2 cores" in md and "AlexNet" in md
    csv = pd.read_csv(paths["csv"])
    assert len(csv) == 4 and csv.top1.iloc[0] == pytest.approx(0.9012)
    assert csv.train_it_s_vs_fp32.iloc[1] == pytest.approx(0.2)
    html = paths["html"].read_text()
    assert html.count("<table") == 2 and "FP (16) wo/ LS" in html


def test_no_records_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="no records"):
        render.write("t", {}, [], tmp_path)


def test_pivot_is_w_by_a_per_method(tmp_path):
    recs = [rec("lenet5", "32", 10.0, 2.0, 0.5 + 0.01 * w + 0.001 * a, method="dorefa", bits=(w, a, 32),
                method_label="DoReFa-Net") for w in (1, 2, 32) for a in (2, 32)]
    recs.append(rec("lenet5", "32", 10.0, 2.0, 0.7, method="lqnet", bits=(2, 2, 32), method_label="LQ-Nets"))
    piv = tables.pivot_tables(tables.frame(recs))
    assert list(piv) == ["DoReFa-Net", "LQ-Nets"]
    d = piv["DoReFa-Net"]
    assert list(d.index) == ["W1", "W2", "W32"] and list(d.columns) == ["A2", "A32"]
    assert d.loc["W2", "A32"] == "55.20%" and piv["LQ-Nets"].loc["W2", "A2"] == "70.00%"
    md = render.write("sweep", {"pivot": {"rows": "bits_w", "cols": "bits_a"}}, recs, tmp_path)["md"].read_text()
    assert "DoReFa-Net: top1 by bits_w (rows) and bits_a (columns)" in md and "| W32 " in md


def test_legend_name_falls_back_to_the_method_for_missing_labels():
    from benchmarks.plots import legend_name
    assert legend_name("XNOR-Net", "xnor") == "XNOR-Net"
    assert [legend_name(v, "fp32") for v in (None, float("nan"), "")] == ["fp32"] * 3
    frame_label = pd.DataFrame([{"method": "fp32"}, {"method": "bnn", "method_label": "BNN"}]).method_label.iloc[0]
    assert pd.isna(frame_label) and legend_name(frame_label, "fp32") == "fp32"  # a missing key is NaN


def test_pareto_front_by_hand():
    # (footprint, top1): b is beaten by a (smaller and better), d by c; e is the best overall
    pts = [(10, 0.80), (20, 0.79), (30, 0.85), (40, 0.84), (50, 0.90)]
    assert plots.pareto(pts) == [0, 2, 4]
    assert plots.pareto([(5, 0.5), (5, 0.6)]) == [1]  # same size: only the better one


def test_footprint_plot_written_and_linked(tmp_path):
    recs = [rec("lenet5", "32", 10.0, 2.0, 0.5 + 0.01 * w, method="dorefa", bits=(w, 2, 32),
                method_label="DoReFa-Net", footprint_bytes=1000 * w) for w in (1, 2, 4)]
    paths = render.write("sweep", {"plot": True}, recs, tmp_path)
    png = paths["png"]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    assert f"]({png.name})" in paths["md"].read_text()
    assert f"src='{png.name}'" in paths["html"].read_text()
    assert "png" not in render.write("sweep2", {}, recs, tmp_path)  # off unless the suite asks


def test_compression_table_rates_against_the_models_ref(tmp_path):
    ref = rec("lenet300", "32", 100.0, 20.0, 0.90, params=266_610, footprint_bytes=1_070_000,
              nonzero_params=266_610, flops=532_000)
    pruned = rec("lenet300", "32", 90.0, 30.0, 0.8960, method="prune", method_label="Pruned",
                 params=266_610, nonzero_params=22_218, footprint_bytes=107_000, flops=532_000,
                 top5=0.995)
    layers = [{"layer": "net.1", "weights": 235_200, "kept_pct": 8.0, "weight_bits_pq": 5,
               "weight_bits_pqh": 4.4, "index_bits_pq": 5, "index_bits_pqh": 3.7, "compression": 31.9},
              {"layer": "total", "weights": 266_610, "kept_pct": None, "weight_bits_pq": None,
               "weight_bits_pqh": None, "index_bits_pq": None, "index_bits_pqh": None,
               "compression": 40.2}]
    dc = rec("lenet300", "32", 80.0, 20.0, 0.8955, method="deep_compression", method_label="Compressed",
             params=266_610, nonzero_params=22_218, footprint_bytes=26_750, report=layers)
    df = tables.frame([ref, pruned, dc])
    t = tables.display_compression(df)
    assert list(t.columns) == tables.COMPRESSION_COLUMNS
    assert list(t.Network) == ["lenet300 Ref", "lenet300 Pruned", "lenet300 Compressed"]
    assert list(t["Top-1 Error"]) == ["10.00%", "10.40%", "10.45%"]
    assert list(t["Compress. rate"]) == ["1.0×", "12.0×", "12.0×"]  # 266,610 / 22,218
    assert list(t["File rate"]) == ["1.0×", "10.0×", "40.0×"]      # 1,070,000 / 26,750
    assert t["Test ×FP32"].iloc[1] == "1.50×" and t["Parameters"].iloc[1] == "22.22K"
    paths = render.write("deep_compression", {"reference": "deep_compression", "table": "compression"},
                         [ref, pruned, dc], tmp_path)
    md = paths["md"].read_text()
    assert "Per layer, lenet300 Compressed" in md and "| net.1 " in md and "40.2×" in md
    assert "LeNet-5 Compressed" in md and "39×" in md  # the paper's rows beside ours
    with pytest.raises(ValueError, match="table='pivot'"):
        tables.suite_tables({"name": "x", "table": "pivot"}, [ref])


def test_suite_runs_expand_like_hydra_multirun():
    from benchmarks.suite import expand
    assert expand(["method=dorefa", "bits.w=1,2", "bits.a=2,4", "seed=0"]) == [
        ["method=dorefa", f"bits.w={w}", f"bits.a={a}", "seed=0"] for w in (1, 2) for a in (2, 4)]
    assert expand(["data.root=/x", "tags=[a,b]"]) == [["data.root=/x", "tags=[a,b]"]]


@pytest.mark.parametrize("kind", ["quant", "compression", "compact"])
def test_every_run_table_says_each_rows_commit_and_marks_a_dirty_tree(kind, tmp_path):
    shas = ["0123456789abcdef", "fedcba9876543210-dirty", None, "0123456789abcdef"]
    records = [{**r, "git_sha": s} for r, s in zip(RECORDS, shas)]
    t = tables.suite_tables({"name": "t", "table": kind}, records)
    assert t.main.columns[-1] == "Commit"
    assert t.main.Commit.tolist() == ["0123456", "fedcba9 dirty", "-", "0123456"]
    paths = render.write("t", {"table": kind}, records, tmp_path)
    md, page = paths["md"].read_text(), paths["html"].read_text()
    assert "| fedcba9 dirty " in md and "<td>fedcba9 dirty</td>" in page
    assert "Commit: 0123456789abcdef, fedcba9876543210-dirty (each row's in its Commit column" in md
    assert pd.read_csv(paths["csv"]).git_sha.fillna("-").tolist() == [s or "-" for s in shas]


def test_a_figure_that_is_not_steady_is_marked_and_the_header_says_so():
    from benchmarks import render
    steady = rec("lenet5", "32", 100.0, 50.0, 0.9, train_steady=True, test_steady=True)
    short = rec("lenet5", "32", 100.0, 50.0, 0.9, method="xnor", train_steady=True, test_steady=False)
    df = tables.frame([steady, short])
    assert tables.speeds(df, "test")[0].endswith("img/s)") and tables.speeds(df, "test")[1].endswith(" †")
    assert not tables.speeds(df, "train")[1].endswith("†")
    assert tables.all_steady(tables.frame([steady])) and not tables.all_steady(df)
    assert "†: too few batches" in render.header("s", "", df)[2]
    assert "†" not in render.header("s", "", tables.frame([steady]))[2]
    old = {k: v for k, v in short.items() if k not in ("train_steady", "test_steady")}
    assert tables.speeds(tables.frame([{**old, "throughput_steady": False}]), "train")[0].endswith(" †")


def test_deployed_column_appears_with_deploy_records_and_names_the_backend():
    dep = dict(deploy_backend="onnx", deploy_layers={"a": "int8", "b": "fp32"}, deploy_x_fp32=1.734,
               deploy_test_samples_s=900.0, deploy_top1=0.8)
    recs = [rec("lenet5", "32", 50.0, 10.0, 0.9, deploy_backend="onnx", deploy_layers={"a": "fp32"},
                deploy_x_fp32=1.0, deploy_test_samples_s=500.0, deploy_top1=0.9),
            rec("lenet5", "32", 20.0, 5.0, 0.8, method="dorefa", bits=(2, 2, 32), **dep),
            rec("lenet5", "32", 20.0, 5.0, 0.8, method="xnor", bits=(1, 1, 32), deploy_backend="binary",
                deploy_layers={"a": "binary"}, deploy_x_fp32=2.5, deploy_test_samples_s=1e4, deploy_top1=0.7),
            rec("lenet5", "32", 20.0, 5.0, 0.8, method="ttq", bits=(2, 32, 32), deploy_backend="none",
                deploy_reason="no exporter"),
            rec("lenet5", "32", 20.0, 5.0, 0.8, method="twn", bits=(2, 32, 32))]  # before the deploy step
    for shown in (tables.display(tables.frame(recs)), tables.display_compression(tables.frame(recs))):
        assert shown[tables.DEPLOYED].tolist() == ["1.00× (onnx fp32)", "1.73× (onnx int8)", "2.50× (binary)",
                                                   "- (none)", "-"]
    old = [r for r in recs if "deploy_backend" not in r]
    assert tables.DEPLOYED not in tables.display(tables.frame(old))  # old tables keep their columns


def test_deployed_latency_plot_only_with_deploy_records(tmp_path):
    recs = [rec("lenet5", "32", 10.0, 2.0, 0.5 + 0.01 * w, method="dorefa", bits=(w, 2, 32),
                deploy_backend="onnx", deploy_test_samples_s=100.0 * w, deploy_top1=0.5 + 0.01 * w)
            for w in (1, 2, 4)]
    png = plots.plot_deployed("s", tables.frame(recs), tmp_path / "d.png")
    assert png is not None and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert plots.plot_deployed("s", tables.frame(RECORDS), tmp_path / "none.png") is None
    assert plots.pareto([(1000 / (100.0 * w), 0.5 + 0.01 * w) for w in (1, 2, 4)]) == [2]


@pytest.mark.parametrize("run_name, want", [
    ("lenet5-dorefa-W8A8G32-32-mixed-bops0.1-s0", "DoReFa-Net mixed (bops 0.1, G32)"),
    ("lenet5-dorefa-W8A8G32-32-mixed-bytes20000-s2", "DoReFa-Net mixed (bytes 20000, G32)"),
    ("lenet5-dorefa-W8A8G32-32-mixed-bops1e-05-s0", "DoReFa-Net mixed (bops 1e-05, G32)"),
    ("lenet5-dorefa-W8A8G32-32-s0", "DoReFa-Net (8,8,32)"),
    ("lenet5-dorefa-mixedup-W8A8G32-32-s0", "DoReFa-Net (8,8,32)"),
])
def test_a_run_whose_bits_a_budget_chose_is_labelled_by_the_budget(run_name, want):
    """The run-name tag of benchmarks.mixed_precision.expand_alloc names the row, not the base bits."""
    rec = {"precision": "32", "method": "dorefa", "method_label": "DoReFa-Net", "run_name": run_name,
           "bits": {"w": 8, "a": 8, "g": 32}}
    assert tables.label(rec) == want


def test_the_mixed_run_tag_is_the_one_expand_alloc_writes():
    from omegaconf import OmegaConf

    from benchmarks.sensitivity import named_run
    cfg = OmegaConf.create({"run_name": "${model.name}-${method.name}-W8A8G32-32-s${seed}"})
    (name,) = [o.partition("=")[2] for o in named_run(["method=dorefa"], cfg, "mixed-bops0.25")
               if o.startswith("run_name=")]
    rec = {"precision": "32", "method": "dorefa", "method_label": "D", "bits": {"w": 8, "a": 8, "g": 32},
           "run_name": name.replace("${model.name}", "lenet5").replace("${method.name}", "dorefa").replace("${seed}", "1")}
    assert tables.label(rec) == "D mixed (bops 0.25, G32)"
