"""Errors a user can cause, said in one line: the key, the bad value, what is valid.

`check_overrides` runs before Hydra composes anything (unknown group choices, unknown keys);
`check_config` runs on the composed config (value ranges, paths). Both raise `ConfigError`.
"""
from __future__ import annotations

import re
from pathlib import Path

from omegaconf import DictConfig

from .compression.errors import ConfigError  # noqa: F401  (re-exported: the one user-error type)

CONF = Path(__file__).resolve().parents[1] / "conf"
GROUPS = ("data", "model", "method", "bits", "precision", "trainer", "optimizer", "scheduler",
          "logger", "callbacks", "suite", "deploy")


def choices(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def normalize_overrides(overrides: list[str]) -> list[str]:
    """Quote numeric group choices (`precision=32` -> `precision='32'`): Hydra would parse 32 as
    an int and refuse it as a config group option."""
    out = []
    for ov in overrides:
        key, sep, value = ov.partition("=")
        if sep and key.lstrip("+~") in GROUPS:
            ov = f"{key}=" + ",".join(f"'{v}'" if v.isdigit() else v for v in value.split(","))
        out.append(ov)
    return out


def check_overrides(overrides: list[str], multirun: bool = False) -> None:
    """Group choices (`model=foo`, `callbacks=[default,early_stopping]`) must name YAMLs in
    conf/<group>/."""
    for ov in overrides:
        key, sep, value = ov.partition("=")
        key = key.lstrip("+~")
        if not sep or key not in GROUPS:
            continue
        several = multirun or value.startswith("[")  # a sweep, or a list of options merged
        values = [v.strip(" '\"[]") for v in (value.split(",") if several else [value])]
        for v in values:
            if v not in choices(key):
                raise ConfigError(f"{key}={v}: unknown {key}; valid: {', '.join(choices(key))}")


def _int_in(cfg: DictConfig, key: str, lo: int, hi: int | None = None) -> None:
    value = cfg
    for part in key.split("."):
        value = value[part]
    ok = isinstance(value, int) and not isinstance(value, bool) and value >= lo and (hi is None or value <= hi)
    if not ok:
        valid = f"an integer in {lo}..{hi}" if hi is not None else f"an integer >= {lo}"
        raise ConfigError(f"{key}={value}: must be {valid}")


# a run or suite name is one path component of these characters (no `/`, not `.` or `..`)
SAFE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.,=+@-]*")


def check_paths(cfg: DictConfig) -> None:
    """`run_name` and `suite.name` are single safe path components and `run_dir` lies inside
    `<results_dir>/runs/`: a run (or its failure cleanup) can never touch another run's files or
    anything outside results_dir."""
    for key, value in (("run_name", cfg.run_name), ("suite.name", cfg.suite.name)):
        if not isinstance(value, str) or not SAFE_NAME.fullmatch(value) or value in (".", ".."):
            raise ConfigError(f"{key}={value!r}: must be one path component of letters, digits and "
                              f"_ . , = + @ - (not starting with . or -), e.g. the generated "
                              f"${{model.name}}-${{method.name}}-W..A..G..-${{precision.name}}-s${{seed}}")
    results = str(cfg.results_dir)
    if not results.strip():
        raise ConfigError(f"results_dir={results!r}: must name a directory (default: results)")
    runs = (Path(results) / "runs").resolve()
    run_dir = Path(str(cfg.run_dir)).resolve()
    if runs not in run_dir.parents:
        raise ConfigError(f"run_dir={cfg.run_dir}: must lie inside {Path(results) / 'runs'}/ (valid: "
                          f"the default ${{results_dir}}/runs/${{suite.name}}/${{run_name}})")


