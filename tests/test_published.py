"""Published numbers (benchmarks/reference/paper_numbers.csv) and how tables set them beside our
runs: every row has a source, every suite's `reference:` names rows that exist, Δ P@1 only on an
exact match (model, method, precision, bits, dataset), a closest published row (same method) is
named with its model and dataset and has no Δ, in md, csv, html and the report alike."""
import pandas as pd
import pytest
from omegaconf import OmegaConf

from benchmarks import published, render, report, tables
from tests.conftest import REPO
from tests.test_tables import rec

CSV = published.REFERENCE_CSV
SUITES = sorted((REPO / "conf" / "suite").glob("*.yaml"))


def test_the_csv_parses_and_every_row_has_a_source():
    ref = pd.read_csv(CSV, dtype={"precision": str})
    assert {"table", "label", "method", "method_label", "precision", "w", "a", "g", "model", "model_id",
            "dataset", "top1", "source"} <= set(ref.columns)
    assert ref.source.notna().all() and (ref.source.str.strip().str.len() > 0).all()
    assert ref.model.notna().all() and ref.dataset.notna().all() and ref.method.notna().all()
    assert ref[["w", "a", "g"]].notna().all().all()
    top = ref.top1.dropna()
    assert ((top > 0) & (top <= 1)).all()  # fractions, not percentages
    assert not ref.duplicated(["table", "label", "model", "dataset", "source"]).any()


@pytest.mark.parametrize("path", SUITES, ids=lambda p: p.stem)
def test_every_suite_reference_names_published_rows(path):
    table = OmegaConf.load(path).get("reference")
    if table is not None:
        assert not published.read(table).empty, f"{path.name}: reference={table!r} has no rows in {CSV.name}"


def test_suites_with_a_published_counterpart_name_it():
    named = {p.stem: OmegaConf.load(p).get("reference") for p in SUITES}
    for suite in ("binary_family", "bitwidth_sweep", "quantized_distillation", "product_quantization",
                  "compact", "sspq_chain", "lqnets_cifar10", "seed_table", "han_pruning", "deep_compression",
                  "hinton_kd"):
        assert named[suite], suite


ROWS = ("table,label,method,method_label,precision,w,a,g,model,model_id,dataset,train_it_s,test_it_s,top1,top5,"
        "footprint,params,rate,source\n"
        't,"XNOR-Net (1,1,32)",xnor,,32,1,1,32,AlexNet,alexnet,ImageNet,,,0.442,,,,,paper A\n'
        't,"LQ-Nets (2,2,32)",lqnet,,32,2,2,32,ResNet-20,resnet20,CIFAR-10,,,0.902,,,,,paper B\n'
        't,"LQ-Nets (2,2,32)",lqnet,,32,2,2,32,ResNet-18,resnet18,ImageNet,,,0.649,,,,,paper C\n'
        't,"PM Quant. (2,32,32)",pm_quant,PM Quant.,32,2,32,32,Student,,CIFAR-10,,,0.093,,,,,paper D\n'
        'u,"XNOR-Net (1,1,32)",xnor,,32,1,1,32,LeNet-5,lenet5,Fashion-MNIST,,,0.80,,,,,paper E\n')


@pytest.fixture
def csv(tmp_path, monkeypatch):
    path = tmp_path / "paper_numbers.csv"
    path.write_text(ROWS)
    monkeypatch.setattr(published, "REFERENCE_CSV", path)
    return path


def records():
    data = {"dataset": "cifar10"}
    return [rec("lenet5", "32", 10.0, 2.0, 0.85, method="xnor", bits=(1, 1, 32), method_label="XNOR-Net"),
            {**rec("resnet20", "32", 10.0, 2.0, 0.9112, method="lqnet", bits=(2, 2, 32), method_label="LQ-Nets"), **data},
            {**rec("resnet20", "32", 10.0, 2.0, 0.9100, method="lqnet", bits=(2, 2, 32), method_label="LQ-Nets"), **data},
            {**rec("resnet20", "32", 10.0, 2.0, 0.90, method="lqnet", bits=(2, 2, 32), method_label="LQ-Nets"),
             "dataset": "fashion_mnist"},                                   # dataset differs: closest
            {**rec("resnet20", "32", 10.0, 2.0, 0.88, method="lqnet", bits=(3, 3, 32), method_label="LQ-Nets"), **data},
            rec("mlp2x64", "32", 10.0, 2.0, 0.70, method="pm_quant", bits=(2, 32, 32), method_label="PM Quant. (bucket 256)"),
            rec("lenet5", "32", 10.0, 2.0, 0.89)]                           # fp32: no published row


