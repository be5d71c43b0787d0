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

from .callbacks import resume
from .callbacks.resume import ResumeCheckpoint
from .config_check import ConfigError, check_config, check_trainer
from .earlier_runs import resolve_references
from .loggers import quiet
from .module import CompressionModule
from .precision import precision_plugin
from .profiler import NoProfiler
from .record import config_hash
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
    module = CompressionModule(
        net=build_net(cfg, dm), method=build_method(cfg, shape), num_classes=dm.num_classes,
        optimizer=instantiate(cfg.optimizer),
        scheduler=instantiate(sched.factory) if sched.factory is not None else None,
        scheduler_interval=sched.interval)
    if cfg.compile:  # the quantized layers' forward compiled in place (state dict unchanged)
        from .compression.quantization.qlayers import compile_quantized
        compile_quantized(module.net)
    return module


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
    every = cfg.checkpoint
    if module.method.trains:  # saves when due; its state is in every checkpoint (SLURM's too)
        callbacks.append(ResumeCheckpoint(run_dir, config_hash(cfg), every.every_n_steps, every.every_minutes))
    # the harness saves last.ckpt itself; Lightning's checkpointing only for a user's ModelCheckpoint
    checkpointing = any(isinstance(c, ModelCheckpoint) for c in callbacks)
    if kw.get("profiler") is None:
        kw["profiler"] = NoProfiler()
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
    if not module.method.trains:
        check_calibration(cfg, dm)

    log.info("precision %s", cfg.precision.name)
    log.info("run dir   %s", cfg.run_dir)
    trainer = build_trainer(cfg, recorder.make_dir(), module)
    with recorder.guard(trainer, dm, module):
        if module.method.trains:
            fit(cfg, trainer, module, dm, recorder)
        else:
            log.info("calibrate %s batches (seed %s), no training", cfg.method.calibration_batches,
                     cfg.method.calibration_seed)
            device = trainer.strategy.root_device  # calibrate where the run would have trained
            batches = [tuple(t.to(device) for t in b) for b in calibration_batches(cfg, dm)]
            module.net = module.method.calibrate(module.net.to(device), batches)
            recorder.record.update({k: int(cfg.method[k]) for k in ("calibration_batches", "calibration_seed")})
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
    record = recorder.write(trainer)
    if trainer.is_global_zero:
        resume.clean(recorder.dir)  # finished: its mid-run checkpoints are spent
    return record


def fit(cfg: DictConfig, trainer: pl.Trainer, module: CompressionModule, dm, recorder: Recorder) -> None:
    """Lightning's fit, continued from the run directory's newest valid mid-run checkpoint of this
    config when `resume=auto` (callbacks/resume.py); the record says from which step."""
    start = resume.find(recorder.dir, config_hash(cfg)) if cfg.resume == "auto" else None
    recorder.record["resumed_from_step"] = start.step if start else None
    if start:
        log.info("resume    from %s (step %d)", start.path.name, start.step)
    log.info("fit       %s epochs", cfg.trainer.max_epochs)
    trainer.fit(module, datamodule=dm, ckpt_path=start.path if start else None, weights_only=True)
    if trainer.is_global_zero:
        resume.drop_slurm(recorder.dir)
    trainer.strategy.barrier("resume.drop_slurm")


def check_calibration(cfg: DictConfig, dm) -> None:
    """A post-training method's calibration batches: 1..(full training batches of the split)."""
    n, have = cfg.method.get("calibration_batches"), len(dm.train_dataloader())
    ok = isinstance(n, int) and not isinstance(n, bool) and 1 <= n <= have
    if not ok:
        raise ConfigError(f"method.calibration_batches={n}: must be an integer in 1..{have} (full batches "
                          f"of data.batch_size={cfg.data.batch_size} in the training split)")


def calibration_batches(cfg: DictConfig, dm) -> list:
    """The first `method.calibration_batches` training batches in an order drawn with
    `method.calibration_seed` (the loader's shuffle seed where it has one, else torch's)."""
    loader = dm.train_dataloader()
    if hasattr(loader, "seed"):  # TensorLoader: its order is a function of its seed
        loader.seed = int(cfg.method.calibration_seed)
    torch.manual_seed(int(cfg.method.calibration_seed))
    out = []
    for batch in loader:
        out.append(batch)
        if len(out) == cfg.method.calibration_batches:
            break
    return out


def deploy_run(cfg: DictConfig, dm, module: CompressionModule, model_file: Path) -> dict:
    """The deploy step (deploy/deploy.py) on the net reloaded from the exported file (by a fresh
    method object, as a later run would load it) against the architecture built in FP32."""
    from .deploy.deploy import deploy
    from .earlier_runs import load_weights, run_method
    log.info("deploy    %s", cfg.deploy.backend)
    reloaded = load_weights(run_method(cfg.method), build_net(cfg, dm), model_file)
    return deploy(cfg.deploy, module.net, reloaded, build_net(cfg, dm), dm, model_file, model_file.parent)
