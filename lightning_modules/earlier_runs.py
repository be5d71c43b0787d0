"""Earlier runs as inputs of a new one: a distillation teacher, the trained weights a method starts
from (`start_from`, `init_from`). App level: it knows results folders, run records and conf/;
the compression package is only handed the built net or its state dict (`resolve_references`).

The earlier run is rebuilt from what it left behind: its record.json names the model and the
method, its resolved config (hparams.yaml, written by the csv logger) gives the exact net and
method arguments (else conf/model/<model>.yaml and conf/method/<method>.yaml with the record's
bits), and the run's method `load`s its exported file (model.pt, the checked container). A run
name is looked up as `<results_dir>/runs/<suite>/<name>/` first (e.g. a teacher trained earlier
in the same suite), then under any suite; a run directory or its model.pt names it directly.
A results folder is data, not code: a Lightning checkpoint (last.ckpt, a pickle) is never loaded,
and the only `_target_`s built from a run's hparams.yaml are those of the project's own conf/.
"""
from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path

import yaml
from torch import nn

from .compression.errors import FileFormatError
from .compression.method import Method
from .compression.quantization.qlayers import QLayer
from .config_check import CONF, ConfigError
from .record import record_problem

# the one file of a run that is loaded: its method's export (a checked container, no pickle)
WEIGHTS = "model.pt"


@dataclass
class Run:
    """An earlier run: its directory, the weights file to load and its record."""
    run_dir: Path
    file: Path
    record: dict


def find_run(spec: str, results_dir: str | Path, suite: str | None, key: str) -> Run:
    """`spec` is a run's exported weights file (model.pt), a run directory, or a run name looked
    up under <results_dir>/runs/<suite>/ then <results_dir>/runs/*/. ConfigError (one line, naming
    `key`) when nothing or more than one run matches, the run did not finish, or it has no
    model.pt (a last.ckpt is a pickle: never loaded)."""
    p = Path(str(spec))
    runs = Path(str(results_dir)) / "runs"
    if p.is_file():
        if p.name != WEIGHTS:
            raise ConfigError(f"{key}={spec}: not a run's exported weights file ({p.name}; a Lightning "
                              f"checkpoint is never loaded: it is a pickle, which can run code); valid: "
                              f"a finished run's {WEIGHTS}, its run directory or its run name")
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
                              f"a run directory or a {WEIGHTS} path")
        if len(found) > 1:
            raise ConfigError(f"{key}={spec}: a run of that name is in several suites "
                              f"({', '.join(d.parent.name for d in found)}); name its run directory instead")
        run_dir, file = found[0], None
    rec_path = run_dir / "record.json"
    if not rec_path.is_file():
        raise ConfigError(f"{key}={spec}: no record.json in {run_dir}; valid: the file or directory of "
                          "a finished run of this harness")
    try:
        record = json.loads(rec_path.read_text())
    except (OSError, ValueError) as e:
        raise ConfigError(f"{key}={spec}: {rec_path} is not readable JSON ({e}); valid: the record of "
                          "a finished run of this harness") from None
    problem = record_problem(record)
    if problem:
        raise ConfigError(f"{key}={spec}: {rec_path}: {problem}; valid: the record of a finished run "
                          "of this harness")
    if record.get("status") != "ok":
        raise ConfigError(f"{key}={spec}: that run's status is {record.get('status')!r}; valid: a run "
                          "that finished with status ok")
    if file is None:
        file = run_dir / WEIGHTS
        if not file.is_file():
            raise ConfigError(f"{key}={spec}: no {WEIGHTS} in {run_dir} (a last.ckpt is never loaded: "
                              f"it is a pickle, which can run code); valid: a finished run's {WEIGHTS}")
    return Run(run_dir, file, record)


def run_config(run: Run, key: str):
    """The run's model.net, method and data nodes: its hparams.yaml, else the conf/ files."""
    from omegaconf import OmegaConf
    hp = run.run_dir / "hparams.yaml"
    if hp.is_file():
        cfg = OmegaConf.load(hp)  # YAML's safe loader: no tags, no objects
        if all(k in cfg for k in ("model", "method", "data")):
            nodes = {"model.net": cfg.model.net, "method": cfg.method, "data": cfg.data}
            return tuple(OmegaConf.create(checked(node, hp, where, key)) for where, node in nodes.items())
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


@functools.cache
def conf_targets() -> frozenset[str]:
    """Every `_target_` named in the project's own conf/**/*.yaml: what a run's config may build."""
    def walk(node):
        if isinstance(node, dict):
            for k, v in node.items():
                if k == "_target_" and isinstance(v, str):
                    yield v
                yield from walk(v)
        elif isinstance(node, list):
            for v in node:
                yield from walk(v)
    return frozenset(t for f in sorted(CONF.rglob("*.yaml")) for t in walk(yaml.safe_load(f.read_text())))