def test_delta_only_on_exact_matches_and_closest_rows_carry_none(csv):
    df = published.annotate(tables.frame(records()), "t")
    assert list(df.paper_match) == ["closest published", "exact", "exact", "closest published",
                                    "closest published", None, None]
    assert df.paper_row[0] == "XNOR-Net (1,1,32) (AlexNet, ImageNet)"   # names its model and dataset
    assert df.paper_delta_pts[1] == pytest.approx(100 * (0.9112 - 0.902))
    assert df.paper_delta_pts[2] == pytest.approx(100 * (0.9100 - 0.902))
    assert all(d is None for d, m in zip(df.paper_delta_pts, df.paper_match) if m != "exact")
    # bits differ (3/3 against 2/2): the row with the same model and dataset is still the closest
    assert df.paper_row[4] == "LQ-Nets (2,2,32) (ResNet-20, CIFAR-10)"
    # the bucketed PM run is not the paper's PM without buckets (method_label)
    assert df.paper_row[5] is None
    assert report.paper_delta(tables.frame(records()), "t", csv) == [
        "closest published: XNOR-Net (1,1,32) (AlexNet, ImageNet), no Δ", "+0.92 pts P@1 vs LQ-Nets (2,2,32) "
        "(ResNet-20, CIFAR-10)", "+0.80 pts P@1 vs LQ-Nets (2,2,32) (ResNet-20, CIFAR-10)",
        "closest published: LQ-Nets (2,2,32) (ResNet-20, CIFAR-10), no Δ",
        "closest published: LQ-Nets (2,2,32) (ResNet-20, CIFAR-10), no Δ", "-", "-"]


def test_an_exact_match_needs_the_dataset_too(csv):
    same = published.annotate(tables.frame([rec("lenet5", "32", 1.0, 1.0, 0.81, method="xnor", bits=(1, 1, 32))]), "u")
    assert same.paper_match[0] == "exact" and same.paper_delta_pts[0] == pytest.approx(1.0)
    other = published.annotate(tables.frame([{**rec("lenet5", "32", 1.0, 1.0, 0.81, method="xnor", bits=(1, 1, 32)),
                                              "dataset": "mnist"}]), "u")
    assert other.paper_match[0] == "closest published" and other.paper_delta_pts[0] is None
    failed = published.annotate(tables.frame([rec("lenet5", "32", 1.0, 1.0, None, method="xnor", bits=(1, 1, 32),
                                                  status="failed")]), "u")
    assert failed.paper_match[0] == "exact" and failed.paper_delta_pts[0] is None


def test_the_published_rows_say_which_runs_they_stand_beside(csv, tmp_path):
    t = tables.suite_tables({"name": "x", "reference": "t"}, records())
    ref = t.reference.set_index("source")
    assert ref.loc["paper A", "Match"] == "closest published for: XNOR-Net (1,1,32), lenet5"
    assert ref.loc["paper A", "Δ P@1"] == "-"
    assert ref.loc["paper B", "Match"] == ("exact: LQ-Nets (2,2,32), resnet20 — closest published for: "
                                           "LQ-Nets (2,2,32), resnet20; LQ-Nets (3,3,32), resnet20")
    assert ref.loc["paper B", "Δ P@1"] == f"{100 * ((0.9112 + 0.91) / 2 - 0.902):+.2f} pts (n=2)"
    assert ref.loc["paper C", "Match"] == "-" and ref.loc["paper D", "Match"] == "-"
    paths = render.write("x", {"reference": "t"}, records(), tmp_path)
    md, html = paths["md"].read_text(), paths["html"].read_text()
    for text in ("closest published for: XNOR-Net (1,1,32), lenet5", "Δ P@1", "(n=2)"):
        assert text in md and text in html
    out = pd.read_csv(paths["csv"])
    assert list(out.paper_match.fillna("")) == ["closest published", "exact", "exact", "closest published",
                                                "closest published", "", ""]
    assert out.paper_delta_pts.notna().tolist() == [False, True, True, False, False, False, False]
    comp = tables.suite_tables({"name": "x", "reference": "t", "table": "compression"}, records()).reference
    assert {"Match", "Δ P@1", "model", "dataset"} <= set(comp.columns)


def test_the_real_suites_show_no_delta_across_datasets():
    """Our Fashion-MNIST runs against the MNIST / ImageNet papers: closest published, no Δ."""
    recs = [rec("lenet300", "32", 1.0, 1.0, 0.89, params=266_610), rec("lenet5", "32", 1.0, 1.0, 0.85, method="xnor",
                                                                       bits=(1, 1, 32), method_label="XNOR-Net")]
    han = tables.suite_tables(report.suite_config("han_pruning"), recs[:1])
    assert han.frame.paper_match[0] == "closest published" and han.frame.paper_delta_pts[0] is None
    assert han.frame.paper_row[0] == "LeNet-300-100 Ref (LeNet-300-100, MNIST)"
    binary = tables.suite_tables(report.suite_config("binary_family"), recs[1:])
    assert binary.frame.paper_row[0] == "XNOR-Net (1,1,32) (AlexNet, ImageNet)"
    cifar = [{**rec("vgg_small", "32", 1.0, 1.0, 0.93, method="lqnet", bits=(2, 2, 32)), "dataset": "cifar10"}]
    lq = tables.suite_tables(report.suite_config("lqnets_cifar10"), cifar)
    assert lq.frame.paper_match[0] == "exact" and lq.frame.paper_delta_pts[0] == pytest.approx(-0.5)
