"""Issue 18: what the harness adds per step and what a record measures besides throughput.

Model-only step time (callbacks/step_time.py) against the loop's (callbacks/throughput.py), peak
memory (callbacks/memory.py), the divergence check every log_every_n_steps steps (module.py), the
NVML probe (throughput.nvml_check_off) and the overhead benchmark. Time is asserted only through
sleeps of known length (lower bounds, relations that hold by construction), never as a speed."""
from __future__ import annotations

import inspect
import math
import os
import sys
import time
from types import SimpleNamespace

import pytest
import pytorch_lightning as pl
import torch

from datamodules.tensor_loader import TensorLoader
from lightning_modules.callbacks import throughput
from lightning_modules.callbacks.memory import PeakMemory
from lightning_modules.callbacks.step_time import StepTime
from lightning_modules.callbacks.throughput import ThroughputMeter
from lightning_modules.compression.method import Method
from lightning_modules.module import CompressionModule
from tests.conftest import FAST, only_record, train


def data(n=320, features=8, classes=4):
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, features, generator=g), torch.randint(0, classes, (n,), generator=g)


def module(net, method=None, classes=4):
    return CompressionModule(net=net, method=method or Method(), num_classes=classes,
                             optimizer=lambda params: torch.optim.SGD(params, lr=0.1))


def trainer(callbacks=(), **kw):
    return pl.Trainer(accelerator="cpu", max_epochs=1, callbacks=list(callbacks), logger=False,
                      enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                      num_sanity_val_steps=0, limit_val_batches=0, **kw)


class SlowLoader(TensorLoader):
    """Each batch takes `sleep` s to load: loop time, never model time."""

    def __init__(self, *a, sleep: float, **kw):
        super().__init__(*a, **kw)
        self.sleep = sleep

    def __iter__(self):
        for batch in super().__iter__():
            time.sleep(self.sleep)
            yield batch


class SlowStep(Method):
    """`after_step` (inside the model step) sleeps `sleep` s."""

    def __init__(self, sleep: float):
        super().__init__("slowstep")
        self.sleep = sleep

    def after_step(self, model, lr):
        time.sleep(self.sleep)


class SlowBetween(pl.Callback):
    """Sleeps between backward's end and the optimizer (Lightning's closure machinery's place)."""

    def __init__(self, sleep: float):
        self.sleep = sleep

    def on_after_backward(self, trainer, pl_module):
        time.sleep(self.sleep)


def test_model_step_time_is_forward_backward_optimizer_not_loading_nor_the_loop_between():
    load, step, between = 0.05, 0.02, 0.03
    x, y = data()
    meter = ThroughputMeter(warmup_steps=2)  # drives StepTime and PeakMemory
    m = module(torch.nn.Linear(8, 4), SlowStep(step))
    t = trainer(callbacks=[meter, SlowBetween(between)])  # called after the meter's span closed
    t.fit(m, train_dataloaders=SlowLoader(x, y, 32, shuffle=True, sleep=load))
    f = meter.fields(t)
    model_ms, loop_ms = f["model_step_ms"], f["loop_step_ms"]
    st = next(p for p in meter.parts if isinstance(p, StepTime))
    assert len(st.ms) == 10 - 2 and len(meter.train.steady_dts) == 10 - 2  # same warm-up, same steps
    assert model_ms >= 1000 * step  # the method's after_step runs inside the bracket
    # every step's loop interval holds its model step, the batch's loading and the time between
    # backward and the optimizer, so the medians too
    assert loop_ms >= model_ms + 1000 * (load + between)
    assert not m._forward_pre_hooks  # the hooks are removed after fit: test/eval is not timed


def test_loop_step_ms_is_the_median_steady_interval(monkeypatch):
    now = [0.0]
    monkeypatch.setattr(time, "perf_counter", lambda: now[0])
    meter = ThroughputMeter(warmup_steps=1)
    cpu, fake = SimpleNamespace(device=torch.device("cpu")), SimpleNamespace(callbacks=[], world_size=1)
    meter.on_train_epoch_start(fake, cpu)
    for i, d in enumerate([9.0, 1.0, 3.0, 2.0]):  # the first is warm-up
        now[0] += d
        meter.on_train_batch_end(fake, cpu, None, data(4), i)
    assert meter.summary()["loop_step_ms"] == pytest.approx(2000.0)