def check_config(cfg: DictConfig) -> None:
    check_paths(cfg)
    for b in ("w", "a", "g"):
        _int_in(cfg, f"bits.{b}", 1, 32)
    _int_in(cfg, "data.batch_size", 1)
    _int_in(cfg, "data.eval_batch_size", 1)
    _int_in(cfg, "trainer.max_epochs", 1)
    _int_in(cfg, "seed", 0, 2 ** 32 - 1)  # numpy's and Lightning's seed range
    for key in ("data.train_subset", "data.test_subset"):
        if cfg.data.get(key.split(".")[1]) is not None:
            _int_in(cfg, key, 1)
    subset = cfg.data.get("train_subset")
    if subset is not None and subset < cfg.data.batch_size:
        raise ConfigError(f"data.train_subset={subset}: fewer images than one batch (data.batch_size="
                          f"{cfg.data.batch_size}, full batches only): no training step; valid: >= {cfg.data.batch_size}")
    gc = cfg.get("grad_compression", "none")
    if gc not in ("none", "sketch", "fp16", "powersgd"):
        raise ConfigError(f"grad_compression={gc}: valid: none, sketch, fp16, powersgd")
    if gc != "none" and not str(cfg.trainer.strategy).startswith("ddp"):
        raise ConfigError(f"grad_compression={gc}: compresses DDP gradients; needs trainer=ddp or "
                          f"ddp_multinode (trainer.strategy={cfg.trainer.strategy})")
    if cfg.trainer.get("sync_batchnorm") and cfg.trainer.get("accelerator") in ("cpu", "auto"):
        import torch  # only for this check
        if cfg.trainer.accelerator == "cpu" or not torch.cuda.is_available():
            raise ConfigError(f"trainer.sync_batchnorm=true: SyncBatchNorm needs GPUs (accelerator="
                              f"{cfg.trainer.accelerator}, no CUDA here); set trainer.sync_batchnorm=false")
    root = cfg.data.get("root")
    if root is not None and not Path(str(root)).is_dir():
        raise ConfigError(f"data.root={root}: no such directory (omit it to use <repo>/data)")
    check_checkpoint(cfg)
    if not isinstance(cfg.get("compile", False), bool):
        raise ConfigError(f"compile={cfg.get('compile')}: valid: true, false")
    deploy = cfg.get("deploy")
    if deploy is not None:
        from .deploy.deploy import check as check_deploy
        check_deploy(str(deploy.backend), cfg.method.name, cfg.bits)
        for key in ("deploy.time_samples", "deploy.rounds"):
            _int_in(cfg, key, 1)
        if deploy.get("max_samples") is not None:
            _int_in(cfg, "deploy.max_samples", 1)
    if cfg.precision.name not in choices("precision"):
        raise ConfigError(f"precision.name={cfg.precision.name}: valid: {', '.join(choices('precision'))}")


def check_checkpoint(cfg: DictConfig) -> None:
    """checkpoint.every_n_steps: an integer >= 1 or null; every_minutes: a number > 0 or null;
    resume: auto or never."""
    ck = cfg.get("checkpoint") or {}
    n, m = ck.get("every_n_steps"), ck.get("every_minutes")
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
        raise ConfigError(f"checkpoint.every_n_steps={n}: must be an integer >= 1, or null (off)")
    if m is not None and (isinstance(m, bool) or not isinstance(m, (int, float)) or not m > 0):
        raise ConfigError(f"checkpoint.every_minutes={m}: must be a number > 0, or null (off)")
    if cfg.get("resume", "auto") not in ("auto", "never"):
        raise ConfigError(f"resume={cfg.get('resume')}: valid: auto (continue from this config's newest "
                          "mid-run checkpoint in the run directory), never")


ACCELERATORS = ("cpu", "gpu", "cuda", "auto")


def check_trainer(cfg: DictConfig) -> None:
    """Arguments Lightning's Trainer would reject, said in one line before a directory is made:
    unknown keys (`+trainer.x=1`), an unknown strategy, a GPU accelerator without a GPU."""
    import inspect

    import pytorch_lightning as pl
    import torch
    from pytorch_lightning.strategies import StrategyRegistry
    params = [p for p in inspect.signature(pl.Trainer.__init__).parameters if p != "self"]
    for key in cfg.trainer:
        if key not in params:
            raise ConfigError(f"trainer.{key}={cfg.trainer[key]}: not an argument of Lightning's Trainer; "
                              f"valid: {', '.join(params)}")
    acc = str(cfg.trainer.get("accelerator", "cpu"))
    if acc not in ACCELERATORS:
        raise ConfigError(f"trainer.accelerator={acc}: valid: {', '.join(ACCELERATORS)}")
    if acc in ("gpu", "cuda") and not torch.cuda.is_available():
        raise ConfigError(f"trainer.accelerator={acc}: no CUDA device here (torch.cuda.is_available() is "
                          f"False); valid here: cpu, auto")
    strategy = cfg.trainer.get("strategy", "auto")
    valid = ["auto", *StrategyRegistry.available_strategies()]
    if isinstance(strategy, str) and strategy not in valid:
        raise ConfigError(f"trainer.strategy={strategy}: valid: {', '.join(valid)}")
