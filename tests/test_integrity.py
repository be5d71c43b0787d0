"""Files read from results folders and datasets are data, never code: an earlier run is loaded from
its exported model.pt only (never a pickled last.ckpt), its hparams.yaml may only name the
`_target_`s of the project's own conf/, and CIFAR batches are unpickled by an Unpickler that builds
numpy arrays and plain containers only. Each refusal is one line naming the file and what is wrong,
and the payload never runs."""
import pickle

import numpy as np
import pytest
import torch
import yaml

from datamodules.cifar import CIFARArrays, CIFARDataModule
from datamodules.common import DataError
from lightning_modules import earlier_runs
from lightning_modules.compression import container
from lightning_modules.config_check import ConfigError
from lightning_modules.earlier_runs import load_run
from lightning_modules.models import MLP
from tests.compression.test_distill import make_run
from benchmarks.image_files import write_cifar


class Payload:
    """A pickle that, when unpickled by an unrestricted Unpickler, creates `marker` (os.system)."""
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os
        return os.system, (f"touch {self.marker}",)


def one_line(e: pytest.ExceptionInfo) -> str:
    msg = str(e.value)
    assert "\n" not in msg, msg
    return msg


# --- earlier runs --------------------------------------------------------------------------------

def test_a_teacher_from_its_model_pt_still_loads(tmp_path):
    """The normal path: run name, run directory and model.pt give the run's exported weights."""
    run = make_run(tmp_path, "t", hidden=(8, 8))
    want = MLP(hidden=(8, 8))
    want.load_state_dict(container.read(run / "model.pt", "state_dict"))
    x = torch.randn(2, 1, 28, 28)
    for spec in ("t", str(run), str(run / "model.pt")):
        net, shape, _ = load_run(spec, tmp_path, "s")
        assert shape == (1, 28, 10) and torch.equal(net(x), want.eval()(x))


def test_a_lightning_checkpoint_is_never_loaded(tmp_path, monkeypatch):
    run = make_run(tmp_path, "t", hidden=(8, 8))
    marker = tmp_path / "ran"
    torch.save({"state_dict": {}, "x": Payload(marker)}, run / "last.ckpt")
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("torch.load called"))
    with pytest.raises(ConfigError) as e:
        load_run(str(run / "last.ckpt"), tmp_path)
    msg = one_line(e)
    assert msg.startswith(f"method.teacher={run / 'last.ckpt'}: not a run's exported weights file (last.ckpt")
    assert "valid: a finished run's model.pt" in msg
    (run / "model.pt").unlink()  # a run with only last.ckpt: refused, not loaded from the checkpoint
    with pytest.raises(ConfigError) as e:
        load_run("t", tmp_path, "s")
    assert one_line(e).startswith(f"method.teacher=t: no model.pt in {run} (a last.ckpt is never loaded")
    assert not marker.exists()


@pytest.mark.parametrize("node", ["data", "model.net", "method"])
def test_a_foreign_target_in_hparams_is_refused_unrun(tmp_path, node):
    run = make_run(tmp_path, "t")
    marker = tmp_path / "ran"
    hp = yaml.safe_load((run / "hparams.yaml").read_text())
    parent = hp["model"]["net"] if node == "model.net" else hp[node]
    parent["_target_"] = "os.system"
    parent["_args_"] = [f"touch {marker}"]
    (run / "hparams.yaml").write_text(yaml.safe_dump(hp))
    with pytest.raises(ConfigError) as e:
        load_run("t", tmp_path, "s")
    assert one_line(e) == (f"method.teacher: {run / 'hparams.yaml'}: {node}._target_=os.system: not a target "
                           "of this project's conf/ (a results folder is data, not code); valid: the "
                           "_target_s of conf/**/*.yaml")
    assert not marker.exists()


