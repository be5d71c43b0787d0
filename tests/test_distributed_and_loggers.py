"""Real DDP processes (gloo, 2 CPU ranks) and a whole suite with resume (W&B: test_wandb.py)."""
import json
import os
import subprocess
import sys

import pytest
import torch

from tests.conftest import FAST, REPO, only_record, train


@pytest.mark.slow
def test_ddp_two_processes_one_record_with_global_metrics(tmp_path, fmnist):
    with_deploy = [a for a in FAST if not a.startswith("deploy=")] + ["deploy.rounds=1"]
    p = train([*with_deploy, "trainer=ddp", "trainer.devices=2"], tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "Starting with 2 processes" in p.stdout + p.stderr
    rec = only_record(tmp_path)  # rank 0 only
    assert rec["status"] == "ok" and rec["world_size"] == 2
    assert rec["test_samples"] == 1000  # both ranks' halves, not one rank's 500
    # rank 0 deploys its own shard of the test set, once
    assert rec["deploy_backend"] == "onnx" and rec["deploy_samples"] == 500
    assert rec["deploy_agreement"] >= 0.999 and len(list(tmp_path.rglob("*.onnx"))) == 1
    from lightning_modules.compression.method import FullPrecision
    from lightning_modules.models import LeNet300
    net = FullPrecision().load(LeNet300(), rec["model_file"]).eval()
    with torch.no_grad():
        acc = (net(fmnist.x_test[:1000]).argmax(1) == fmnist.y_test[:1000]).float().mean().item()
    assert rec["top1"] == pytest.approx(acc, abs=1e-6)  # the global accuracy over all 1000


@pytest.mark.slow
def test_suite_runs_tabulates_and_skips_done_runs(tmp_path):
    cmd = [sys.executable, "-m", "benchmarks.suite", "smoke", "--results-dir", str(tmp_path),
           "data.train_subset=256", "data.test_subset=500"]
    first = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr[-3000:]
    md = (tmp_path / "tables" / "smoke.md").read_text()
    assert "| FP (32)" in md and "| FP (16) w/ LS" in md
    records = sorted(tmp_path.glob("runs/smoke/*/record.json"))
    assert len(records) == 2
    mtimes = [r.stat().st_mtime_ns for r in records]
    again = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and again.stdout.count("skip ") == 2, again.stdout
    assert [r.stat().st_mtime_ns for r in records] == mtimes
    # the same experiments found in another suite's folder are copied, not trained again
    (tmp_path / "runs" / "smoke").rename(tmp_path / "runs" / "other")
    third = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert third.returncode == 0 and third.stdout.count("copy ") == 2, third.stdout + third.stderr
    copied = [json.loads(r.read_text()) for r in records]
    assert all(c["suite"] == "smoke" and "/runs/other/" in c["copied_from"] for c in copied)
    assert all(os.path.getsize(c["model_file"]) == c["footprint_bytes"] for c in copied)
    bad = subprocess.run([sys.executable, "-m", "benchmarks.suite", "nope"], cwd=REPO,
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and bad.stderr.startswith("error: SUITE=nope: unknown suite; valid:")


@pytest.mark.slow
def test_ctrl_c_to_a_suite_prints_its_summary_without_a_traceback(tmp_path):
    import os
    import signal
    import time
    log = tmp_path / "log.txt"
    cmd = [sys.executable, "-m", "benchmarks.suite", "smoke", "--results-dir", str(tmp_path / "r"),
           "data.train_subset=20000", "trainer.max_epochs=5"]
    with open(log, "w") as out:
        p = subprocess.Popen(cmd, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                             env={**os.environ, "PYTHONWARNINGS": "ignore"})
        deadline = time.time() + 120
        while "fit " not in log.read_text() and time.time() < deadline and p.poll() is None:
            time.sleep(0.2)
        time.sleep(2)
        os.killpg(p.pid, signal.SIGINT)  # what Ctrl-C in a terminal does: the whole foreground group
        rc = p.wait(timeout=120)
    text = log.read_text()
    assert rc == 130 and "Traceback" not in text, text[-3000:]
    assert "suite smoke: interrupted after" in text and "0 of 2 runs done" in text
    rec = json.loads(next((tmp_path / "r").rglob("record.json")).read_text())
    assert rec["status"] == "interrupted" and rec["error"] == "SIGINT received"
