"""The CUDA paths through the harness (skipped without a GPU; `make gpu-check` runs them): float16
autocast with the precision plugin's live GradScaler, and DDP over NCCL."""
import pytest
import torch

from benchmarks.gpu_check import Ctx, cifar_like, follows_gradscaler, harness_run, probe, train_py

pytestmark = [pytest.mark.gpu, pytest.mark.slow,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def test_cuda_fp16_amp_grad_scaler_is_live(tmp_path):
    """An inf gradient at batch k: GradScaler skips that step (weights unchanged) and halves the
    scale; after g clean steps it doubles it (the growth interval shortened from 2000 to g)."""
    k, g = 3, 4
    ctx = Ctx(cpu=False, quick=False, work=tmp_path)
    rec = harness_run(ctx, "amp", [*cifar_like(ctx, k + 1 + 3 * g), "precision=16-mixed",
                                   *probe(overflow_step=k, growth_interval=g)])
    s = rec["probe_scales"]
    assert rec["status"] == "ok" and rec["compute_dtype"] == "float16"
    assert s[0] == 2.0 ** 16  # GradScaler's initial scale, the harness's default
    assert s[k + 1] == s[k] / 2 and rec["probe_skipped"] is True
    obeys, growths = follows_gradscaler(s, g)
    assert obeys and growths >= 1, s
    assert rec["loss_scale"] == s[-1]  # the record reports the live scaler's final scale


def test_ddp_over_nccl_world_size_1(tmp_path):
    ctx = Ctx(cpu=False, quick=False, work=tmp_path)
    rec = train_py(ctx, "ddp", ["trainer=ddp", "trainer.devices=1", "trainer.accelerator=gpu", *cifar_like(ctx, 8),
                                "deploy=none", *probe()])
    assert rec["status"] == "ok" and rec["world_size"] == 1
    assert rec["probe_dist_backend"] == "nccl"
    assert rec["hardware"]["gpu"] and rec["train_samples_s"] > 0
