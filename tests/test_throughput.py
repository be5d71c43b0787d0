"""The throughput meter (callbacks/throughput.py) and the compression clock (MethodHooks).

Unit tests drive the callbacks' hooks in Lightning's order with a fake clock (time.perf_counter
monkeypatched), so every figure is exact; one real Trainer fit checks the wiring."""
from __future__ import annotations

import time
from types import SimpleNamespace

import pytest
import torch

from lightning_modules.callbacks.method_hooks import MethodHooks
from lightning_modules.callbacks.throughput import ThroughputMeter
from lightning_modules.compression.method import Method

CPU = SimpleNamespace(device=torch.device("cpu"))


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def spend(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock(monkeypatch):
    c = FakeClock()
    monkeypatch.setattr(time, "perf_counter", c)
    return c


def batch(n: int = 4):
    return torch.zeros(n, 1), torch.zeros(n, dtype=torch.long)


def train_epoch(meter, trainer, clock, durations, n=4):
    meter.on_train_epoch_start(trainer, CPU)
    for i, d in enumerate(durations):
        clock.spend(d)
        meter.on_train_batch_end(trainer, CPU, None, batch(n), i)


def test_warmup_batches_are_excluded_once_per_run(clock):
    meter, trainer = ThroughputMeter(warmup_steps=2), SimpleNamespace(callbacks=[], world_size=1)
    train_epoch(meter, trainer, clock, [10.0, 5.0, 1.0, 2.0, 3.0])
    assert (meter.train.steady_batches, meter.train.steady_s) == (3, 6.0)  # batches 3..5 only
    # the warm-up is the run's first batches, not each epoch's: the second epoch is all steady
    clock.spend(100.0)  # between epochs (validation, checkpoint): not in any interval
    train_epoch(meter, trainer, clock, [4.0, 4.0])
    s = meter.summary()
    assert (meter.train.steady_batches, meter.train.steady_s) == (5, 14.0)
    assert s["train_it_s"] == pytest.approx(5 / 14.0) and s["train_samples_s"] == pytest.approx(20 / 14.0)
    assert s["train_steady"] is True


def test_too_few_batches_is_not_steady_and_each_loop_has_its_own_flag(clock):
    meter, trainer = ThroughputMeter(warmup_steps=5), SimpleNamespace(callbacks=[], world_size=1)
    train_epoch(meter, trainer, clock, [1.0] * 8)
    meter.on_test_epoch_start(trainer, CPU)
    for i, d in enumerate([3.0, 1.0]):  # 2 test batches < 5 warm-up batches: all used, flagged
        clock.spend(d)
        meter.on_test_batch_end(trainer, CPU, None, batch(10), i)
    s = meter.fields(trainer)
    assert s["train_steady"] is True and s["test_steady"] is False and s["throughput_steady"] is False
    assert s["test_it_s"] == pytest.approx(2 / 4.0) and s["test_samples_s"] == pytest.approx(20 / 4.0)
    assert s["train_it_s"] == pytest.approx(1.0)


def test_validation_inside_an_epoch_is_excluded(clock):
    meter, trainer = ThroughputMeter(warmup_steps=0), SimpleNamespace(callbacks=[], world_size=1)
    train_epoch(meter, trainer, clock, [1.0, 1.0])
    clock.spend(50.0)  # validation (val_check_interval < 1) ...
    meter.on_validation_end(trainer, CPU)
    clock.spend(2.0)  # ... then the next batch, its loading included
    meter.on_train_batch_end(trainer, CPU, None, batch(), 2)
    assert (meter.train.steady_batches, meter.train.steady_s) == (3, 4.0)


class SlowMethod(Method):
    """One-off work of known length: `work[(interval, t)]` seconds on the fake clock."""

    def __init__(self, clock, work: dict, finalize_s: float = 0.0):
        super().__init__("slow")
        self.clock, self.work, self.finalize_s = clock, work, finalize_s

    def on_time(self, model, t, interval):
        s = self.work.get((interval, t), 0.0)
        self.clock.spend(s)
        return s > 0

    def finalize(self, model):
        self.clock.spend(self.finalize_s)
        return model


@pytest.mark.parametrize("meter_first", [True, False])
def test_compression_work_is_timed_apart_and_excluded(clock, meter_first):
    method = SlowMethod(clock, {("epoch", 0): 5.0, ("step", 1): 7.0, ("step", 3): 11.0}, finalize_s=13.0)
    hooks, meter = MethodHooks(method), ThroughputMeter(warmup_steps=1)
    order = [meter, hooks] if meter_first else [hooks, meter]  # Lightning calls them in list order
    trainer = SimpleNamespace(callbacks=order, world_size=1, current_epoch=0, global_step=0)
    module = SimpleNamespace(device=torch.device("cpu"), net=torch.nn.Linear(1, 1))
    for cb in order:
        cb.on_train_epoch_start(trainer, module)
    for step in range(4):
        trainer.global_step = step
        hooks.on_train_batch_start(trainer, module, batch(), step)
        clock.spend(1.0 + step)  # loading + forward/backward: 1, 2, 3, 4 s
        meter.on_train_batch_end(trainer, module, None, batch(), step)
    hooks.finalize(module)
    assert meter.train.all_s == 10.0 and meter.train.steady_s == 9.0  # training only, batches 2..4
    assert hooks.fields(trainer) == {"compression_s": 5.0 + 7.0 + 11.0 + 13.0}


def test_samples_per_second_counts_every_ddp_rank(clock):
    meter = ThroughputMeter(warmup_steps=0)
    trainer = SimpleNamespace(callbacks=[], world_size=3)
    train_epoch(meter, trainer, clock, [2.0, 2.0], n=8)  # this rank: 16 samples in 4 s
    s = meter.fields(trainer)
    assert s["train_it_s"] == pytest.approx(0.5)  # steps/s: the ranks step together
    assert s["train_samples_s"] == pytest.approx(3 * 16 / 4.0)  # 3 ranks x 4 samples/s


class SleepyMethod(Method):
    def __init__(self, sleep_s: float):
        super().__init__("sleepy")
        self.sleep_s, self.slept = sleep_s, []

    def on_time(self, model, t, interval):
        if interval == "step" and t == 4:  # inside the steady part (warm-up: 2 batches)
            time.sleep(self.sleep_s)
            self.slept.append(t)
            return True
        return False

    def finalize(self, model):
        time.sleep(self.sleep_s)
        return model


@pytest.mark.slow
def test_a_real_fit_keeps_the_methods_work_out_of_the_training_clock():
    import pytorch_lightning as pl

    from datamodules.tensor_loader import TensorLoader
    from lightning_modules.module import CompressionModule

    sleep = 0.5
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(320, 8, generator=g), torch.randint(0, 4, (320,), generator=g)
    module = CompressionModule(net=torch.nn.Linear(8, 4), method=SleepyMethod(sleep), num_classes=4,
                               optimizer=lambda params: torch.optim.SGD(params, lr=0.1))
    meter = ThroughputMeter(warmup_steps=2)
    trainer = pl.Trainer(accelerator="cpu", max_epochs=1, callbacks=[meter], logger=False,
                         enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0)
    trainer.fit(module, train_dataloaders=TensorLoader(x, y, 32, shuffle=True, drop_last=True))
    module.hooks.finalize(module)
    trainer.test(module, dataloaders=TensorLoader(x, y, 32), verbose=False)
    assert module.method.slept == [4]
    # the same MethodHooks through fit and test: its total reaches the record
    assert [cb for cb in trainer.callbacks if isinstance(cb, MethodHooks)] == [module.hooks]
    assert module.hooks.fields(trainer)["compression_s"] >= 2 * sleep
    # 8 steady steps of a linear layer take milliseconds; with the sleep they would take > 0.5 s
    assert meter.train.steady_batches == 8 and meter.train.steady_s < sleep
    assert meter.fields(trainer)["train_steady"] and meter.fields(trainer)["test_steady"]
