"""Resume after kill -9 and after SLURM preemption: the final top1 and the exported file's bytes
equal an uninterrupted run's with the same seed (the contract of callbacks/resume.py).

Each run is train.py in its own process; `LWB_KILL_AT=<point>` (lightning_modules/compression/faults.py)
makes it SIGKILL itself at a named point: before the first checkpoint, mid-epoch, during a
pruning step, during the model file's export. Then the same command is run again, as a user (or
the suite) would, and continues from the run directory's newest valid checkpoint.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import stat
from pathlib import Path

import pytest
import torch

from tests.conftest import FAST, train

pytestmark = pytest.mark.slow

# 8 steps an epoch (512 images, batch 64), a checkpoint every 3 steps
BASE = [*FAST, "data.batch_size=64", "checkpoint.every_n_steps=3"]


def run_dir(results: Path) -> Path:
    (d,) = [p for p in results.glob("runs/*/*") if p.is_dir()]
    return d


def finish(args: list[str], results: Path, kills: list[str], env: dict | None = None) -> dict:
    """Run with each kill point in turn (each attempt SIGKILLed there), then to the end; returns
    the final record. The killed attempts must die by SIGKILL, not finish or fail."""
    for point in kills:
        p = train(args, results, env={**(env or {}), "LWB_KILL_AT": point})
        assert p.returncode == -signal.SIGKILL, (point, p.returncode, p.stderr[-2000:])
    p = train(args, results, env=env)
    assert p.returncode == 0, p.stderr[-3000:]
    return json.loads((run_dir(results) / "record.json").read_text())


def same_result(ref: Path, other: Path) -> None:
    a, b = (json.loads((run_dir(r) / "record.json").read_text()) for r in (ref, other))
    assert b["status"] == a["status"] == "ok"
    assert b["top1"] == a["top1"] and b["top5"] == a["top5"]
    assert (run_dir(other) / "model.pt").read_bytes() == (run_dir(ref) / "model.pt").read_bytes()


@pytest.fixture(scope="module")
def fp32_ref(tmp_path_factory) -> Path:
    results = tmp_path_factory.mktemp("ref")
    p = train([*BASE, "trainer.max_epochs=2", "checkpoint.every_n_steps=null"], results)
    assert p.returncode == 0, p.stderr[-3000:]
    rec = json.loads((run_dir(results) / "record.json").read_text())
    assert rec["resumed_from_step"] is None
    return results


def test_fp32_killed_before_first_checkpoint_mid_epoch_and_in_export(fp32_ref, tmp_path):
    """Killed at step 2 (no checkpoint yet: starts afresh), then at step 11 (epoch 2: resumes
    from step 9), then while writing model.pt (resumes from the end-of-training checkpoint); the
    end result is the uninterrupted run's, bit for bit, and no checkpoint or temporary file is
    left behind."""
    rec = finish([*BASE, "trainer.max_epochs=2"], tmp_path, ["step:2", "step:11", "export"])
    assert rec["resumed_from_step"] == 16  # the end of training: only test and export were redone
    same_result(fp32_ref, tmp_path)
    left = sorted(p.name for p in run_dir(tmp_path).iterdir())
    assert not [n for n in left if n.endswith((".ckpt.sha256", ".tmp", ".partial")) or n.startswith("resume-")], left


def test_a_corrupted_checkpoint_is_skipped_with_a_warning_and_the_run_starts_afresh(fp32_ref, tmp_path):
    args = [*BASE, "trainer.max_epochs=2"]
    p = train(args, tmp_path, env={"LWB_KILL_AT": "step:5"})
    assert p.returncode == -signal.SIGKILL
    (ckpt,) = run_dir(tmp_path).glob("resume-s*.ckpt")
    data = bytearray(ckpt.read_bytes())
    data[len(data) // 2] ^= 0x10
    ckpt.write_bytes(bytes(data))
    p = train(args, tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    warn = [line for line in (p.stdout + p.stderr).splitlines() if "not resuming from" in line]
    assert len(warn) == 1 and str(ckpt) in warn[0] and "SHA-256" in warn[0]
    assert json.loads((run_dir(tmp_path) / "record.json").read_text())["resumed_from_step"] is None
    same_result(fp32_ref, tmp_path)


def test_a_checkpoint_of_another_config_is_not_resumed(fp32_ref, tmp_path):
    """Same run directory, different experiment (learning rate): its checkpoint is not used."""
    p = train([*BASE, "trainer.max_epochs=2", "optimizer.lr=0.01"], tmp_path, env={"LWB_KILL_AT": "step:5"})
    assert p.returncode == -signal.SIGKILL
    p = train([*BASE, "trainer.max_epochs=2"], tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "written by a run of another config" in p.stdout + p.stderr
    same_result(fp32_ref, tmp_path)


def test_resume_never_starts_afresh(tmp_path):
    p = train([*BASE, "trainer.max_epochs=2"], tmp_path, env={"LWB_KILL_AT": "step:5"})
    assert p.returncode == -signal.SIGKILL
    p = train([*BASE, "trainer.max_epochs=2", "resume=never"], tmp_path)
    assert p.returncode == 0
    assert json.loads((run_dir(tmp_path) / "record.json").read_text())["resumed_from_step"] is None


@pytest.mark.parametrize("method, extra, kills", [
    ("dorefa", ["method=dorefa", "bits=w1a2g6", "trainer.max_epochs=2"], ["step:5"]),
    ("ttq", ["method=ttq", "bits=w2a32g32", "trainer.max_epochs=2"], ["step:10"]),
    # prune at the start of epoch 2 (step 8), k-means at the start of epoch 3 (step 16): killed
    # right after the pruning step (resumes from step 6, prunes again), then at step 20 (resumes
    # from step 18: masks, codebooks and assignments come from the checkpoint)
    ("deep_compression", ["method=deep_compression", "trainer.max_epochs=3"], ["method_step", "step:20"]),
    # EM at the start of epoch 2 (step 8) on the latest 4 training batches, then distillation from
    # the teacher: killed at step 7 (resumes from step 6: the batches of steps 3-6 come from the
    # checkpoint), then at step 11 (resumes from step 9: the teacher comes from the checkpoint)
    ("pq", ["method=pq", "method.centroids=16", "method.em_iters=3", "method.calibration_batches=4",
            "trainer.max_epochs=2"], ["step:7", "step:11"]),
])
def test_methods_resume_to_the_uninterrupted_result(tmp_path, method, extra, kills):
    args = [*BASE, *extra]
    ref, other = tmp_path / "ref", tmp_path / "killed"
    p = train(args + ["checkpoint.every_n_steps=null"], ref)
    assert p.returncode == 0, p.stderr[-3000:]
    rec = finish(args, other, kills)
    assert rec["resumed_from_step"] is not None
    same_result(ref, other)


def test_distillation_resumes_with_its_teacher(fp32_ref, tmp_path):
    teacher = run_dir(fp32_ref)
    args = [*BASE, "trainer.max_epochs=2", "method=kd", f"method.teacher={teacher}"]
    ref, other = tmp_path / "ref", tmp_path / "killed"
    assert train(args + ["checkpoint.every_n_steps=null"], ref).returncode == 0
    rec = finish(args, other, ["step:13"])
    assert rec["resumed_from_step"] == 12
    same_result(ref, other)


def test_slurm_preemption_saves_requeues_and_the_requeued_job_resumes(fp32_ref, tmp_path):
    """Under SLURM (its environment variables), Lightning's auto-requeue handles the preemption
    signal (SIGUSR1): it writes hpc_ckpt_1.ckpt and calls `scontrol requeue <job id>` (a stub
    here that records the call); the job is then killed; the requeued job (same command, same
    environment) resumes from that checkpoint and ends where an uninterrupted run ends."""
    bin_dir, log = tmp_path / "bin", tmp_path / "scontrol.log"
    bin_dir.mkdir()
    stub = bin_dir / "scontrol"
    stub.write_text(f'#!/bin/sh\necho "$@" >> "{log}"\n')
    stub.chmod(stub.stat().st_mode | stat.S_IEXEC)
    env = {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "SLURM_JOB_ID": "4242",
           "SLURM_NTASKS": "1", "SLURM_JOB_NAME": "train", "SLURM_PROCID": "0", "SLURM_LOCALID": "0",
           "SLURM_NODEID": "0"}
    results = tmp_path / "results"
    args = [*FAST, "data.batch_size=64", "trainer.max_epochs=2"]  # no every_n_steps: only SLURM's save
    p = train(args, results, env={**env, "LWB_SIGNAL_AT": "step:5=SIGUSR1", "LWB_KILL_AT": "step:7"})
    assert p.returncode == -signal.SIGKILL, p.stderr[-3000:]
    assert log.read_text().split() == ["requeue", "4242"]
    assert [p.name for p in results.rglob("*.ckpt")] == ["hpc_ckpt_1.ckpt"]
    p = train(args, results, env=env)
    assert p.returncode == 0, p.stderr[-3000:]
    rec = json.loads((run_dir(results) / "record.json").read_text())
    assert rec["resumed_from_step"] == 5
    same_result(fp32_ref, results)
    assert not list(results.rglob("hpc_ckpt_*.ckpt"))  # spent, and gone before the test ran


def test_the_loader_resumes_at_the_consumed_batch():
    """TensorLoader's state is (epoch, batches consumed): a loader restored from it yields what
    the original would have yielded from there on."""
    from datamodules.tensor_loader import TensorLoader
    x, y = torch.arange(40.0).reshape(20, 2), torch.arange(20)
    a = TensorLoader(x, y, 3, shuffle=True, drop_last=True, seed=7)
    first = [b[1].tolist() for b in a]
    it = iter(a)
    seen = [next(it)[1].tolist() for _ in range(4)]  # batch 4 is prefetched, 3 consumed
    a.consumed(3)
    b = TensorLoader(x, y, 3, shuffle=True, drop_last=True, seed=7)
    b.load_state_dict(a.state_dict())
    rest = [t[1].tolist() for t in b]
    second = seen[:3] + rest
    c = TensorLoader(x, y, 3, shuffle=True, drop_last=True, seed=7)
    list(c)
    assert second == [t[1].tolist() for t in c] and second != first  # epoch 1's order, resumed
    a.consumed(3, epoch_done=True)
    assert a.state_dict() == {"epoch": 2, "batch": 0, "seed": 7}


def test_method_state_round_trips_through_plain_values():
    """Compose keeps each part's state; the checkpoint holds only plain values and tensors."""
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from lightning_modules.config_check import CONF
    with initialize_config_dir(str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=["method=deep_compression"])
    m = OmegaConf.to_container(cfg.method, resolve=True)
    m.pop("label", None)
    a, b = instantiate(m, _convert_="all"), instantiate(m, _convert_="all")
    a.parts["prune"].done.add(("epoch", 1))
    state = a.state_dict()
    buf = __import__("io").BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    b.load_state_dict(torch.load(buf, weights_only=True))
    assert b.parts["prune"].done == {("epoch", 1)} and b.parts["share"].done == set()
    with pytest.raises(Exception, match="lacks the state of part 'share'"):
        b.load_state_dict({"prune": state["prune"], "code": state["code"]})


def test_no_checkpoint_is_written_when_off_and_bad_values_are_refused(tmp_path):
    p = train([*FAST, "checkpoint.every_n_steps=0"], tmp_path)
    assert p.returncode == 2 and "checkpoint.every_n_steps=0: must be an integer >= 1" in p.stderr
    p = train([*FAST, "resume=sometimes"], tmp_path)
    assert p.returncode == 2 and "resume=sometimes: valid: auto" in p.stderr
    assert not (tmp_path / "runs").exists()
    shutil.rmtree(tmp_path, ignore_errors=True)
