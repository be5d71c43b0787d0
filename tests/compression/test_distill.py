"""Knowledge distillation: the loss is Hinton et al.'s formula, the teacher is frozen and outside
the student, teachers are found by run name, bad teachers are one-line ConfigErrors, and a
teacher run then a student run naming it work through train.py."""
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml

from hydra.utils import instantiate

from lightning_modules.compression import container
from lightning_modules.compression.distillation.distill import KnowledgeDistillation, kd_loss
from lightning_modules.compression.method import FullPrecision
from lightning_modules.config_check import ConfigError
from lightning_modules.earlier_runs import load_run, resolve_references
from lightning_modules.models import MLP
from tests.conftest import FAST, only_record, train


def kd(teacher=None, results_dir="results", suite=None, shape=(1, 28, 10), **kw) -> KnowledgeDistillation:
    """method=kd as run.build_method builds it: the teacher run found and rebuilt by the app."""
    cfg = {"_target_": "lightning_modules.compression.distillation.distill.KnowledgeDistillation", "teacher": teacher, **kw}
    return instantiate(resolve_references(cfg, results_dir, suite, shape), _convert_="all")


def make_run(results_dir: Path, name: str, net: torch.nn.Module | None = None, suite: str = "s",
             hidden=(32, 32), num_classes: int = 10, model: str = "tiny", hparams: bool = True,
             method: dict | None = None, export=None, status: str = "ok") -> Path:
    """A finished run as the harness leaves it: record.json, model.pt (the method's export, by
    default a plain state dict), and hparams.yaml (the resolved config) unless hparams=False."""
    d = Path(results_dir) / "runs" / suite / name
    d.mkdir(parents=True)
    if net is None:
        torch.manual_seed(len(name))
        net = MLP(hidden=hidden, num_classes=num_classes)
    (export or FullPrecision().export)(net, d / "model.pt")
    rec = {"run_name": name, "model": model, "method": (method or {}).get("name", "fp32"),
           "bits": {"w": 32, "a": 32, "g": 32}, "dataset": "fashion_mnist", "status": status}
    (d / "record.json").write_text(json.dumps(rec))
    if hparams:
        data = {"_target_": "datamodules.synthetic.SyntheticDataModule", "channels": 1, "image_size": 28,
                "num_classes": 5, "batch_size": 2, "num_batches": 1} if num_classes == 5 else \
            {"_target_": "datamodules.fashion_mnist.FashionMNISTDataModule"}
        cfg = {"model": {"name": model, "net": {"_target_": "lightning_modules.models.MLP",
                                                "hidden": list(hidden)}},
               "method": method or {"_target_": "lightning_modules.compression.method.FullPrecision",
                                    "name": "fp32"},
               "data": data}
        (d / "hparams.yaml").write_text(yaml.safe_dump(cfg))
    return d


# --- the loss --------------------------------------------------------------------------------

def test_kd_loss_is_the_formula_on_hand_tensors():
    zs = torch.tensor([[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]])
    zt = torch.tensor([[2.0, 1.0, 0.0], [1.0, 1.0, 4.0]])
    y = torch.tensor([1, 2])
    alpha, T = 0.7, 3.0
    # explicit sums: KL(p_t || p_s) = sum_c p_t,c (log p_t,c - log p_s,c), mean over the batch
    log_ps = zs / T - torch.log(torch.exp(zs / T).sum(1, keepdim=True))
    log_pt = zt / T - torch.log(torch.exp(zt / T).sum(1, keepdim=True))
    kl = (torch.exp(log_pt) * (log_pt - log_ps)).sum(1).mean()
    log_p1 = zs - torch.log(torch.exp(zs).sum(1, keepdim=True))
    ce = -(log_p1[0, 1] + log_p1[1, 2]) / 2
    want = alpha * T * T * kl + (1 - alpha) * ce
    assert torch.allclose(kd_loss(zs, zt, y, alpha, T), want, atol=1e-6)
    assert torch.allclose(kd_loss(zs, zt, y, 0.0, T), F.cross_entropy(zs, y), atol=1e-6)
    assert kd_loss(zt, zt, y, 1.0, T).abs() < 1e-6  # student = teacher: nothing to learn


def test_kd_gradient_is_soft_target_difference():
    """d/dz_s of T^2 KL = T (p_s - p_t) per sample (Hinton et al., eq. 2, times T^2), / batch."""
    zs = torch.randn(4, 10, requires_grad=True)
    zt = torch.randn(4, 10)
    T = 5.0
    kd_loss(zs, zt, torch.zeros(4, dtype=torch.long), 1.0, T).backward()
    want = T * (torch.softmax(zs.detach() / T, 1) - torch.softmax(zt / T, 1)) / 4
    assert torch.allclose(zs.grad, want, atol=1e-6)


# --- the teacher -----------------------------------------------------------------------------

def test_teacher_found_by_run_name_frozen_and_outside_the_student(tmp_path):
    run = make_run(tmp_path, "teach", hidden=(48, 48))
    method = kd(teacher="teach", results_dir=str(tmp_path), suite="s", alpha=0.5)
    teacher = method.teacher
    want = MLP(hidden=(48, 48))
    want.load_state_dict(container.read(run / "model.pt", "state_dict"))
    x = torch.randn(8, 1, 28, 28)
    assert torch.equal(teacher(x), want.eval()(x))  # the run's weights
    student = method.apply(MLP(hidden=(16, 16)))
    student.train()
    logits = student(x)
    y = torch.randint(0, 10, (8,))
    method.loss(logits, y, (x, y)).backward()
    assert not teacher.training
    assert all(not p.requires_grad and p.grad is None for p in teacher.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters())
    t_ids = {id(p) for p in teacher.parameters()}
    assert not t_ids & {id(p) for p in student.parameters()}
    assert not any(m is teacher for m in student.modules())
    assert sum(p.numel() for p in student.parameters()) == 784 * 16 + 16 + 16 * 16 + 16 + 16 * 10 + 10


