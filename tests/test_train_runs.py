"""Short real runs through train.py: the record's contract, reloadable exports, divergence."""
import json

import pytest
import torch

from lightning_modules.record import RECORD_KEYS
from tests.conftest import FAST, only_record, train


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One short run per precision (same seed, same data)."""
    out = {}
    for prec in ("32", "16-mixed", "16-mixed-noscale", "bf16-mixed"):
        results = tmp_path_factory.mktemp(f"p{prec}")
        p = train([*FAST, f"precision={prec}"], results)
        assert p.returncode == 0, p.stderr[-3000:]
        out[prec] = (only_record(results), results)
    return out


@pytest.mark.slow
def test_record_contract(runs):
    rec, results = runs["32"]
    assert list(rec)[: len(RECORD_KEYS)] == list(RECORD_KEYS)
    assert rec["status"] == "ok" and rec["suite"] == "adhoc"
    assert rec["run_name"] == "lenet300-fp32-W32A32G32-32-s0"
    assert (results / "runs" / "adhoc" / rec["run_name"] / "record.json").is_file()
    assert rec["bits"] == {"w": 32, "a": 32, "g": 32} and rec["precision"] == "32"
    assert rec["dataset"] == "fashion_mnist" and rec["epochs"] == 1 and rec["batch_size"] == 32
    assert 0 < rec["top1"] <= rec["top5"] <= 1 and rec["test_samples"] == 1000
    # one epoch, validated once on the val split: last = best, at epoch 0
    assert 0 < rec["val_top1_last"] == rec["val_top1_best"] <= 1 and rec["val_best_epoch"] == 0
    assert rec["params"] == 266_610 and 0.99 * rec["params"] < rec["nonzero_params"] <= rec["params"]
    for k in ("train_it_s", "train_samples_s", "test_it_s", "test_samples_s", "wall_s"):
        assert rec[k] > 0, k
    assert rec["train_samples_s"] == pytest.approx(rec["train_it_s"] * 32)
    assert rec["hardware"]["cpu_cores"] >= 1 and rec["torch_version"] == torch.__version__
    assert rec["load_avg"] == pytest.approx(rec["load_avg"]) and rec["load_avg"] >= 0  # a number, not NaN


@pytest.mark.slow
def test_footprints_are_real_files(runs):
    rec, _ = runs["32"]
    import os
    assert rec["footprint_bytes"] == os.path.getsize(rec["model_file"])
    assert rec["checkpoint_bytes"] == os.path.getsize(rec["checkpoint_file"])
    # weights only: float32 params, a little container overhead; the checkpoint adds Adam's 2 moments
    assert 4 * rec["params"] < rec["footprint_bytes"] < 4 * rec["params"] * 1.05
    assert rec["checkpoint_bytes"] > 2.5 * rec["footprint_bytes"]


@pytest.mark.slow
def test_exported_model_reloads_to_the_recorded_accuracy(runs, fmnist):
    rec, _ = runs["32"]
    from lightning_modules.compression.method import FullPrecision
    from lightning_modules.models import LeNet300
    net = FullPrecision().load(LeNet300(), rec["model_file"]).eval()
    with torch.no_grad():
        pred = net(fmnist.x_test[:1000]).argmax(1)
    assert (pred == fmnist.y_test[:1000]).float().mean().item() == pytest.approx(rec["top1"], abs=1e-6)


@pytest.mark.slow
def test_each_precision_ran_as_named(runs):
    expect = {"32": ("float32", None), "16-mixed": ("float16", "scaled"),
              "16-mixed-noscale": ("float16", None), "bf16-mixed": ("bfloat16", None)}
    for prec, (dtype, scaled) in expect.items():
        rec, _ = runs[prec]
        assert rec["precision"] == prec and rec["status"] == "ok"
        assert rec["compute_dtype"] == dtype, prec
        assert (rec["loss_scale"] is not None) == (scaled is not None), prec
        assert rec["run_name"].endswith(f"-{prec}-s0")
    # same seed and data: float16 with loss scaling stays close to float32 on this short run
    assert abs(runs["16-mixed"][0]["top1"] - runs["32"][0]["top1"]) < 0.05


@pytest.mark.slow
def test_nan_loss_ends_the_run_as_diverged_with_a_record(tmp_path):
    p = train([*FAST, "optimizer=sgd", "optimizer.lr=1e30", "scheduler=none"], tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    rec = only_record(tmp_path)
    assert rec["status"] == "diverged" and rec["top1"] is None
    assert rec["train_it_s"] is not None  # measured up to the divergence


@pytest.mark.slow
def test_rerun_overwrites_and_hash_identifies(tmp_path):
    p = train([*FAST, "trainer.limit_train_batches=3"], tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    first = only_record(tmp_path)
    p = train([*FAST, "trainer.limit_train_batches=3", "optimizer.lr=0.01"], tmp_path)
    second = only_record(tmp_path)
    assert first["run_name"] == second["run_name"] and first["config_hash"] != second["config_hash"]
    assert json.loads(json.dumps(second)) == second


@pytest.mark.slow
def test_hydra_multirun_sweeps_precision_and_bits(tmp_path):
    p = train(["-m", *FAST, "trainer.limit_train_batches=3", "precision=32,bf16-mixed"], tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    recs = sorted(json.loads(r.read_text())["run_name"] for r in tmp_path.rglob("record.json"))
    assert recs == ["lenet300-fp32-W32A32G32-32-s0", "lenet300-fp32-W32A32G32-bf16-mixed-s0"]
    assert len(list((tmp_path / "sweeps").glob("*/multirun.yaml"))) == 1


def start_and_sigterm(args: list[str], log) -> int:
    """train.py with `args`, SIGTERM two seconds into its fit; its exit status."""
    import os
    import signal
    import subprocess
    import sys
    import time
    from tests.conftest import REPO
    with open(log, "w") as out:
        p = subprocess.Popen([sys.executable, str(REPO / "train.py"), *args], cwd=REPO, stdout=out,
                             stderr=subprocess.STDOUT, env={**os.environ, "PYTHONWARNINGS": "ignore"})
        deadline = time.time() + 120
        while "fit " not in log.read_text() and time.time() < deadline and p.poll() is None:
            time.sleep(0.2)
        time.sleep(2)  # into the training loop
        p.send_signal(signal.SIGTERM)
        return p.wait(timeout=120)


LONG = [a for a in FAST if not a.startswith("data.train_subset")] + ["data.train_subset=20000", "trainer.max_epochs=5"]


@pytest.mark.slow
def test_sigterm_during_training_exits_nonzero_with_an_interrupted_record(tmp_path):
    """Lightning turns SIGTERM into a SystemExit without a code (exit 0 before); now the run ends
    with 128 + 15 and a record that says `interrupted`, and no model file."""
    rc = start_and_sigterm([*LONG, f"results_dir={tmp_path}"], tmp_path / "log.txt")
    assert rc == 143, (tmp_path / "log.txt").read_text()[-2000:]
    rec = only_record(tmp_path)
    assert rec["status"] == "interrupted" and rec["error"] == "SIGTERM received"
    assert not list(tmp_path.rglob("model.pt")) and not list(tmp_path.rglob("last.ckpt"))


@pytest.mark.slow
def test_an_interrupted_rerun_leaves_the_earlier_result_intact(tmp_path):
    """The same run name, re-run with another config (another config_hash) and killed mid-fit:
    the earlier record, model file and checkpoint are untouched; the attempt's record is beside."""
    res = tmp_path / "res"
    assert train(FAST, res).returncode == 0
    run_dir = next(res.rglob("record.json")).parent
    before = {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()}
    rc = start_and_sigterm([*LONG, f"results_dir={res}"], tmp_path / "log.txt")
    assert rc == 143
    after = {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file() and p.name in before}
    assert after == before and {"model.pt", "last.ckpt", "record.json"} <= set(before)
    attempt = json.loads((run_dir / "record.failed.json").read_text())
    assert attempt["status"] == "interrupted"
    assert attempt["config_hash"] != json.loads(before["record.json"])["config_hash"]