def checked(node, file: Path, where: str, key: str) -> dict:
    """The config `node` read from `file` (an earlier run's hparams.yaml: data, not code), resolved,
    as what is then built; ConfigError (one line naming the file, the key and the target) if it
    has a `_target_` that no conf/ file names: building it would run whatever it names
    (`_target_: os.system`)."""
    from omegaconf import OmegaConf
    try:
        tree = OmegaConf.to_container(node, resolve=True)
    except Exception as e:  # an interpolation that does not resolve
        raise ConfigError(f"{key}: {file}: {where}: cannot resolve ({str(e).splitlines()[0]})") from None

    def walk(n, path):
        if isinstance(n, dict):
            t = n.get("_target_")
            if t is not None and t not in conf_targets():
                raise ConfigError(f"{key}: {file}: {path}._target_={t}: not a target of this project's "
                                  "conf/ (a results folder is data, not code); valid: the _target_s "
                                  "of conf/**/*.yaml")
            for k, v in n.items():
                walk(v, f"{path}.{k}")
        elif isinstance(n, list):
            for i, v in enumerate(n):
                walk(v, f"{path}.{i}")
    walk(tree, where)
    return tree


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
    """An earlier run's method object, only to `load` its file: run references (a distillation
    teacher, start_from / init_from weights) are dropped (loading a file never needs them) and
    `label` is the table's, not an argument."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf
    c = OmegaConf.to_container(method_cfg, resolve=True)
    c.pop("label", None)
    return instantiate(replace_references(c, lambda key, spec, path: None), _convert_="all")


def load_weights(method: Method, model: nn.Module, file: Path) -> nn.Module:
    """The run's exported file (model.pt) via its method's `load`: the checked container, never a
    pickle."""
    return method.load(model, file)


def load_run(spec: str, results_dir: str | Path, suite: str | None = None,
             key: str = "method.teacher") -> tuple[nn.Module, tuple[int, int, int], Run]:
    """Rebuild an earlier run's net with its weights, frozen: (net, (C, H, classes), run)."""
    from hydra.utils import instantiate
    run = find_run(spec, results_dir, suite, key)
    net_cfg, method_cfg, data_cfg = run_config(run, key)
    c, h, k = data_shape(data_cfg)
    try:
        net = instantiate(net_cfg, in_channels=c, image_size=h, num_classes=k, _convert_="all")
        net = load_weights(run_method(method_cfg), net, run.file)
    except FileFormatError as e:  # the file is damaged or of another model
        raise ConfigError(f"{key}={spec}: cannot load {run.file}: {e}") from None
    except ConfigError:
        raise
    except Exception as e:  # a file that does not fit the rebuilt net
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(f"{key}={spec}: cannot load {run.file} into {run.record.get('model')}: {msg}") from None
    net.eval().requires_grad_(False)
    return net, (c, h, k), run


# method config keys that name an earlier run, and what the method is handed instead
REFERENCES = ("teacher", "start_from", "init_from")


def replace_references(node, fn, path: str = "method"):
    """A copy of a method config (dicts/lists) with every string under a REFERENCES key replaced
    by fn(key, spec, full key)."""
    if isinstance(node, dict):
        return {k: (fn(k, v, f"{path}.{k}") if k in REFERENCES and isinstance(v, str)
                    else replace_references(v, fn, f"{path}.{k}")) for k, v in node.items()}
    if isinstance(node, list):
        return [replace_references(v, fn, f"{path}.{i}") for i, v in enumerate(node)]
    return node


def resolve_references(method: dict, results_dir: str | Path, suite: str | None,
                       shape: tuple[int, int, int]) -> dict:
    """The method config with its run references built (the compression package never looks for
    runs): `teacher` -> the teacher net, frozen; `start_from` / `init_from` -> the float state dict
    of that run's net. `shape` = this run's (C, H, classes): a teacher must take the same inputs
    and predict the same classes."""
    def build(key: str, spec: str, where: str):
        net, got, run = load_run(spec, results_dir, suite, where)
        if key == "teacher" and tuple(got) != tuple(shape):
            raise ConfigError(f"{where}={spec}: the teacher takes {got[0]}x{got[1]}x{got[1]} inputs and "
                              f"predicts {got[2]} classes, this run {shape[0]}x{shape[1]}x{shape[1]} and "
                              f"{shape[2]}; valid: a teacher trained on the student's data")
        if key == "teacher":
            return net
        if any(isinstance(m, QLayer) for m in net.modules()):
            raise ConfigError(f"{where}={spec}: a quantized run; valid: a full-precision run (fp32 or "
                              "kd) of the same model")
        return {k: v.detach().clone() for k, v in net.state_dict().items()}
    return replace_references(method, build)
