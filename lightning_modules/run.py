"""One run, in a visible order: data, model, method, trainer, fit, test, export, record.

`run(cfg)` is what train.py calls; it returns the record (also written to
`<run_dir>/record.json` by lightning_modules/recorder.py). Bad input raises ConfigError/DataError
before anything is written.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

import pytorch_lightning as pl
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import ModelCheckpoint

from .config_check import ConfigError, check_config, check_trainer
from .earlier_runs import resolve_references
from .loggers import quiet
from .module import CompressionModule
from .precision import precision_plugin
from .recorder import Recorder

log = logging.getLogger("harness")


def build_datamodule(cfg: DictConfig) -> pl.LightningDataModule:
    return instantiate(cfg.data, _convert_="all")


def build_net(cfg: DictConfig, dm) -> torch.nn.Module:
    return instantiate(cfg.model.net, in_channels=dm.in_channels, image_size=dm.image_size,
                       num_classes=dm.num_classes, _convert_="all")


def build_method(cfg: DictConfig, shape: tuple[int, int, int] | None = None):
    """The method object, its earlier-run references (teacher, start_from, init_from) built first
    (earlier_runs.py; `shape` = this run's (C, H, classes)); a ConfigError it raises (bad bits for
    it) reaches the user as is."""
    method = OmegaConf.to_container(cfg.method, resolve=True)
    method.pop("label", None)
    method = resolve_references(method, cfg.results_dir, cfg.suite.name, shape)
    try:
        return instantiate(method, _convert_="all")
    except InstantiationException as e:
        if isinstance(e.__cause__, ConfigError):
            raise e.__cause__ from None
        raise


def build_module(cfg: DictConfig, dm) -> CompressionModule:
    """The one LightningModule: the net, the method applied to it (its hooks come with it as the
    MethodHooks callback, module.configure_callbacks), optimizer and scheduler factories."""
    sched = cfg.scheduler
    shape = (dm.in_channels, dm.image_size, dm.num_classes)
    return CompressionModule(
        net=build_net(cfg, dm), method=build_method(cfg, shape), num_classes=dm.num_classes,
        optimizer=instantiate(cfg.optimizer),
        scheduler=instantiate(sched.factory) if sched.factory is not None else None,
        scheduler_interval=sched.interval)


def build_trainer(cfg: DictConfig, run_dir: Path, module: CompressionModule) -> pl.Trainer:
    """Lightning's Trainer: conf/trainer/ keys, the precision plugin, the logger, the callbacks of
    conf/callbacks/ (the harness's own in default.yaml, and any a user adds)."""
    kw = OmegaConf.to_container(cfg.trainer, resolve=True)
    accelerator = kw.get("accelerator", "cpu")
    if accelerator == "auto":
        accelerator = "gpu" if torch.cuda.is_available() else "cpu"
    logger = instantiate(cfg.logger)
    if hasattr(logger, "log_hyperparams"):
        logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
    callbacks = [instantiate(c) for c in cfg.callbacks.values()]  # + MethodHooks, from the module
    # the harness saves last.ckpt itself; Lightning's checkpointing only for a user's ModelCheckpoint
    checkpointing = any(isinstance(c, ModelCheckpoint) for c in callbacks)
    return pl.Trainer(**kw, plugins=[precision_plugin(cfg.precision.name, accelerator)], logger=logger,
                      callbacks=callbacks, enable_checkpointing=checkpointing, default_root_dir=str(run_dir))


def run(cfg: DictConfig) -> dict:
    """The README's one run; returns its record."""
    quiet()  # Lightning's device lines and advertisements, torch's LeafSpec warning (loggers.py)
    recorder = Recorder(cfg)  # started_at, wall_s
    check_config(cfg)
    check_trainer(cfg)
    pl.seed_everything(cfg.seed, workers=True, verbose=False)

    log.info("data      %s (root=%s)", cfg.data._target_, cfg.data.root)
    dm = build_datamodule(cfg)
    dm.prepare_data()
    dm.setup("fit")  # bad or missing data fails here, before anything is written

    log.info("model     %s -> method %s, bits W%sA%sG%s", cfg.model.name, cfg.method.name,
             cfg.bits.w, cfg.bits.a, cfg.bits.g)
    module = build_module(cfg, dm)

    log.info("precision %s", cfg.precision.name)
    log.info("run dir   %s", cfg.run_dir)
    trainer = build_trainer(cfg, recorder.make_dir(), module)
    with recorder.guard(trainer, dm, module):
        log.info("fit       %s epochs", cfg.trainer.max_epochs)
        trainer.fit(module, datamodule=dm)
        # the trained structure made physical (filter pruning drops masked channels) on every rank;
        # timed into the record's compression_s, outside the throughput clocks
        module.hooks.finalize(module)
        if not module.diverged:
            log.info("test      official test set")
            trainer.test(module, datamodule=dm, verbose=False)
        # the full checkpoint (optimizer state included), what the documents measured; collective.
        # Written beside, then renamed: a kill leaves the earlier checkpoint or the new one whole
        partial = recorder.checkpoint_file.with_name(f".{recorder.checkpoint_file.name}.partial")
        trainer.save_checkpoint(partial, weights_only=False)
        if trainer.is_global_zero:
            os.replace(partial, recorder.checkpoint_file)
        if trainer.is_global_zero:
            module.method.export(module.net, recorder.model_file)
        recorder.measure(trainer, module, dm)  # accuracy, sizes, throughput, FLOPs/BOPs
        if trainer.is_global_zero and not module.diverged and cfg.deploy.backend != "none":
            recorder.record.update(deploy_run(cfg, dm, module, recorder.model_file))
    return recorder.write(trainer)


def deploy_run(cfg: DictConfig, dm, module: CompressionModule, model_file: Path) -> dict:
    """The deploy step (deploy/deploy.py) on the net reloaded from the exported file (by a fresh
    method object, as a later run would load it) against the architecture built in FP32."""
    from .deploy.deploy import deploy
    from .earlier_runs import load_weights, run_method
    log.info("deploy    %s", cfg.deploy.backend)
    reloaded = load_weights(run_method(cfg.method), build_net(cfg, dm), model_file)
    return deploy(cfg.deploy, module.net, reloaded, build_net(cfg, dm), dm, model_file, model_file.parent)