class NaNFrom(Method):
    """A non-finite loss from training step `start` on (0-based)."""

    def __init__(self, start: int):
        super().__init__("nanfrom")
        self.start, self.step = start, 0

    def loss(self, logits, target, batch):
        self.step += 1
        loss = torch.nn.functional.cross_entropy(logits, target)
        return loss * math.nan if self.step > self.start else loss


@pytest.mark.parametrize("start, steps_run", [(3, 5), (11, 12)])
def test_a_nan_stops_the_run_at_the_next_check_or_at_the_end(start, steps_run):
    """Checks every 5 steps: a NaN at step 4 stops after step 5; a NaN at step 12 (after the last
    check, step 10) is still found when training ends."""
    x, y = data(12 * 8)
    m = module(torch.nn.Linear(8, 4), NaNFrom(start))
    t = trainer(log_every_n_steps=5)
    t.fit(m, train_dataloaders=TensorLoader(x, y, 8, shuffle=True))
    assert m.diverged and t.global_step == steps_run


def test_a_finite_run_does_not_diverge():
    x, y = data(12 * 8)
    m = module(torch.nn.Linear(8, 4))
    t = trainer(log_every_n_steps=5)
    t.fit(m, train_dataloaders=TensorLoader(x, y, 8, shuffle=True))
    assert not m.diverged and t.global_step == 12


def peaks(hidden: int, batch: int) -> PeakMemory:
    x, y = data(batch * 3, features=8)
    net = torch.nn.Sequential(torch.nn.Linear(8, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, 4))
    mem = PeakMemory()
    t = trainer(callbacks=[mem])
    m = module(net)
    t.fit(m, train_dataloaders=TensorLoader(x, y, batch))
    t.test(m, dataloaders=TensorLoader(x, y, batch), verbose=False)
    return mem


def peak_fields(hidden: int, batch: int) -> dict:
    """`peaks`' record fields, measured in a fresh process (as a run is: train.py's own)."""
    return peaks(hidden, batch).fields(None)


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="VmHWM reset: Linux /proc")
def test_peak_memory_grows_with_the_activations():
    import multiprocessing
    batch, hidden = 128, 100_000
    # each in its own process: a test worker that ran other tests keeps their freed pages
    # resident (the allocator's), where the activation fits without raising the peak
    with multiprocessing.get_context("spawn").Pool(1, maxtasksperchild=1) as pool:
        small, big = pool.starmap(peak_fields, [(16, batch), (hidden, batch)])
    act = batch * hidden * 4  # one float32 hidden activation, kept for backward: 51 MB
    assert big["mem_measure"] == "cpu_peak_rss" and small["mem_measure"] == "cpu_peak_rss"
    # the whole process's peak RSS (torch's allocator may reuse pages it already holds): half of
    # the activation is the bound
    assert big["peak_train_mem_bytes"] - small["peak_train_mem_bytes"] >= act // 2
    assert big["peak_test_mem_bytes"] - small["peak_test_mem_bytes"] >= act // 2  # the test forward holds it too
    assert small["peak_train_mem_bytes"] > 0 and small["peak_test_mem_bytes"] > 0


def test_nvml_check_is_unset_only_where_nvml_cannot_load(monkeypatch):
    def missing(name):
        raise OSError(name)
    monkeypatch.setenv("PYTORCH_NVML_BASED_CUDA_CHECK", "1")
    monkeypatch.setattr(throughput.ctypes, "CDLL", lambda name: object())  # a driver is there
    assert throughput.nvml_check_off() is False and os.environ["PYTORCH_NVML_BASED_CUDA_CHECK"] == "1"
    monkeypatch.setattr(throughput.ctypes, "CDLL", missing)
    assert throughput.nvml_check_off() is True and "PYTORCH_NVML_BASED_CUDA_CHECK" not in os.environ


