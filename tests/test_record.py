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
