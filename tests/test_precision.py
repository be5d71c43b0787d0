"""Precision is what it says, on CPU as on GPU: float16 really computes in float16, the scaler
really multiplies the gradients (or does not)."""
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from hydra import compose, initialize_config_dir

from lightning_modules.precision import NAMES, loss_scale, precision_plugin
from lightning_modules.run import build_module

CONF = Path(__file__).resolve().parents[1] / "conf"


class Probe(pl.Callback):
    """Activation dtype inside the net, and one weight's gradient before and after unscaling."""

    def __init__(self):
        self.act_dtypes, self.ratios, self.scales = set(), [], []

    def on_fit_start(self, trainer, pl_module):
        first = next(m for m in pl_module.net.modules() if isinstance(m, torch.nn.Linear))
        first.register_forward_hook(lambda m, i, o: self.act_dtypes.add(o.dtype))
        self.w = first.weight

    def on_after_backward(self, trainer, pl_module):  # inside the closure: grads still scaled
        self.scaled = self.w.grad.detach().clone()
        self.scales.append(loss_scale(trainer.precision_plugin))

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):  # after unscale_
        g = self.w.grad.detach()
        mask = g.abs() > 1e-12
        self.ratios.append((self.scaled[mask] / g[mask]).median().item())


def fit(precision, fmnist_small, steps=4):
    with initialize_config_dir(str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=["model=lenet300", "scheduler=none"])
    module = build_module(cfg, fmnist_small)
    probe = Probe()
    trainer = pl.Trainer(accelerator="cpu", max_steps=steps, plugins=[precision_plugin(precision, "cpu")],
                         callbacks=[probe], logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0)
    trainer.fit(module, datamodule=fmnist_small)
    return module, probe, trainer


@pytest.fixture(scope="module")
def fmnist_small():
    from datamodules.fashion_mnist import FashionMNISTDataModule
    dm = FashionMNISTDataModule(train_subset=256, test_subset=256, val_size=100)
    dm.setup()
    return dm


@pytest.mark.slow
def test_fp16_with_loss_scaling_runs_in_float16_and_scales(fmnist_small):
    module, probe, trainer = fit("16-mixed", fmnist_small)
    assert probe.act_dtypes == {torch.float16}
    assert module.compute_dtype == "float16"
    assert probe.scales[0] == 2.0 ** 16  # GradScaler's initial scale
    for r, s in zip(probe.ratios, probe.scales):
        assert r == pytest.approx(s, rel=1e-3)  # gradients were multiplied by the scale
    assert next(module.parameters()).dtype == torch.float32  # fp32 master weights


@pytest.mark.slow
def test_fp16_without_loss_scaling_runs_in_float16_unscaled(fmnist_small):
    module, probe, trainer = fit("16-mixed-noscale", fmnist_small)
    assert probe.act_dtypes == {torch.float16}
    assert probe.scales == [None] * len(probe.scales)
    assert probe.ratios and all(r == pytest.approx(1.0) for r in probe.ratios)


@pytest.mark.slow
def test_bf16_and_fp32(fmnist_small):
    _, probe, _ = fit("bf16-mixed", fmnist_small, steps=2)
    assert probe.act_dtypes == {torch.bfloat16} and probe.scales == [None, None]
    _, probe, _ = fit("32", fmnist_small, steps=2)
    assert probe.act_dtypes == {torch.float32} and probe.scales == [None, None]


def test_lightning_would_have_silently_used_bf16_on_cpu():
    """Why precision_plugin exists: Lightning maps 16-mixed to bf16 on CPU."""
    with pytest.warns(Warning, match="bf16"):
        t = pl.Trainer(accelerator="cpu", precision="16-mixed", logger=False)
    assert t.precision_plugin.precision == "bf16-mixed"
    assert precision_plugin("16-mixed", "cpu").precision == "16-mixed"


def test_unknown_precision_names_the_valid_ones():
    with pytest.raises(ValueError, match="precision=fp8: valid: " + ", ".join(NAMES)):
        precision_plugin("fp8", "cpu")
