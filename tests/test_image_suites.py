"""The ImageNet and CIFAR suites (seed_table_imagenet, lqnets_cifar10) compose run by run, and a
row of each runs a few steps through train.py on fixture data (CPU, one process; the ImageNet row
under Lightning's DDP strategy with the SketchML gradient hook, the CIFAR row through DALI)."""
import pytest
from hydra import compose, initialize_config_dir

from benchmarks.suite import expand
from lightning_modules.config_check import normalize_overrides
from tests.conftest import REPO, only_record, train
from benchmarks.image_files import write_cifar, write_imagefolder

def _runs(name, root):
    with initialize_config_dir(str(REPO / "conf"), version_base="1.3"):
        suite = compose("config", overrides=[f"suite={name}"]).suite
        out = []
        for spec in suite.runs:
            for run in expand(list(spec)):
                ov = normalize_overrides([*suite.common, *run, f"data.root={root}"])
                out.append((run, compose("config", overrides=ov)))
    return suite, out


def test_seed_table_imagenet_composes(tmp_path):
    suite, runs = _runs("seed_table_imagenet", tmp_path)
    assert suite.reference == "seed_table" and len(runs) == 10
    rows = {(r[0], r[1], c.precision.name, f"W{c.bits.w}A{c.bits.a}G{c.bits.g}") for r, c in runs}
    for model in ("model=alexnet", "model=resnet50"):
        assert {(model, "method=fp32", p, "W32A32G32") for p in ("32", "16-mixed", "16-mixed-noscale")} < rows
        assert (model, "method=xnor", "32", "W1A1G32") in rows and (model, "method=dorefa", "32", "W1A2G6") in rows
    for _, c in runs:
        assert c.data._target_ == "datamodules.imagenet.ImageNetDataModule" and c.data.root == str(tmp_path)
        assert c.data.batch_size * c.trainer.devices == 256 and c.trainer.strategy == "ddp"


def test_sync_batchnorm_on_cpu_is_one_clear_line():
    from lightning_modules.config_check import ConfigError, check_config
    with initialize_config_dir(str(REPO / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=["trainer=ddp", "trainer.accelerator=cpu", "trainer.sync_batchnorm=true"])
    with pytest.raises(ConfigError, match=r"^trainer.sync_batchnorm=true: SyncBatchNorm needs GPUs .*"
                                          r"set trainer.sync_batchnorm=false$"):
        check_config(cfg)


def test_lqnets_cifar10_composes(tmp_path):
    _, runs = _runs("lqnets_cifar10", tmp_path)
    got = sorted((r[0], c.method.name, c.bits.w, c.bits.a) for r, c in runs)
    want = sorted((m, meth, w, a) for m in ("model=resnet20", "model=vgg_small")
                  for meth, w, a in [("fp32", 32, 32), ("lqnet", 1, 32), ("lqnet", 2, 32), ("lqnet", 3, 32),
                                     ("lqnet", 1, 2), ("lqnet", 2, 2), ("lqnet", 3, 3)])
    assert got == want and all(c.data.variant == "cifar10" for _, c in runs)


CPU = ["trainer.accelerator=cpu", "trainer.max_epochs=1", "trainer.limit_train_batches=2",
       "trainer.limit_val_batches=0", "measure.warmup_steps=1", "data.num_workers=0"]


@pytest.mark.slow
def test_imagenet_suite_row_runs_on_an_imagefolder(tmp_path):
    write_imagefolder(tmp_path / "inet", classes=("n01", "n02", "n03"), per_class=4, val_per_class=2)
    suite, runs = _runs("seed_table_imagenet", tmp_path / "inet")
    run = next(r for r, _ in runs if "method=dorefa" in r)  # XNOR/DoReFa: quantized layers on 224x224
    p = train(normalize_overrides([*suite.common, *run, f"data.root={tmp_path / 'inet'}",
                                   "suite=seed_table_imagenet", *CPU, "trainer.devices=1", "trainer.sync_batchnorm=false",
                                   "grad_compression=sketch",
                                   "data.batch_size=4", "data.eval_batch_size=3"]), tmp_path / "res")
    assert p.returncode == 0, p.stderr[-3000:]
    rec = only_record(tmp_path / "res")
    assert rec["status"] == "ok" and rec["dataset"] == "imagenet" and rec["test_samples"] == 6
    assert rec["bits"] == {"w": 1, "a": 2, "g": 6} and rec["world_size"] == 1
    # the SketchML hook registered on Lightning's DDP model: 2 steps, >= 4x fewer bytes than fp32
    assert rec["grad_compression"] == "sketch" and rec["comm_steps"] == 2
    assert 0 < rec["comm_bytes_per_step"] * 4 <= rec["comm_fp32_bytes_per_step"]


@pytest.mark.slow
def test_lqnets_suite_row_runs_on_cifar_pickles_through_dali(tmp_path):
    write_cifar(tmp_path / "cifar", n_train=40, n_test=12)
    suite, runs = _runs("lqnets_cifar10", tmp_path / "cifar")
    run = next(r for r, c in runs if c.bits.w == 2 and c.bits.a == 2 and "model=resnet20" in r)
    p = train(normalize_overrides([*suite.common, *run, "data=cifar10_dali", "data.device=cpu",
                                   f"data.root={tmp_path / 'cifar'}", "data.val_size=8", "data.download=false",
                                   "suite=lqnets_cifar10", *CPU, "data.batch_size=8", "data.eval_batch_size=5"]),
              tmp_path / "res")
    assert p.returncode == 0, p.stderr[-3000:]
    rec = only_record(tmp_path / "res")
    assert rec["status"] == "ok" and rec["dataset"] == "cifar10" and rec["test_samples"] == 12
    assert rec["model"] == "resnet20" and rec["method"] == "lqnet" and rec["bits"]["w"] == 2
