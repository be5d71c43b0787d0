"""Knowledge distillation (Hinton, Vinyals & Dean 2015, "Distilling the Knowledge in a Neural Network").

    method=kd method.teacher=<run name | run directory | model.pt / last.ckpt path>

The student is trained on

    loss = alpha T^2 KL(softmax(z_t / T) || softmax(z_s / T)) + (1 - alpha) CE(z_s, y)

(z_t, z_s the teacher's and the student's logits; T^2 keeps the soft term's gradient scale
independent of T, Sec. 2). The student is evaluated and exported at T = 1: its own logits.

The teacher is an earlier run, rebuilt from what that run left behind: its record.json names the
model and the method, its resolved config (hparams.yaml, written by the csv logger) gives the
exact net and method arguments (else conf/model/<model>.yaml and conf/method/<method>.yaml with
the record's bits), and the run's method `load`s its exported file (a plain state dict for fp32).
A run name is looked up as `<results_dir>/runs/<suite>/<name>/` first (the suite's own teacher,
trained earlier in the same suite), then under any suite. The teacher is frozen (eval mode,
requires_grad False), moved to the logits' device on first use and held by the method, never by
the student: its parameters are not in the optimizer, the parameter count, the checkpoint or the
exported file. The paper's optional separate transfer set is not implemented (the student's own
training batches are the transfer set).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..config_check import CONF, ConfigError
from .method import Method


def kd_loss(student: torch.Tensor, teacher: torch.Tensor, target: torch.Tensor,
            alpha: float, temperature: float) -> torch.Tensor:
    """alpha T^2 KL(p_t || p_s) + (1 - alpha) CE(z_s, y), p = softmax(z / T); KL summed over the
    classes and averaged over the batch, like the cross-entropy. Computed in float32."""
    s, t = student.float(), teacher.detach().float()
    log_ps = F.log_softmax(s / temperature, dim=-1)
    log_pt = F.log_softmax(t / temperature, dim=-1)
    soft = F.kl_div(log_ps, log_pt, log_target=True, reduction="batchmean")
    return alpha * temperature ** 2 * soft + (1 - alpha) * F.cross_entropy(s, target)


# --- finding and rebuilding an earlier run ---------------------------------------------------

@dataclass
class Run:
    """An earlier run: its directory, the weights file to load and its record."""
    run_dir: Path
    file: Path
    record: dict


def find_run(spec: str, results_dir: str | Path, suite: str | None, key: str) -> Run:
    """`spec` is a weights file (model.pt, last.ckpt), a run directory, or a run name looked up
    under <results_dir>/runs/<suite>/ then <results_dir>/runs/*/. ConfigError (one line, naming
    `key`) when nothing or more than one run matches, or the run did not finish."""
    p = Path(str(spec))
    runs = Path(str(results_dir)) / "runs"
    if p.is_file():
        run_dir, file = p.parent, p
    elif p.is_dir():
        run_dir, file = p, None
    else:
        own = runs / str(suite) / str(spec)
        found = [own] if (own / "record.json").is_file() else sorted(
            d.parent for d in runs.glob(f"*/{spec}/record.json"))
        if not found:
            raise ConfigError(f"{key}={spec}: no such file, run directory or run under {runs}/*/; "
                              "valid: a run name (trained earlier, e.g. listed before in the suite), "
                              "a run directory or a model.pt / last.ckpt path")
        if len(found) > 1:
            raise ConfigError(f"{key}={spec}: a run of that name is in several suites "
                              f"({', '.join(d.parent.name for d in found)}); name its run directory instead")
        run_dir, file = found[0], None
    rec_path = run_dir / "record.json"
    if not rec_path.is_file():
        raise ConfigError(f"{key}={spec}: no record.json in {run_dir}; valid: the file or directory of "
                          "a finished run of this harness")
    record = json.loads(rec_path.read_text())
    if record.get("status") != "ok":
        raise ConfigError(f"{key}={spec}: that run's status is {record.get('status')!r}; valid: a run "
                          "that finished with status ok")
    if file is None:
        file = next((f for f in (run_dir / "model.pt", run_dir / "last.ckpt") if f.is_file()), None)
        if file is None:
            raise ConfigError(f"{key}={spec}: neither model.pt nor last.ckpt in {run_dir}")
    return Run(run_dir, file, record)


def run_config(run: Run, key: str):
    """The run's model.net, method and data nodes: its hparams.yaml, else the conf/ files."""
    from omegaconf import OmegaConf
    hp = run.run_dir / "hparams.yaml"
    if hp.is_file():
        cfg = OmegaConf.load(hp)
        if all(k in cfg for k in ("model", "method", "data")):
            return cfg.model.net, cfg.method, cfg.data
    rec = run.record
    paths = {g: CONF / g / f"{rec.get(n)}.yaml" for g, n in
             (("model", "model"), ("method", "method"), ("data", "dataset"))}
    for g, path in paths.items():
        if not path.is_file():
            raise ConfigError(f"{key}={run.run_dir.name}: no hparams.yaml in {run.run_dir} and no "
                              f"conf/{g}/{path.name} for its record's {g}")
    cfg = OmegaConf.create({"bits": rec.get("bits") or {"w": 32, "a": 32, "g": 32},
                            "results_dir": str(run.run_dir.parents[2]),
                            "suite": {"name": run.run_dir.parent.name}})
    for g, path in paths.items():
        cfg[g] = OmegaConf.load(path)
    return cfg.model.net, cfg.method, cfg.data


