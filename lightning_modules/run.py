"""One run, in a visible order: data, model, method, module, trainer, fit, test, export, record.

`run(cfg)` is what train.py calls; it returns the record (also written to
`<run_dir>/record.json`). Bad input raises ConfigError/DataError before anything is written.
"""
from __future__ import annotations

import copy
import logging
import math
import shutil
import time
from datetime import datetime, timezone
from pathlib import Path

import pytorch_lightning as pl
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from .callbacks.grad_compression import GradCompression
from .callbacks.throughput import ThroughputMeter
from .compression.cost import cost, uniform_bits
from .compression.prune import nonzero_params
from .config_check import ConfigError, check_config
from .earlier_runs import resolve_references
from .loggers import finish
from .module import CompressionModule
from .precision import loss_scale, precision_plugin
from .record import RECORD_KEYS, config_hash, git_sha, hardware, write_json_atomic

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
    sched = cfg.scheduler
    shape = (dm.in_channels, dm.image_size, dm.num_classes)
    return CompressionModule(
        net=build_net(cfg, dm), method=build_method(cfg, shape), num_classes=dm.num_classes,
        optimizer=instantiate(cfg.optimizer),
        scheduler=instantiate(sched.factory) if sched.factory is not None else None,
        scheduler_interval=sched.interval)


def count_flops(net: torch.nn.Module, dm) -> int:
    """Forward FLOPs of one sample at the run's input size (torch.utils.flop_counter; a
    multiply-add counts 2), counted on a CPU copy so the trained net is untouched."""
    from torch.utils.flop_counter import FlopCounterMode
    net = copy.deepcopy(net).cpu().float().eval()
    x = torch.zeros(1, dm.in_channels, dm.image_size, dm.image_size)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        net(x)
    return int(counter.get_total_flops())


def _size(path: Path) -> int:
    return path.stat().st_size


