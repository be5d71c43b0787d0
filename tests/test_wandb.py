"""W&B offline: a suite run with logger=wandb leaves one W&B run per training run (flat config,
tags, per-step metrics, the record as summary, the model file as an artifact) and one run with the
suite's comparison table and plots, all read back with wandb's own reader (`wandb leet inspect`);
the API key is never written anywhere."""
import json
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO

KEY = "k" * 30 + "0123456789"  # a fake 40-character API key


def inspect(run_dir, *flags) -> str:
    out = subprocess.run([os.path.join(os.path.dirname(sys.executable), "wandb"), "leet", "inspect",
                          *flags, str(run_dir)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout


def records_of(run_dir) -> dict[str, list[dict]]:
    by_type: dict[str, list[dict]] = {}
    for line in inspect(run_dir, "--json").splitlines():
        if line.strip():
            rec = json.loads(line)
            by_type.setdefault(rec["type"], []).append(rec[rec["type"]])
    return by_type


@pytest.fixture(scope="module")
def suite_run(tmp_path_factory):
    results = tmp_path_factory.mktemp("wandb")
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.update(WANDB_API_KEY=KEY, WANDB_MODE="offline", PYTHONWARNINGS="ignore")
    p = subprocess.run([sys.executable, "-m", "benchmarks.suite", "smoke", "--results-dir", str(results),
                        "logger=wandb", "wandb.entity=harness-test", "data.train_subset=256",
                        "data.test_subset=500", "trainer.limit_train_batches=4",
                        "trainer.log_every_n_steps=2", "measure.warmup_steps=1"],
                       cwd=REPO, capture_output=True, text=True, timeout=600, env=env)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-3000:]
    runs = {}
    for d in sorted((results / "wandb").glob("offline-run-*")):
        s = json.loads(inspect(d, "--summary", "--json"))
        runs[s["name"]] = (d, s)
    return results, runs, p


@pytest.mark.slow
def test_each_training_run_is_a_wandb_run(suite_run):
    results, runs, _ = suite_run
    rec = json.loads((results / "runs" / "smoke" / "lenet300-fp32-W32A32G32-32-s0" / "record.json").read_text())
    d, s = runs[rec["run_name"]]
    assert s["state"] == "finished" and s["project"] == "smoke"
    assert s["config"]["model.name"] == "lenet300" and s["config"]["bits.w"] == 32  # flat config
    assert s["summary"]["top1"] == pytest.approx(rec["top1"])
    assert s["summary"]["footprint_bytes"] == rec["footprint_bytes"] and s["summary"]["status"] == "ok"
    by_type = records_of(d)
    run = by_type["run"][0]
    assert run["run_group"] == "smoke" and run["job_type"] == "fp32" and run["entity"] == "harness-test"
    assert run["tags"] == ["model:lenet300", "method:fp32", "bits:W32A32G32", "precision:32"]
    logged = json.dumps(by_type["history"])
    assert "train/loss" in logged and "test/top1" in logged
    (art,) = by_type["artifact"]
    assert art["type"] == "model" and art["name"] == "lenet300-fp32-W32A32G32-32-s0-model"
    meta = json.loads(art["metadata"])
    assert meta["footprint_bytes"] == rec["footprint_bytes"] == os.path.getsize(rec["model_file"])
    (entry,) = art["manifest"]["contents"]
    assert entry["path"] == "model.pt" and int(entry["size"]) == rec["footprint_bytes"]
    # the staged copy that `wandb sync` uploads lies under results/wandb, beside the run
    assert entry["local_path"].startswith(str(results / "wandb")) and os.path.isfile(entry["local_path"])


@pytest.mark.slow
def test_the_suite_table_and_plots_are_logged(suite_run):
    _, runs, p = suite_run
    d, s = runs["smoke-table"]
    assert s["state"] == "finished" and s["project"] == "smoke" and s["summary"]["runs"] == 2
    by_type = records_of(d)
    assert by_type["run"][0]["job_type"] == "table"
    (hist,) = by_type["history"]
    item = hist["item"]
    assert item["comparison._type"] == "table-file" and item["comparison.nrows"] == 2
    assert item["plots/footprint._type"] == item["plots/throughput._type"] == "image-file"
    table_files = list((d / "files" / "media" / "table").glob("comparison_*.table.json"))
    assert len(table_files) == 1
    table = json.loads(table_files[0].read_text())
    assert table["columns"][0] == "Bitwidth/method" and "status" in table["columns"]
    assert [r[0] for r in table["data"]] == ["FP (32)", "FP (16) w/ LS"]
    plots = sorted(p.name.split("_")[0] for p in (d / "files" / "media" / "images").glob("plots/*.png"))
    assert plots == ["deployed", "footprint", "throughput"]  # deployed: the deploy step's P@1 vs latency


@pytest.mark.slow
def test_the_api_key_is_written_nowhere(suite_run):
    results, _, p = suite_run
    assert KEY not in p.stdout + p.stderr
    for f in results.rglob("*"):
        if f.is_file():
            assert KEY.encode() not in f.read_bytes(), f
