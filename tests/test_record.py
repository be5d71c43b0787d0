"""Records: atomic writes, the hash that identifies an experiment."""
import json
import multiprocessing as mp
import os
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from lightning_modules.record import config_hash, read_record, write_json_atomic

CONF = Path(__file__).resolve().parents[1] / "conf"


def test_atomic_write_leaves_only_the_file(tmp_path):
    p = tmp_path / "r" / "record.json"
    write_json_atomic(p, {"a": 1})
    write_json_atomic(p, {"a": 2})
    assert json.loads(p.read_text()) == {"a": 2}
    assert [f.name for f in p.parent.iterdir()] == ["record.json"]
    assert oct(p.stat().st_mode & 0o777) == "0o644"


def test_failed_write_keeps_the_old_record(tmp_path, monkeypatch):
    p = tmp_path / "record.json"
    write_json_atomic(p, {"status": "ok"})

    def boom(*a):
        raise OSError("disk full")
    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError):
        write_json_atomic(p, {"status": "half"})
    assert json.loads(p.read_text()) == {"status": "ok"}
    assert [f.name for f in tmp_path.iterdir()] == ["record.json"]


def _writer(path, k):
    for i in range(200):
        write_json_atomic(Path(path), {"writer": k, "i": i, "pad": "x" * 5000})


def test_concurrent_writers_never_tear(tmp_path):
    p = tmp_path / "record.json"
    write_json_atomic(p, {"writer": -1, "i": 0})
    procs = [mp.get_context("fork").Process(target=_writer, args=(str(p), k)) for k in range(2)]
    for pr in procs:
        pr.start()
    reads = 0
    while any(pr.is_alive() for pr in procs):
        rec = read_record(p)
        assert rec is not None and "writer" in rec  # always a whole record
        reads += 1
    for pr in procs:
        pr.join()
        assert pr.exitcode == 0
    assert reads > 0 and read_record(p)["i"] == 199


def test_config_hash_is_about_the_experiment():
    with initialize_config_dir(str(CONF), version_base="1.3"):
        base = config_hash(compose("config"))
        assert base == config_hash(compose("config"))
        assert base == config_hash(compose("config", overrides=["results_dir=/elsewhere", "logger=wandb"]))
        assert base != config_hash(compose("config", overrides=["optimizer.lr=0.1"]))
        assert base != config_hash(compose("config", overrides=["precision=bf16-mixed"]))


def _recorder(tmp_path):
    from types import SimpleNamespace

    import torch

    from lightning_modules.recorder import Recorder
    with initialize_config_dir(str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=["model=lenet300", f"results_dir={tmp_path / 'results'}"])
    rec = Recorder(cfg)
    trainer = SimpleNamespace(is_global_zero=True, loggers=[])
    parts = (trainer, SimpleNamespace(name="fashion_mnist"), SimpleNamespace(net=torch.nn.Linear(3, 2)))
    return rec, parts


def test_a_failed_run_leaves_its_record_and_nothing_else(tmp_path):
    rec, parts = _recorder(tmp_path)
    run_dir = rec.make_dir()
    with pytest.raises(RuntimeError):
        with rec.guard(*parts):
            (run_dir / "model.pt").write_bytes(b"half")
            (run_dir / "checkpoints").mkdir()
            raise RuntimeError("out of memory\nsecond line")
    assert sorted(p.name for p in run_dir.iterdir()) == ["record.json"]
    r = read_record(run_dir / "record.json")
    assert r["status"] == "failed" and r["error"] == "RuntimeError: out of memory"
    assert r["params"] == 8 and r["run_name"] == "lenet300-fp32-W32A32G32-32-s0" and r["wall_s"] > 0


def test_a_config_error_once_training_starts_leaves_no_trace(tmp_path):
    from lightning_modules.config_check import ConfigError
    rec, parts = _recorder(tmp_path)
    (tmp_path / "results").mkdir()  # exists before the run: kept; what the run created: removed
    rec.make_dir()
    with pytest.raises(ConfigError):
        with rec.guard(*parts):
            raise ConfigError("method.prune.end=1: must be < trainer.max_epochs=1")
    assert list((tmp_path / "results").iterdir()) == []


def test_a_failed_attempt_removes_only_the_files_it_created(tmp_path):
    """Failure cleanup (recorder.Recorder.remove_own_files): an earlier attempt's files stay."""
    from omegaconf import OmegaConf
    from lightning_modules.recorder import Recorder
    run_dir = tmp_path / "runs" / "adhoc" / "r"
    run_dir.mkdir(parents=True)
    (run_dir / "model.pt").write_bytes(b"earlier result")
    rec = Recorder(OmegaConf.create({"run_dir": str(run_dir)}))
    rec.make_dir()
    (run_dir / "last.ckpt").write_bytes(b"half")
    (run_dir / "csv").mkdir()
    rec.remove_own_files()
    assert sorted(p.name for p in run_dir.iterdir()) == ["model.pt"]
    assert (run_dir / "model.pt").read_bytes() == b"earlier result"


def test_the_hardware_line_names_the_cpus_simd_level_and_reads_older_records_as_before():
    from lightning_modules.record import cpu_isa, hardware, hardware_line
    info = "processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu sse4_2 avx avx2 fma{}\n\nprocessor\t: 1\n"
    assert cpu_isa(info.format("")) == "AVX2"
    assert cpu_isa(info.format(" avx512f avx512bw")) == "AVX-512"
    assert cpu_isa(info.format(" avx512f avx512_vnni avx512_vpopcntdq")) == "AVX-512 (VNNI, VPOPCNTDQ)"
    assert cpu_isa("model name\t: ARM\nFeatures\t: neon asimd\n") is None
    old = {"cpu": "AMD EPYC", "cpu_cores": 2, "torch_threads": 1, "gpu": None, "gpu_count": 0}
    assert hardware_line(old) == "AMD EPYC, 2 cores, 1 torch threads, no GPU"  # committed tables unchanged
    assert hardware_line({**old, "cpu_isa": "AVX2"}) == "AMD EPYC with AVX2, 2 cores, 1 torch threads, no GPU"
    assert hardware_line({**old, "cpu_isa": "AVX2", "gpu": "H200", "gpu_count": 1}) == "1x H200, AMD EPYC with AVX2"
    assert hardware()["cpu_isa"] == cpu_isa()  # this machine's, from /proc/cpuinfo
