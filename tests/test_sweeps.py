"""Sweeps (train.py -m) with the local joblib launcher: a failing run does not stop the others,
it leaves a failed record and the sweep ends non-zero listing it; a rerun skips what is done and
redoes what failed (one skip-if-done rule, `sweep.done`); records written at once by several
processes are never torn or lost."""
import json
import os
import multiprocessing as mp
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import report
from lightning_modules.record import read_record, write_json_atomic
from tests.conftest import FAST, REPO

# 2 W x 2 A bitwidths x 2 weight decays: the 4 runs with weight_decay=-1 fail inside fit (Adam
# rejects it), the other 4 are a DoReFa bitwidth sweep (the report's heat map)
SWEEP = ["-m", "hydra/launcher=local", "hydra.launcher.n_jobs=2", *FAST, "trainer.limit_train_batches=3",
         "method=dorefa", "bits.w=1,2", "bits.a=2,4", "optimizer.weight_decay=0,-1",
         "run_name=${model.name}-${method.name}-W${bits.w}A${bits.a}-wd${optimizer.weight_decay}"]


def sweep(results_dir: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "train.py"), *SWEEP, f"results_dir={results_dir}"],
                          cwd=REPO, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONWARNINGS": "ignore"})


@pytest.mark.slow
def test_failing_run_does_not_stop_the_sweep_and_rerun_redoes_only_it(tmp_path):
    first = sweep(tmp_path)
    assert first.returncode == 1, first.stdout[-2000:] + first.stderr[-3000:]
    runs = tmp_path / "runs" / "adhoc"
    recs = {p.parent.name: json.loads(p.read_text()) for p in runs.glob("*/record.json")}
    ok = sorted(n for n, r in recs.items() if r["status"] == "ok")
    failed = sorted(n for n, r in recs.items() if r["status"] == "failed")
    assert ok == [f"lenet300-dorefa-W{w}A{a}-wd0" for w in (1, 2) for a in (2, 4)]
    assert failed == [f"lenet300-dorefa-W{w}A{a}-wd-1" for w in (1, 2) for a in (2, 4)]
    for name in failed:
        assert recs[name]["error"] == "ValueError: Invalid weight_decay value: -1"
        assert recs[name]["top1"] is None and recs[name]["config_hash"]
        assert [p.name for p in (runs / name).iterdir()] == ["record.json"]  # nothing half-written
    assert "sweep: 8 runs: 4 ok, 4 failed" in first.stdout
    assert "error: 4 run(s) failed:" in first.stderr
    for name in failed:
        assert f"  {name}: ValueError: Invalid weight_decay value: -1" in first.stderr
    assert len(list(tmp_path.glob("sweeps/*/multirun.yaml"))) == 1

    mtimes = {p.parent.name: p.stat().st_mtime_ns for p in runs.glob("*/record.json")}
    again = sweep(tmp_path)
    assert again.returncode == 1
    assert "sweep: 8 runs: 4 skipped, 4 failed" in again.stdout, again.stdout[-2000:]
    after = {p.parent.name: p.stat().st_mtime_ns for p in runs.glob("*/record.json")}
    assert all(after[n] == mtimes[n] for n in ok)           # done: not run again
    assert all(after[n] != mtimes[n] for n in failed)       # failed: redone

    # the sweep's records make the report's W x A heat map; failed rows are marked, not results
    page = report.build(tmp_path).read_text()
    assert (tmp_path / "report" / "adhoc_heatmap.png").stat().st_size > 5000
    t, notes = report.suite_table(report.load_records(tmp_path)["adhoc"], {})
    assert sorted(notes.status) == ["failed: ValueError: Invalid weight_decay value: -1"] * 4 + ["ok"] * 4
    assert set(t.main[notes.status.str.startswith("failed")]["Precision@1"]) == {"failed"}
    assert "adhoc_heatmap.png" in page


@pytest.mark.parametrize("launcher,target,key,value", [
    ("local", "hydra_joblib_launcher.joblib_launcher.JoblibLauncher", "n_jobs", 2),
    ("slurm", "hydra_submitit_launcher.submitit_launcher.SlurmLauncher", "timeout_min", 120)])