def test_a_nested_foreign_target_is_refused(tmp_path):
    run = make_run(tmp_path, "t")
    hp = yaml.safe_load((run / "hparams.yaml").read_text())
    hp["method"]["inner"] = [{"_target_": "subprocess.run", "args": ["true"]}]
    (run / "hparams.yaml").write_text(yaml.safe_dump(hp))
    with pytest.raises(ConfigError, match=r"method\.inner\.0\._target_=subprocess\.run: not a target"):
        load_run("t", tmp_path, "s")


def test_the_allowed_targets_are_the_conf_ones():
    targets = earlier_runs.conf_targets()
    assert "lightning_modules.models.LeNet5" in targets and "datamodules.cifar.CIFARDataModule" in targets
    assert not any(t.startswith(("os.", "subprocess.", "builtins.")) for t in targets)


def test_an_invalid_record_is_one_line(tmp_path):
    run = make_run(tmp_path, "t")
    (run / "record.json").write_text('{"status": "ok", "top1": 7.5}')
    with pytest.raises(ConfigError) as e:
        load_run("t", tmp_path, "s")
    assert one_line(e).startswith(f"method.teacher=t: {run / 'record.json'}: top1=7.5: ")


# --- CIFAR batches -------------------------------------------------------------------------------

def test_a_cifar_batch_in_the_real_format_loads(tmp_path):
    """The fixture's protocol-2 batches (numpy._core names, bytes via _codecs), and a batch as the
    original Python 2 files name numpy (numpy.core.multiarray): both give the written arrays."""
    want = write_cifar(tmp_path, "cifar10", n_train=15, n_test=5)
    ds = CIFARArrays(tmp_path, "cifar10", train=True)
    img, lab = want["train"]
    assert np.array_equal(ds.data, img) and ds.targets == lab.tolist() and len(ds.classes) == 10
    f = tmp_path / "cifar-10-batches-py" / "test_batch"
    f.write_bytes(f.read_bytes().replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n"))
    assert b"numpy.core.multiarray" in f.read_bytes()
    test = CIFARArrays(tmp_path, "cifar10", train=False)
    assert np.array_equal(test.data, want["test"][0]) and test.targets == want["test"][1].tolist()


@pytest.mark.parametrize("name", ["data_batch_3", "batches.meta"])
def test_a_cifar_batch_that_runs_code_is_refused_unrun(tmp_path, name):
    write_cifar(tmp_path, "cifar10", n_train=15, n_test=5)
    f = tmp_path / "cifar-10-batches-py" / name
    marker = tmp_path / "ran"
    f.write_bytes(pickle.dumps({"data": Payload(marker), "labels": [0]}, protocol=2))
    dm = CIFARDataModule("cifar10", root=str(tmp_path), val_size=2, num_workers=0, download=False)
    with pytest.raises(DataError) as e:
        dm.setup()
    assert one_line(e).startswith(f"{f}: refused: it names posix.system, and a CIFAR batch holds only numpy arrays")
    assert not marker.exists()
    # the same file through torchvision's loader (plain pickle.load) would have run it
    pickle.loads(f.read_bytes())
    assert marker.exists()


def test_a_cifar_batch_that_is_not_a_batch_is_one_line(tmp_path):
    write_cifar(tmp_path, "cifar100", n_train=15, n_test=5)
    f = tmp_path / "cifar-100-python" / "train"
    f.write_bytes(pickle.dumps([1, 2, 3], protocol=2))
    with pytest.raises(DataError) as e:
        CIFARArrays(tmp_path, "cifar100", train=True)
    assert one_line(e).startswith(f"{f}: a pickled list, not a CIFAR batch")
    f.write_bytes(pickle.dumps({"data": np.zeros((2, 3072), np.uint8), "fine_labels": [1]}, protocol=2))
    with pytest.raises(DataError, match="not a CIFAR batch .expected 'data', N x 3072 uint8"):
        CIFARArrays(tmp_path, "cifar100", train=True)
    f.write_bytes(b"\x80\x02}q\x00(X")  # truncated
    with pytest.raises(DataError, match=f"{f}: unreadable"):
        CIFARArrays(tmp_path, "cifar100", train=True)