def test_teacher_rebuilt_from_conf_without_hparams(tmp_path):
    """No hparams.yaml (e.g. a W&B-logged run): conf/model/<model>.yaml + conf/method/<method>.yaml."""
    torch.manual_seed(0)
    net = MLP(hidden=(800, 800))
    make_run(tmp_path, "t", net=net, model="mlp2x800", hparams=False)
    teacher, shape, _ = load_run("t", tmp_path, "s")
    x = torch.randn(2, 1, 28, 28)
    assert shape == (1, 28, 10) and torch.equal(teacher(x), net.eval()(x))


def test_teacher_by_path_and_run_directory(tmp_path):
    run = make_run(tmp_path, "t")
    for spec in (run, run / "model.pt"):
        assert kd(teacher=str(spec)).teacher is not None


def _one_line_error(match: str, **kw):
    with pytest.raises(ConfigError, match=match) as e:
        method = kd(**kw)
        method.apply(MLP(hidden=(16, 16)))
    assert "\n" not in str(e.value) and str(e.value).startswith("method.teacher=")
    return str(e.value)


def test_missing_teacher_is_one_line_error(tmp_path):
    msg = _one_line_error("method.teacher=nope: no such file, run directory or run under",
                          teacher="nope", results_dir=str(tmp_path), suite="s")
    assert str(tmp_path) in msg  # says where it looked
    assert _one_line_error("method.teacher=null: kd needs a teacher", teacher=None)
    make_run(tmp_path, "failed", status="failed")
    msg = _one_line_error("status is 'failed'", teacher="failed", results_dir=str(tmp_path), suite="s")
    assert msg.startswith("method.teacher=failed:")


def test_run_name_in_several_suites_is_ambiguous_unless_in_own_suite(tmp_path):
    make_run(tmp_path, "t", suite="a")
    make_run(tmp_path, "t", suite="b")
    _one_line_error("in several suites", teacher="t", results_dir=str(tmp_path), suite="c")
    assert kd(teacher="t", results_dir=str(tmp_path), suite="b").teacher is not None


def test_teacher_with_other_classes_is_one_line_error(tmp_path):
    make_run(tmp_path, "five", num_classes=5)
    msg = _one_line_error("predicts 5 classes, this run 1x28x28 and 10", teacher="five",
                          results_dir=str(tmp_path), suite="s")
    assert msg.startswith("method.teacher=five:")


def test_teacher_file_that_does_not_fit_is_one_line_error(tmp_path):
    run = make_run(tmp_path, "t", hidden=(32, 32))
    torch.save(MLP(hidden=(64, 64)).state_dict(), run / "model.pt")
    msg = _one_line_error("cannot load", teacher="t", results_dir=str(tmp_path), suite="s")
    assert msg.startswith("method.teacher=t:")


@pytest.mark.parametrize("key,value", [("alpha", 1.5), ("temperature", 0.0)])
def test_bad_alpha_temperature(key, value):
    with pytest.raises(ConfigError, match=f"method.{key}={value}"):
        KnowledgeDistillation(**{key: value})


# --- through train.py ------------------------------------------------------------------------

@pytest.mark.slow
def test_teacher_run_then_student_naming_it(tmp_path):
    common = [a for a in FAST if not a.startswith(("model=", "data.train_subset="))]
    common += ["data.train_subset=256", "trainer.max_epochs=1"]
    t = train([*common, "model=mlp2x1200", "method=fp32"], tmp_path)
    assert t.returncode == 0, t.stderr[-2000:]
    teacher = only_record(tmp_path)
    s = train([*common, "model=mlp2x800", "method=kd", f"method.teacher={teacher['run_name']}",
               "method.temperature=20"], tmp_path)
    assert s.returncode == 0, s.stderr[-2000:]
    rec = json.loads(next(tmp_path.rglob("mlp2x800-kd-*/record.json")).read_text())
    assert rec["status"] == "ok" and rec["method"] == "kd" and rec["method_label"]
    assert 0.0 <= rec["top1"] <= 1.0 and rec["test_samples"] == 1000
    student_params = 784 * 800 + 800 + 800 * 800 + 800 + 800 * 10 + 10
    assert rec["params"] == student_params  # the teacher's 2.4M are not the student's
    state = container.read(rec["model_file"], "state_dict")  # the student alone, fp32
    assert sum(v.numel() for v in state.values()) == student_params
    assert rec["footprint_bytes"] < 4 * student_params * 1.01
    # a missing teacher: exit status 2, one line naming method.teacher, no run directory
    bad = train([*common, "model=mlp2x800", "method=kd", "method.teacher=no-such-run",
                 "seed=1"], tmp_path)
    assert bad.returncode == 2
    err = [line for line in bad.stderr.splitlines() if line.startswith("error:")]
    assert len(err) == 1 and err[0].startswith("error: method.teacher=no-such-run:"), bad.stderr[-2000:]
    assert not list(tmp_path.rglob("mlp2x800-kd-*-s1"))
