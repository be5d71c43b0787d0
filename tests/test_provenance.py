"""Provenance: config_hash covers what changes a result (config, code, torch version, threads) and
the suite's plan hashes a run as the run itself does; `-dirty` ignores the harness's own outputs
under results/; records are committed, model files and checkpoints are not."""
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from benchmarks import suite as suite_runner
from lightning_modules import record
from lightning_modules.record import code_hash, config_hash, git_sha, read_record
from tests.conftest import REPO


def _cfg():
    with initialize_config_dir(str(REPO / "conf"), version_base="1.3"):
        return compose("config")


def test_config_hash_changes_with_the_code_torch_version_and_threads(monkeypatch):
    cfg = _cfg()
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    base = config_hash(cfg)
    assert config_hash(cfg) == base
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert config_hash(cfg) != base
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setattr(torch, "__version__", "0.0.1")
    assert config_hash(cfg) != base
    monkeypatch.undo()
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert config_hash(cfg) == base
    monkeypatch.setattr(record, "code_hash", lambda: "0" * 16)
    assert config_hash(cfg) != base


def test_torch_threads_is_omp_num_threads_else_torchs_default(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert record.torch_threads() == 3
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert record.torch_threads() == record._DEFAULT_THREADS
    before = torch.get_num_threads()
    try:  # a test (or a benchmark) that changes this process's threads does not change the hash
        torch.set_num_threads(1 if before != 1 else 2)
        assert record.torch_threads() == record._DEFAULT_THREADS
    finally:
        torch.set_num_threads(before)


def test_code_hash_is_the_content_of_the_packages_that_run(tmp_path):
    def tree(name: str, body: bytes) -> Path:
        root = tmp_path / name
        for rel in ("lightning_modules/a.py", "lightning_modules/sub/b.py", "datamodules/d.py", "train.py"):
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / rel).write_bytes(body if rel.endswith("b.py") else b"x = 1\n")
        (root / "benchmarks").mkdir()
        (root / "benchmarks" / "t.py").write_bytes(name.encode())  # not code a run executes
        return root

    a, same, other = tree("a", b"y = 2\n"), tree("same", b"y = 2\n"), tree("other", b"y = 3\n")
    os.utime(same / "train.py", (time.time() + 100, time.time() + 100))  # mtimes do not count
    assert code_hash(a) == code_hash(same) != code_hash(other)
    assert code_hash(REPO) == record.code_hash() and len(code_hash(REPO)) == 16


def _git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=repo, check=True,
                   capture_output=True)


def test_dirty_means_code_or_config_not_the_outputs_under_results(tmp_path):
    if not shutil.which("git"):
        pytest.skip("no git")
    assert git_sha(tmp_path) is None  # not a repository
    for rel in ("train.py", "conf/config.yaml", "results/tables/s.md", "results/runs/s/r/record.json"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("v1\n")
    _git(tmp_path, "init", "-q")
    _git(tmp_path, "add", "-A")
    _git(tmp_path, "commit", "-qm", "c")
    sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=tmp_path, capture_output=True,
                         text=True).stdout.strip()
    assert git_sha(tmp_path) == sha
    (tmp_path / "results/tables/s.md").write_text("rebuilt\n")
    (tmp_path / "results/runs/s/r/record.json").write_text("rerun\n")
    (tmp_path / "untracked.py").write_text("scratch\n")
    assert git_sha(tmp_path) == sha  # the harness's own outputs, an untracked file: clean
    for rel in ("conf/config.yaml", "train.py"):
        (tmp_path / rel).write_text("v2\n")
        assert git_sha(tmp_path) == sha + "-dirty"
        _git(tmp_path, "checkout", "-q", "--", rel)


@pytest.mark.parametrize("path, ignored", [("results/runs/smoke/lenet5-fp32-W32A32G32-32-s0/record.json", False),
                                           ("results/runs/smoke/lenet5-fp32-W32A32G32-32-s0/model.pt", True),
                                           ("results/runs/smoke/lenet5-fp32-W32A32G32-32-s0/last.ckpt", True),
                                           ("results/runs/smoke/r/csv/metrics.csv", True)])
def test_records_are_committed_model_files_and_checkpoints_are_not(path, ignored):
    if not shutil.which("git") or not (REPO / ".git").exists():
        pytest.skip("not a git checkout")
    rc = subprocess.run(["git", "check-ignore", "-q", path], cwd=REPO).returncode
    assert rc == (0 if ignored else 1), f"git check-ignore {path}: rc {rc}"


TINY = ["data.train_subset=256", "data.test_subset=500", "trainer.limit_val_batches=0",
        "measure.warmup_steps=2"]


@pytest.mark.slow
def test_the_suites_planned_hash_is_the_runs_own(tmp_path, monkeypatch, capsys):
    """A real tiny suite run: each record's config_hash is the one plan() computed in the suite
    process, so a second pass skips every run (skip-if-done) and never copies or retrains."""
    monkeypatch.setenv("PYTHONWARNINGS", "ignore")
    assert suite_runner.main(["smoke", "--results-dir", str(tmp_path), *TINY]) == 0
    _, runs = suite_runner.plan("smoke", str(tmp_path), TINY)
    recs = [read_record(run["record"]) for run in runs]
    assert [r["config_hash"] for r in recs] == [run["config_hash"] for run in runs]
    assert all(r["code_hash"] == code_hash() and r["torch_threads"] == record.torch_threads() for r in recs)
    capsys.readouterr()
    monkeypatch.setattr(suite_runner.subprocess, "run", lambda *a, **k: pytest.fail(f"retrained: {a}"))
    assert suite_runner.main(["smoke", "--results-dir", str(tmp_path), *TINY]) == 0
    assert capsys.readouterr().out.count("] skip ") == len(runs)
