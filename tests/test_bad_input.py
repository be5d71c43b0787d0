"""Bad input: one line naming key, value and what is valid; exit 2; nothing written. Each case
starts train.py (a process), so the module is `slow`. The valid names come from the registry
(conf/<group>/*.yaml), so adding a model, method or dataset changes the expected line with it."""
import os
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import REPO, train

pytestmark = pytest.mark.slow


def valid(group: str) -> str:
    return ", ".join(sorted(p.stem for p in (REPO / "conf" / group).glob("*.yaml")))


CASES = [
    (["bits.w=0"], "bits.w=0: must be an integer in 1..32"),
    (["bits.a=33"], "bits.a=33: must be an integer in 1..32"),
    (["bits.g=x"], "bits.g=x: must be an integer in 1..32"),
    (["data.batch_size=0"], "data.batch_size=0: must be an integer >= 1"),
    (["data.batch_size=-5"], "data.batch_size=-5: must be an integer >= 1"),
    (["trainer.max_epochs=0"], "trainer.max_epochs=0: must be an integer >= 1"),
    (["method=xnor", "bits=w1a2g6"], "bits.a=2: not valid for method xnor; valid: 1"),
    (["method=dorefa", "bits.g=0"], "bits.g=0: must be an integer in 1..32"),
    (["method=prune", "trainer.max_epochs=1"], "method.prune.end=1: must be < trainer.max_epochs=1"),
    (["data.root=/no/such/dir"], "data.root=/no/such/dir: no such directory"),
    (["trainer.no_such_key=1"], "trainer.no_such_key=1: unknown key; valid keys under trainer: accelerator"),
    (["run_name=.."], "run_name='..': must be one path component"),
    (["run_name=../../../x"], "run_name='../../../x': must be one path component"),
    (["run_name="], "run_name='': must be one path component"),
    (["suite.name=.."], "suite.name='..': must be one path component"),
    (["run_dir=/tmp/elsewhere"], "run_dir=/tmp/elsewhere: must lie inside"),
    (["method=fp32", "deploy=binary"], "deploy=binary: method fp32 has bits W32A32"),
    (["+trainer.foo=1"], "trainer.foo=1: not an argument of Lightning's Trainer; valid: accelerator"),
    (["trainer.strategy=nope"], "trainer.strategy=nope: valid: auto, ddp"),
    (["data.train_subset=5"], "data.train_subset=5: fewer images than one batch (data.batch_size=32"),
    (["seed=99999999999999999999"], "seed=99999999999999999999: must be an integer in 0..4294967295"),
]


def one_line_error(args: list[str], results) -> str:
    """train.py's stderr line for a bad input (exit status 2, no run directory, no record)."""
    p = train(args, results)
    assert p.returncode == 2, p.stderr[-2000:]
    lines = [l for l in p.stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and "Traceback" not in p.stderr, p.stderr[-2000:]
    assert not results.exists()
    return lines[0]


@pytest.mark.parametrize("args,message", CASES, ids=[c[0][0] for c in CASES])
def test_bad_input_fails_in_one_line_and_writes_nothing(tmp_path, args, message):
    assert one_line_error(args, tmp_path / "results").startswith("error: " + message)


@pytest.mark.parametrize("group", ["model", "method", "data", "precision"])
def test_unknown_choice_lists_every_registered_one(tmp_path, group):
    line = one_line_error([f"{group}=foo"], tmp_path / "results")
    assert line == f"error: {group}=foo: unknown {group}; valid: {valid(group)}"


def test_a_bad_run_name_touches_no_other_run(tmp_path):
    """`run_name=..` once emptied <results_dir>/runs on a failure; now it is refused first."""
    other = tmp_path / "results" / "runs" / "adhoc" / "other"
    other.mkdir(parents=True)
    (other / "record.json").write_text("{}")
    (other / "model.pt").write_bytes(b"weights")
    p = train(["run_name=..", "data.root=/no/such/dir"], tmp_path / "results")
    assert p.returncode == 2 and "run_name='..'" in p.stderr
    assert sorted(q.name for q in other.iterdir()) == ["model.pt", "record.json"]


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="the check is for machines without a GPU")
def test_a_gpu_trainer_without_a_gpu_is_one_line(tmp_path):
    line = one_line_error(["trainer.accelerator=gpu"], tmp_path / "results")
    assert line.startswith("error: trainer.accelerator=gpu: no CUDA device here")


def idx(path, data: np.ndarray) -> None:
    """An IDX file (the MNIST format): magic (0, 0, uint8 type 0x08, ndim), the sizes, the bytes."""
    path.write_bytes(bytes([0, 0, 8, data.ndim]) + b"".join(int(n).to_bytes(4, "big") for n in data.shape)
                     + data.astype(np.uint8).tobytes())


def test_fashion_mnist_labels_that_do_not_match_the_images_are_one_line(tmp_path):
    raw = tmp_path / "data" / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for prefix, n in (("train", 64), ("t10k", 16)):
        idx(raw / f"{prefix}-images-idx3-ubyte", np.zeros((n, 28, 28)))
        idx(raw / f"{prefix}-labels-idx1-ubyte", np.arange(n - (prefix == "train")) % 10)
    line = one_line_error([f"data.root={tmp_path / 'data'}", "data.val_size=8", "data.batch_size=8"],
                          tmp_path / "results")
    assert line == (f"error: {raw / 'train-images-idx3-ubyte'} has 64 images but {raw / 'train-labels-idx1-ubyte'} "
                    "63 labels; valid: one label per image (delete both and run `make data`)")


def suite(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "benchmarks.suite", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=300, env={**os.environ, "PYTHONWARNINGS": "ignore"})


@pytest.mark.parametrize("args,message", [
    (["smoke", "nosuch.key=1"], "error: nosuch.key=1: unknown key"),
    (["smoke", "data.nosuch=1"], "error: data.nosuch=1: unknown key; valid keys under data: _target_, root"),
    (["smoke", "trainer.max_epochs=0"], "error: trainer.max_epochs=0: must be an integer >= 1"),
    (["smoke", "--nosuch"], "error: unrecognized arguments: --nosuch; usage: "),
    (["smoke", "--results=x"], "error: unrecognized arguments: --results=x; usage: "),
    ([], "error: the following arguments are required: suite"),
], ids=["unknown-key", "unknown-data-key", "bad-value", "unknown-flag", "abbreviated-flag", "no-suite"])
def test_the_suite_runner_says_bad_input_in_one_line_and_runs_nothing(tmp_path, args, message):
    results = tmp_path / "results"
    p = suite([*args, "--results-dir", str(results)] if args else [])
    lines = [l for l in p.stderr.splitlines() if l.strip()]
    assert p.returncode == 2 and len(lines) == 1 and lines[0].startswith(message), p.stderr[-2000:]
    assert p.stdout == "" and not results.exists()
