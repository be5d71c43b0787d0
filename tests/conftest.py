import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# `pytest` (not only `python -m pytest`) imports this checkout's packages and `tests.*`, not those
# of whichever checkout the virtualenv was installed from (pip install -e)
sys.path.insert(0, str(REPO))
# Small but real: the real Fashion-MNIST files, a real Trainer, a few dozen steps. The deploy step
# (about 2 s a run) is left to the tests that are about it (tests/test_deploy.py) and to the suites.
FAST = ["model=lenet300", "data.train_subset=512", "data.test_subset=1000", "data.val_size=500",
        "trainer.limit_val_batches=1", "measure.warmup_steps=2", "deploy=none"]


def train(args: list[str], results_dir: Path, env: dict | None = None, timeout: int = 600):
    """Run train.py as a user would; return the CompletedProcess."""
    e = {**os.environ, "PYTHONWARNINGS": "ignore", **(env or {})}
    return subprocess.run([sys.executable, str(REPO / "train.py"), *args, f"results_dir={results_dir}"],
                          cwd=REPO, capture_output=True, text=True, timeout=timeout, env=e)


def only_record(results_dir: Path) -> dict:
    recs = list(Path(results_dir).rglob("record.json"))
    assert len(recs) == 1, recs
    return json.loads(recs[0].read_text())


@pytest.fixture(scope="session")
def fmnist():
    """The Fashion-MNIST datamodule over the real files (made available by `make data`)."""
    from datamodules.fashion_mnist import FashionMNISTDataModule
    dm = FashionMNISTDataModule()
    dm.prepare_data()
    dm.setup()
    return dm
