"""Suites run with trainer.deterministic=true: the same seed on CPU gives the same run, to the bit."""
from pathlib import Path

import pytest

from tests.conftest import REPO, only_record, train

# one-shot magnitude pruning at the initial weights, then one epoch with the masks held: shuffling,
# initialisation, the pruning threshold and the packed file all depend on the seed
TINY_PRUNE = ["model=lenet300", "data.train_subset=512", "data.test_subset=500", "trainer.max_epochs=1",
              "trainer.limit_val_batches=0", "method=prune", "method.prune.start=0", "method.prune.end=0",
              "seed=0", "trainer.deterministic=true"]


def test_every_suite_runs_deterministically():
    from hydra import compose, initialize_config_dir
    for path in sorted((REPO / "conf" / "suite").glob("*.yaml")):
        with initialize_config_dir(str(REPO / "conf"), version_base="1.3"):
            # composed: a suite may take another's runs through its defaults list (documents)
            suite = compose("config", overrides=[f"suite={path.stem}"]).suite
        if suite["name"] == "adhoc":  # not a suite: runs started by hand
            continue
        gpu = any(o in ("trainer=gpu", "trainer.accelerator=gpu") for o in suite["common"])
        # CUDA has no deterministic backward for AdaptiveAvgPool2d: `warn` there, `true` on CPU
        assert f"trainer.deterministic={'warn' if gpu else 'true'}" in suite["common"], path.name


@pytest.mark.slow
def test_two_runs_with_the_same_seed_are_identical(tmp_path):
    recs = []
    for name in ("a", "b"):
        p = train(TINY_PRUNE, tmp_path / name, env={"OMP_NUM_THREADS": "1"})
        assert p.returncode == 0, p.stderr[-3000:]
        recs.append(only_record(tmp_path / name))
    a, b = recs
    assert a["status"] == b["status"] == "ok"
    assert a["nonzero_params"] < 0.2 * a["params"]  # the pruning ran
    assert a["top1"] == b["top1"] and a["top5"] == b["top5"]
    assert Path(a["model_file"]).read_bytes() == Path(b["model_file"]).read_bytes()
