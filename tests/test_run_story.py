"""What a run shows and what it is made of: its terminal output is the harness's story (no
Lightning device inventory, no litlogger advertisement, no torch `_pytree` deprecation), and a
Lightning callback joins a run with one override of the `callbacks` group (conf/callbacks/)."""
import os
import subprocess
import sys

import pytest
import torch
from hydra import compose, initialize_config_dir

from lightning_modules.config_check import ConfigError, check_overrides
from tests.conftest import REPO, only_record

TINY = ["model=lenet300", "data.train_subset=256", "data.test_subset=256", "trainer.max_epochs=1"]
NOISE = ("GPU available", "TPU available", "HPU available", "litlogger", "LitLogger", "litmodels",
         "_pytree", "LeafSpec")
STORY = ("data      ", "model     lenet300 -> method fp32", "precision 32", "run dir   ", "fit       1 epochs",
         "test      official test set", "record    ")


@pytest.mark.slow
def test_a_runs_output_is_its_story(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"}  # warnings as a user sees them
    p = subprocess.run([sys.executable, str(REPO / "train.py"), *TINY, f"results_dir={tmp_path}"],
                       cwd=REPO, capture_output=True, text=True, timeout=600, env=env)
    out = p.stdout + p.stderr
    assert p.returncode == 0, out[-3000:]
    for line in STORY:
        assert line in out, (line, out)
    for noise in NOISE:
        assert noise not in out, (noise, out)
    assert only_record(tmp_path)["status"] == "ok"


def test_a_callbacks_list_names_yamls_of_the_group():
    check_overrides(["callbacks=[default,early_stopping]", "callbacks=[default, model_checkpoint]"])
    with pytest.raises(ConfigError, match=r"^callbacks=nope: unknown callbacks; valid: default, early_stopping, "
                                          r"model_checkpoint"):
        check_overrides(["callbacks=[default,nope]"])


@pytest.mark.slow
def test_one_override_adds_early_stopping_and_a_checkpoint_to_a_real_run(tmp_path, monkeypatch):
    from pytorch_lightning.callbacks import EarlyStopping, ModelCheckpoint

    from lightning_modules import run as run_module
    from lightning_modules.callbacks.throughput import ThroughputMeter
    built = []
    build = run_module.build_trainer
    monkeypatch.setattr(run_module, "build_trainer", lambda *a: built.append(build(*a)) or built[-1])
    # an improvement of 1.0 in accuracy is impossible: EarlyStopping stops after the 2nd epoch
    overrides = [*TINY, "trainer.max_epochs=5", "data.val_size=500", "trainer.limit_val_batches=2",
                 "scheduler=none", "callbacks=[default,early_stopping,model_checkpoint]",
                 "callbacks.early_stopping.patience=0", "callbacks.early_stopping.min_delta=1.0",
                 f"results_dir={tmp_path}"]
    with initialize_config_dir(str(REPO / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=overrides)
    rec = run_module.run(cfg)
    (trainer,) = built
    kinds = [type(c) for c in trainer.callbacks]
    assert ThroughputMeter in kinds and EarlyStopping in kinds and ModelCheckpoint in kinds
    assert trainer.current_epoch == 2 and trainer.should_stop  # stopped early, not at max_epochs=5
    assert rec["status"] == "ok" and rec["train_it_s"] > 0  # the default callbacks still measure
    run_dir = tmp_path / "runs" / "adhoc" / rec["run_name"]
    assert (run_dir / "checkpoints" / "best.ckpt").is_file() and (run_dir / "last.ckpt").is_file()
    # the validation figures of the record: the last epoch's val/top1, the best one and its epoch,
    # as Lightning's own ModelCheckpoint (monitor val/top1, mode max) saw them (the 500-image split)
    (ck,) = [c for c in trainer.callbacks if isinstance(c, ModelCheckpoint)]
    assert rec["val_top1_best"] == pytest.approx(float(ck.best_model_score))
    assert rec["val_best_epoch"] == torch.load(ck.best_model_path, weights_only=False)["epoch"]
    assert 0 < rec["val_top1_last"] <= rec["val_top1_best"] <= 1