def test_launcher_configs_extend_the_plugins(launcher, target, key, value):
    from hydra import compose, initialize_config_dir
    with initialize_config_dir(str(REPO / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=[f"hydra/launcher={launcher}"], return_hydra_config=True)
    assert cfg.hydra.launcher._target_ == f"hydra_plugins.{target}" and cfg.hydra.launcher[key] == value
    assert cfg.hydra.callbacks.sweep_report._target_ == "lightning_modules.sweep.SweepReport"


def _writer(results_dir: str, k: int, n: int) -> None:
    for i in range(n):
        rec = {"suite": "conc", "run_name": f"w{k}-{i}", "model": "lenet5", "method": "fp32",
               "bits": {"w": 32, "a": 32, "g": 32}, "precision": "32", "status": "ok",
               "pad": "x" * 20000}
        write_json_atomic(Path(results_dir) / "runs" / "conc" / f"w{k}-{i}" / "record.json", rec)


def test_two_processes_writing_records_at_once_lose_nothing(tmp_path):
    n = 150
    procs = [mp.get_context("fork").Process(target=_writer, args=(str(tmp_path), k, n)) for k in range(2)]
    for p in procs:
        p.start()
    seen = 0
    while any(p.is_alive() for p in procs):
        for rec in report.load_records(tmp_path).get("conc", []):  # aggregation during the writes
            assert rec["pad"] == "x" * 20000  # whole records only
            seen += 1
    for p in procs:
        p.join()
        assert p.exitcode == 0
    names = sorted(r["run_name"] for r in report.load_records(tmp_path)["conc"])
    assert names == sorted(f"w{k}-{i}" for k in range(2) for i in range(n))
    assert not [p for p in tmp_path.rglob("*") if p.is_file() and p.name != "record.json"]  # no temp files


def test_a_half_written_record_is_left_out_of_the_aggregation(tmp_path):
    good = tmp_path / "runs" / "s" / "a" / "record.json"
    write_json_atomic(good, {"suite": "s", "model": "m", "method": "fp32", "precision": "32",
                             "status": "ok", "bits": {"w": 32, "a": 32, "g": 32}})
    torn = tmp_path / "runs" / "s" / "b" / "record.json"
    torn.parent.mkdir(parents=True)
    torn.write_text('{"suite": "s", "model": ')
    assert read_record(torn) is None
    assert [r["model"] for r in report.load_records(tmp_path)["s"]] == ["m"]


def test_a_sweep_job_skips_a_done_run_and_reruns_another_config(tmp_path, monkeypatch):
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    from lightning_modules import sweep
    from lightning_modules.record import config_hash

    with initialize_config_dir(str(REPO / "conf"), version_base="1.3"):
        full = compose("config", overrides=[f"results_dir={tmp_path}", f"hydra.sweep.dir={tmp_path}/sw",
                                            "hydra.job.num=0"], return_hydra_config=True)
    monkeypatch.setattr(HydraConfig.instance(), "cfg", HydraConfig.instance().cfg)  # restored after
    HydraConfig.instance().set_config(full)
    cfg = full.copy()
    with open_dict(cfg):
        del cfg["hydra"]  # what a job receives
    started = []
    record_path = Path(cfg.run_dir) / "record.json"
    write_json_atomic(record_path, {"status": "ok", "config_hash": config_hash(cfg)})
    assert sweep.job(cfg, started.append)["status"] == "skipped" and started == []
    write_json_atomic(record_path, {"status": "ok", "config_hash": "another config"})
    assert sweep.job(cfg, lambda c: started.append(c) or {"status": "ok"})["status"] == "ok"
    assert started == [cfg]
    assert read_record(tmp_path / "sw" / "jobs" / "0.json")["status"] == "ok"


def test_sweep_run_names_differ_where_the_overrides_do():
    from lightning_modules.sweep import sweep_run_name
    base = "lenet300-fp32-W32A32G32-32-s0"
    a = sweep_run_name(base, ["data.train_subset=256", "results_dir=/r"])
    b = sweep_run_name(base, ["data.train_subset=512", "results_dir=/r"])
    assert a != b and a.startswith(base + "-") and len(a) == len(base) + 7
    assert sweep_run_name(base, ["results_dir=/x", "data.train_subset=256"]) == a  # order, results_dir
    assert sweep_run_name(base, ["bits.w=1", "seed=3", "model=lenet5"]) == base  # already in the name
    assert sweep_run_name(base, ["run_name=mine", "data.train_subset=256"]) == base  # the user's name


@pytest.mark.slow
def test_a_sweep_over_a_key_outside_the_name_keeps_every_run(tmp_path):
    fast = [a for a in FAST if not a.startswith("data.train_subset=")]
    args = ["-m", "hydra/launcher=local", "hydra.launcher.n_jobs=1", *fast, "trainer.limit_train_batches=2",
            "data.train_subset=256,320", f"results_dir={tmp_path}"]
    p = subprocess.run([sys.executable, str(REPO / "train.py"), *args], cwd=REPO, capture_output=True,
                       text=True, timeout=600, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert p.returncode == 0, p.stderr[-3000:]
    recs = [json.loads(f.read_text()) for f in tmp_path.glob("runs/adhoc/*/record.json")]
    assert len(recs) == 2 and len({r["run_name"] for r in recs}) == 2
    assert "sweep: 2 runs: 2 ok" in p.stdout


@pytest.mark.slow
def test_two_sweeps_started_together_keep_separate_folders_and_failures(tmp_path):
    """hydra.sweep.dir carries the launching process's id: sweeps started in the same second no
    longer share a folder (where one's failure used to vanish and it exited 0)."""
    cmd = [sys.executable, str(REPO / "train.py"), "-m", *FAST, "data.root=/no/such/dir", f"results_dir={tmp_path}"]
    env = {k: v for k, v in os.environ.items() if k != "LWB_SWEEP_ID"}
    procs = [subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [1, 1], outs
    assert len(list(tmp_path.glob("sweeps/*/multirun.yaml"))) == 2
    assert all("sweep: 1 runs: 1 failed" in out for out, _ in outs)
