"""One run: `python train.py model=lenet5 method=fp32 precision=16-mixed data=fashion_mnist`.

A Hydra app (conf/config.yaml); any key can be overridden, `-m` sweeps. Bad input is said in one
line (key, value, what is valid) with exit status 2, before anything is written. In a sweep a
failed run does not stop the others; the sweep lists the failures and exits 1
(lightning_modules/sweep.py).
"""
from __future__ import annotations

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from lightning_modules.config_check import GROUPS, ConfigError, check_config, check_overrides, normalize_overrides

CONF = Path(__file__).resolve().parent / "conf"


def _fail(msg: str) -> None:
    print(f"error: {msg}", file=sys.stderr)
    sys.exit(2)


def precheck(argv: list[str]) -> None:
    """Unknown group choices and unknown keys, before Hydra prints its multi-line errors."""
    multirun = any(a in ("-m", "--multirun") for a in argv)
    overrides = [a for a in argv if "=" in a and not a.startswith("-")]
    check_overrides(overrides, multirun=multirun)
    if multirun:
        return
    from hydra import compose, initialize_config_dir

    groups = [o for o in overrides if o.partition("=")[0].lstrip("+~") in GROUPS]
    keys = [o for o in overrides if o not in groups and not o.startswith(("hydra.", "hydra/", "+", "~"))]
    with initialize_config_dir(str(CONF), version_base="1.3"):
        base = compose("config", overrides=groups)
        for o in keys:
            key, _, value = o.partition("=")
            parent, _, leaf = key.rpartition(".")
            node = OmegaConf.select(base, parent) if parent else base
            if not isinstance(node, DictConfig) or leaf not in node:
                valid = ", ".join(node.keys()) if isinstance(node, DictConfig) else "(none)"
                hint = " (the wandb keys come with logger=wandb)" if key.startswith("wandb.") else ""
                raise ConfigError(f"{key}={value}: unknown key; valid keys under "
                                  f"{parent or 'the top level'}: {valid}{hint}")
        try:
            cfg = compose("config", overrides=overrides)
        except Exception as e:  # anything else Hydra rejects: its first line
            raise ConfigError(str(e).strip().splitlines()[0]) from None
    check_config(cfg)  # value ranges and paths, before torch is even imported


@hydra.main(config_path="conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from datamodules.fashion_mnist import DataError
    from lightning_modules import sweep
    from lightning_modules.run import run

    if HydraConfig.get().mode == RunMode.MULTIRUN:
        sweep.job(cfg, run)
        return
    from lightning_modules.recorder import interrupted_by
    try:
        run(cfg)
    except (ConfigError, DataError) as e:
        _fail(str(e))
    except (SystemExit, KeyboardInterrupt) as e:
        # Lightning's SIGTERM exception is a SystemExit without a code (exit 0): the record says
        # `interrupted` and the exit status says so too, 128 + the signal's number
        signal = interrupted_by(e)
        if signal is None:
            raise
        print(f"interrupted: {signal}; {cfg.run_dir}/record.json says status interrupted", file=sys.stderr)
        sys.exit(143 if signal == "SIGTERM" else 130)


if __name__ == "__main__":
    import os
    # two sweeps started in the same second get two sweep folders (conf/config.yaml's
    # hydra.sweep.dir); a sweep's jobs inherit the id of the process that launched them
    os.environ.setdefault("LWB_SWEEP_ID", str(os.getpid()))
    if any(a in ("-m", "--multirun") for a in sys.argv[1:]) and "LWB_SWEPT" not in os.environ:
        # the keys this sweep varies (a,b / range() / choice() / glob()): jobs name their runs by them
        os.environ["LWB_SWEPT"] = ",".join(
            a.partition("=")[0].lstrip("+~") for a in sys.argv[1:] if "=" in a and not a.startswith("-")
            and ("," in a.partition("=")[2].strip("[]") and not a.partition("=")[2].startswith("[")
                 or a.partition("=")[2].startswith(("range(", "choice(", "glob("))))
    sys.argv[1:] = normalize_overrides(sys.argv[1:])
    try:
        precheck(sys.argv[1:])
    except ConfigError as e:
        _fail(str(e))
    main()
    from lightning_modules.sweep import failures

    sys.exit(1 if failures() else 0)