@pytest.mark.slow
def test_a_run_records_step_times_and_peak_memory(tmp_path):
    p = train([*FAST], tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    rec = only_record(tmp_path)
    assert 0 < rec["model_step_ms"] <= rec["loop_step_ms"]  # the model bracket lies inside each interval
    assert rec["mem_measure"] == "cpu_peak_rss"
    assert rec["peak_train_mem_bytes"] > 0 and rec["peak_test_mem_bytes"] > 0


@pytest.mark.slow
def test_overhead_quick_writes_three_columns(tmp_path):
    from benchmarks import overhead
    out = tmp_path / "overhead.md"
    assert overhead.main(["--quick", "--table", str(out), "--threads", "1"]) == 0
    text = out.read_text()
    assert "load average" in text and "Bare / raw" in text
    row = next(line for line in text.splitlines() if line.startswith("| 32 |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    raw, bare, ours = (float(c.replace(",", "")) for c in cells[1:4])
    assert len(cells) == 11 and cells[5].endswith("×")
    assert float(cells[5][:-1]) == pytest.approx(ours / raw, abs=0.006)  # one round: the figures' ratio


def test_overhead_rejects_steps_not_above_warmup(capsys):
    from benchmarks import overhead
    with pytest.raises(SystemExit) as e:
        overhead.main(["--steps", "5", "--warmup", "20"])
    assert e.value.code != 0 and "--steps=5: must exceed --warmup=20" in capsys.readouterr().err


def test_tables_show_step_times_and_training_memory_only_where_records_have_them():
    from benchmarks import tables
    from tests.test_tables import RECORDS, rec
    assert "Train peak mem" not in tables.display(tables.frame(RECORDS)).columns  # older records
    new = rec("lenet300", "32", 40.0, 9.0, 0.88, model_step_ms=2.5, loop_step_ms=3.25,
              peak_train_mem_bytes=812_000_000, mem_measure="cpu_peak_rss")
    shown = tables.display(tables.frame([*RECORDS, new]))
    cols = list(shown.columns)
    assert cols[cols.index("Thruput. (Training)") + 1: cols.index("Thruput. (Training)") + 3] == [
        "Step ms (model / loop)", "Train peak mem"]
    assert shown["Step ms (model / loop)"].tolist()[-2:] == ["- / -", "2.50 / 3.25"]
    assert shown["Train peak mem"].tolist()[-2:] == ["-", "812.00 MB (cpu_peak_rss)"]


def test_the_harness_trainer_profiles_nothing_unless_a_profiler_is_configured(tmp_path):
    """Lightning's default PassThroughProfiler builds a generator context per hook call; the
    harness's NoProfiler returns one shared no-op context; a configured profiler is used as given."""
    from hydra import compose, initialize_config_dir
    from pytorch_lightning.profilers import PassThroughProfiler, SimpleProfiler

    from lightning_modules.profiler import NoProfiler
    from lightning_modules.run import build_trainer
    from tests.conftest import REPO

    def built(*overrides):
        with initialize_config_dir(str(REPO / "conf"), version_base="1.3"):
            cfg = compose("config", overrides=["model=lenet300", f"results_dir={tmp_path}", *overrides])
        return build_trainer(cfg, tmp_path, module(torch.nn.Linear(8, 4))).profiler

    default = built()
    assert isinstance(default, NoProfiler) and isinstance(default, PassThroughProfiler)
    assert default.profile("training_step") is default.profile("on_train_batch_end")  # nothing per call
    with default.profile("a"), default.profile("b"):  # reentrant, and a no-op
        pass
    assert type(built("+trainer.profiler=simple")) is SimpleProfiler


def test_lightnings_per_hook_name_is_stored_plainly_and_other_attributes_as_nn_module_does():
    m = module(torch.nn.Linear(8, 4))
    m._current_fx_name = "training_step"  # what Lightning sets around every hook
    assert m._current_fx_name == "training_step" and "_current_fx_name" in vars(m)
    m.extra = torch.nn.Parameter(torch.ones(2))  # nn.Module's bookkeeping still applies to the rest
    m.sub = torch.nn.Linear(2, 2)
    assert "extra" in dict(m.named_parameters()) and "sub" in dict(m.named_modules())
    assert "extra" not in vars(m) and "sub" not in vars(m)


def test_lightning_still_passes_batch_idx_to_training_step():
    from pytorch_lightning.utilities.signature_utils import is_param_in_hook_signature
    m = module(torch.nn.Linear(8, 4))
    assert is_param_in_hook_signature(m.training_step, "batch_idx", min_args=2)
    assert list(inspect.signature(m.training_step).parameters) == ["batch", "batch_idx"]