def run(cfg: DictConfig) -> dict:
    started, t_start = datetime.now(timezone.utc).isoformat(timespec="seconds"), time.perf_counter()
    check_config(cfg)
    run_dir = Path(cfg.run_dir)
    pl.seed_everything(cfg.seed, workers=True, verbose=False)

    log.info("data      %s (root=%s)", cfg.data._target_, cfg.data.root)
    dm = build_datamodule(cfg)
    dm.prepare_data()
    dm.setup("fit")  # bad or missing data fails here, before anything is written

    log.info("model     %s -> method %s, bits W%sA%sG%s", cfg.model.name, cfg.method.name,
             cfg.bits.w, cfg.bits.a, cfg.bits.g)
    module = build_module(cfg, dm)
    params = sum(p.numel() for p in module.net.parameters())

    log.info("precision %s", cfg.precision.name)
    trainer_kw = OmegaConf.to_container(cfg.trainer, resolve=True)
    accelerator = trainer_kw.get("accelerator", "cpu")
    if accelerator == "auto":
        accelerator = "gpu" if torch.cuda.is_available() else "cpu"
    plugin = precision_plugin(cfg.precision.name, accelerator)
    meter = ThroughputMeter(cfg.measure.warmup_steps)
    # DDP gradient compression (trainer=ddp*): a comm hook that also counts the bytes sent
    comm = [GradCompression(trainer_kw.pop("grad_compression"))] if "grad_compression" in trainer_kw else []

    log.info("run dir   %s", run_dir)
    # the highest folder this run creates: removed again if the config turns out to be bad
    created = next((d for d in reversed([run_dir, *run_dir.parents]) if not d.exists()), None)
    run_dir.mkdir(parents=True, exist_ok=True)
    logger = instantiate(cfg.logger)
    if hasattr(logger, "log_hyperparams"):
        logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
    trainer = pl.Trainer(**trainer_kw, plugins=[plugin], logger=logger, callbacks=[meter, *comm],
                         enable_checkpointing=False, default_root_dir=str(run_dir))
    record = {"suite": cfg.suite.name, "run_name": cfg.run_name, "config_hash": config_hash(cfg),
              "model": cfg.model.name, "method": cfg.method.name,
              "method_label": cfg.method.get("label"),
              "bits": {k: int(cfg.bits[k]) for k in ("w", "a", "g")},
              "precision": cfg.precision.name, "dataset": dm.name,
              "epochs": int(cfg.trainer.max_epochs), "batch_size": int(cfg.data.batch_size),
              "seed": int(cfg.seed), "status": "running", "params": params, "started_at": started,
              "git_sha": git_sha(), "hardware": hardware(), "torch_version": torch.__version__}
    try:
        log.info("fit       %s epochs", cfg.trainer.max_epochs)
        trainer.fit(module, datamodule=dm)
        diverged = module.diverged
        # the trained structure made physical (filter pruning drops masked channels) on every rank
        module.net = module.method.finalize(module.net)
        if not diverged:
            log.info("test      official test set")
            trainer.test(module, datamodule=dm, verbose=False)
        ckpt = run_dir / "last.ckpt"
        # the full checkpoint (optimizer state included), what the documents measured; collective
        trainer.save_checkpoint(ckpt, weights_only=False)
        metrics = trainer.callback_metrics
        model_file = run_dir / "model.pt"
        if trainer.is_global_zero:
            module.method.export(module.net, model_file)
        record.update(meter.summary(trainer.world_size))
        for c in comm:
            record.update(c.summary())
        record.update({
            "status": "diverged" if diverged else "ok",
            "top1": None if diverged else float(metrics["test/top1"]),
            "top5": None if diverged else float(metrics["test/top5"]),
            "test_samples": None if diverged else int(module.test_samples),
            "footprint_bytes": _size(model_file) if trainer.is_global_zero else None,
            "checkpoint_bytes": _size(ckpt) if trainer.is_global_zero else None,
            "model_file": str(model_file), "checkpoint_file": str(ckpt),
            "params": sum(p.numel() for p in module.net.parameters()),
            "nonzero_params": nonzero_params(module.net),
            "flops": count_flops(module.net, dm),
            "layers": module.method.report(module.net),
            "compute_dtype": module.compute_dtype, "loss_scale": loss_scale(plugin),
            "world_size": trainer.world_size,
        })
        # BOPs of the layers with quantized weights and inputs, FLOPs + BOPs/64 (compression/cost.py)
        costs = cost(module.net, (dm.in_channels, dm.image_size, dm.image_size),
                     uniform_bits(module.net, getattr(module.method, "bits", None)), record["flops"])
        record.update(bops=costs["bops"], flops_effective=costs["flops_effective"])
    except ConfigError:
        # a config the method rejects once training starts (e.g. a schedule longer than the run):
        # bad input, so nothing is left behind
        if created is not None and trainer.is_global_zero:
            shutil.rmtree(created, ignore_errors=True)
        raise
    except BaseException as e:
        record.update({"status": "failed", "error": f"{type(e).__name__}: {e}".splitlines()[0]})
        if trainer.is_global_zero:
            record["wall_s"] = time.perf_counter() - t_start
            # the record and nothing else: no half-written model file or checkpoint left beside it
            for p in run_dir.iterdir():
                shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
            write_json_atomic(run_dir / "record.json", _ordered(record))
            finish(trainer.loggers, _ordered(record), exit_code=1)
        raise
    record["wall_s"] = time.perf_counter() - t_start
    record = _ordered(record)
    if trainer.is_global_zero:
        write_json_atomic(run_dir / "record.json", record)
        finish(trainer.loggers, record)
        log.info("record    %s (top1=%s, train %.1f it/s, test %.1f it/s, footprint %s B)",
                 run_dir / "record.json", record["top1"], record["train_it_s"] or math.nan,
                 record["test_it_s"] or math.nan, record["footprint_bytes"])
    return record


def _ordered(record: dict) -> dict:
    """The contract's keys first, in the documented order; extras after."""
    out = {k: record.get(k) for k in RECORD_KEYS}
    out.update({k: v for k, v in record.items() if k not in out})
    return out