def data_shape(data_cfg) -> tuple[int, int, int]:
    """(in_channels, image_size, num_classes) of a data config: the datamodule's class attributes
    (the data is not loaded), else those of an instance."""
    from hydra.utils import get_class, instantiate
    cls = get_class(data_cfg._target_)
    keys = ("in_channels", "image_size", "num_classes")
    if all(isinstance(getattr(cls, k, None), int) for k in keys):
        return tuple(getattr(cls, k) for k in keys)
    dm = instantiate(data_cfg)
    return tuple(int(getattr(dm, k)) for k in keys)


def run_method(method_cfg) -> Method:
    """An earlier run's method object, only to `load` its file: a distillation method gets no
    teacher (loading a file never needs one), `label` is the table's, not an argument."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf
    c = OmegaConf.to_container(method_cfg, resolve=True)
    c.pop("label", None)
    for k in ("teacher", "start_from"):
        if k in c:
            c[k] = None
    return instantiate(c, _convert_="all")


def load_weights(method: Method, model: nn.Module, file: Path) -> nn.Module:
    """The run's exported file via its method's `load`; a Lightning checkpoint (last.ckpt) via the
    `net.` entries of its state dict into the method-applied model."""
    if file.suffix != ".ckpt":
        return method.load(model, file)
    ckpt = torch.load(file, map_location="cpu", weights_only=False)
    state = {k.removeprefix("net."): v for k, v in ckpt["state_dict"].items() if k.startswith("net.")}
    model = method.apply(model)
    model.load_state_dict(state)
    return model


def load_teacher(spec: str, results_dir: str | Path, suite: str | None = None,
                 key: str = "method.teacher") -> tuple[nn.Module, tuple[int, int, int], Run]:
    """Rebuild an earlier run's net with its weights, frozen: (net, (C, H, classes), run)."""
    from hydra.utils import instantiate
    run = find_run(spec, results_dir, suite, key)
    net_cfg, method_cfg, data_cfg = run_config(run, key)
    c, h, k = data_shape(data_cfg)
    try:
        net = instantiate(net_cfg, in_channels=c, image_size=h, num_classes=k, _convert_="all")
        net = load_weights(run_method(method_cfg), net, run.file)
    except ConfigError:
        raise
    except Exception as e:  # a file that does not fit the rebuilt net
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(f"{key}={spec}: cannot load {run.file} into {run.record.get('model')}: {msg}") from None
    net.eval().requires_grad_(False)
    return net, (c, h, k), run


def num_outputs(model: nn.Module, shape: tuple[int, int, int]) -> int | None:
    """The number of logits `model` gives for one zero input of (C, H, H); None when it cannot
    take that input. Runs in eval mode without gradients (no BatchNorm statistics move)."""
    p = next(model.parameters(), None)
    x = torch.zeros(1, shape[0], shape[1], shape[1], device=p.device if p is not None else "cpu")
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            return int(model(x).shape[-1])
    except RuntimeError:
        return None
    finally:
        model.train(was)


class KnowledgeDistillation(Method):
    """`method=kd`: the student (the run's model) trained on the distillation loss of a frozen
    teacher (an earlier run). `teacher=None` is only for loading a file (no training)."""

    def __init__(self, teacher: str | None = None, results_dir: str = "results", suite: str | None = None,
                 alpha: float = 0.9, temperature: float = 4.0, name: str = "kd"):
        super().__init__(name)
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 <= alpha <= 1:
            raise ConfigError(f"method.alpha={alpha}: must be a number in [0, 1] (weight of the soft term)")
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or temperature <= 0:
            raise ConfigError(f"method.temperature={temperature}: must be a number > 0")
        self.alpha, self.temperature = float(alpha), float(temperature)
        self.teacher_spec, self.results_dir, self.suite = teacher, results_dir, suite
        self.teacher: nn.Module | None = None
        self.teacher_shape: tuple[int, int, int] | None = None
        if teacher is not None:
            self.teacher, self.teacher_shape, _ = load_teacher(teacher, results_dir, suite)

    def apply(self, model: nn.Module) -> nn.Module:
        self.check_student(model)
        return model

    def check_student(self, model: nn.Module) -> None:
        """A teacher must be named (for kd) and predict the student's classes from its inputs."""
        if self.teacher is None:
            raise ConfigError(f"method.teacher=null: {self.name} needs a teacher; valid: the run name, "
                              "run directory or model file of a trained run")
        c, h, k = self.teacher_shape
        got = num_outputs(model, (c, h, k))
        if got is None:
            raise ConfigError(f"method.teacher={self.teacher_spec}: the teacher takes {c}x{h}x{h} inputs, "
                              "the student cannot; valid: a teacher trained on the student's data")
        if got != k:
            raise ConfigError(f"method.teacher={self.teacher_spec}: the teacher has {k} classes, the "
                              f"student {got}; valid: a teacher trained on the student's data")

    def teacher_logits(self, x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """The frozen teacher's logits for x, on the device of `like` (moved there once)."""
        p = next(self.teacher.parameters(), None)
        if p is not None and p.device != like.device:
            self.teacher.to(like.device)
        if self.teacher.training:  # nothing should switch it, but dropout must stay off
            self.teacher.eval()
        with torch.no_grad():
            return self.teacher(x)

    def loss(self, logits, target, batch):
        if self.teacher is None:
            return None
        z_t = self.teacher_logits(batch[0], logits)
        if z_t.shape != logits.shape:
            raise ConfigError(f"method.teacher={self.teacher_spec}: teacher logits {tuple(z_t.shape)}, "
                              f"student logits {tuple(logits.shape)}; valid: a teacher for the student's classes")
        return kd_loss(logits, z_t, target, self.alpha, self.temperature)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(teacher={self.teacher_spec}, alpha={self.alpha}, "
                f"T={self.temperature})")
