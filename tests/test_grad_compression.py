"""Gradient compression for DDP communication (SketchML quantile buckets; fp16 and PowerSGD
baselines): the encoding against its definition, and two real gloo processes training LeNet-300-100
on Fashion-MNIST: the sketch sends at least 4x fewer bytes than the fp32 all-reduce and ends within
1.5 points of uncompressed DDP. (The hook inside a Lightning DDP run: tests/test_image_suites.py.)"""
import json
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from lightning_modules.compression.communication.sketch import decode, encode, make_hook, quantile_splits
from lightning_modules.models import LeNet300


@pytest.mark.parametrize("bits", [1, 2, 4, 8])
def test_sketch_is_bucket_index_plus_bucket_mean(bits):
    g = torch.Generator().manual_seed(bits)
    x = torch.randn(10_001, generator=g) * 1e-3
    payload = encode(x, bits)
    q = 2 ** bits
    assert payload.dtype == torch.uint8 and payload.nbytes == -(-10_001 * bits // 8) + 4 * q
    y = decode(payload, x.numel(), bits)
    splits = quantile_splits(x, q)
    idx = torch.bucketize(x, splits)
    for b in range(q):  # every value decodes to the mean of its quantile bucket
        members = idx == b
        assert torch.allclose(y[members], x[members].mean().expand(int(members.sum())), rtol=1e-5, atol=1e-9)
    counts = torch.bincount(idx, minlength=q)  # equi-depth: the buckets hold equal shares
    assert counts.min() >= 0.9 * x.numel() / q and counts.max() <= 1.1 * x.numel() / q


def _worker(rank, world, init, out, data):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    (x, y), (xt, yt) = data
    res = {}
    try:
        # none and sketch train one epoch of 24k images; the baselines 20 steps (their bytes only)
        for method, steps in (("none", None), ("sketch", None), ("fp16", 20), ("powersgd", 20)):
            torch.manual_seed(0)
            model = torch.nn.parallel.DistributedDataParallel(LeNet300())
            state, hook = make_hook(method)
            model.register_comm_hook(state, hook)
            opt = torch.optim.Adam(model.parameters(), lr=1e-3)
            xs, ys = x[rank::world], y[rank::world]
            order = torch.randperm(len(xs), generator=torch.Generator().manual_seed(0))
            for i in range(0, len(xs) - 63, 64)[:steps]:
                idx = order[i:i + 64]
                opt.zero_grad()
                torch.nn.functional.cross_entropy(model(xs[idx]), ys[idx]).backward()
                opt.step()
            with torch.no_grad():
                acc = (model.module(xt).argmax(1) == yt).float().mean().item()
            params = [p.detach().clone() for p in model.parameters()]
            gathered = [torch.cat([p.flatten() for p in params]) for _ in range(world)]
            dist.all_gather(gathered, torch.cat([p.flatten() for p in params]))
            res[method] = {"acc": acc, "replicas_equal": bool(torch.equal(gathered[0], gathered[1])), **state.summary()}
        with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
            json.dump(res, f)
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_processes_sketch_sends_4x_fewer_bytes_within_1_5_points(tmp_path, fmnist):
    data = ((fmnist.x_train[:24576], fmnist.y_train[:24576]), (fmnist.x_test, fmnist.y_test))
    mp.start_processes(_worker, args=(2, f"file://{tmp_path / 'pg'}", str(tmp_path), data), nprocs=2,
                       join=True, start_method="fork")
    r0, r1 = [json.loads((tmp_path / f"rank{k}.json").read_text()) for k in range(2)]
    none, sketch, fp16, psgd = (r0[m] for m in ("none", "sketch", "fp16", "powersgd"))
    fp32 = 266_610 * 4  # LeNet-300-100's gradients, one bucket
    assert none["comm_bytes_per_step"] == none["comm_fp32_bytes_per_step"] == fp32
    assert sketch["comm_bytes_per_step"] * 4 <= fp32  # 4 bits + 16 means: ~8x fewer
    assert fp16["comm_bytes_per_step"] == fp32 / 2
    assert psgd["comm_bytes_per_step"] < fp32 * 0.6  # averaged over 20 steps: 10 warm-up all-reduces, then rank-1 P and Q
    assert all(r0[m]["acc"] == r1[m]["acc"] and r0[m]["replicas_equal"] for m in r0)  # ranks agree
    assert none["acc"] > 0.75
    # one seed, one epoch: the gap depends on the CPU's float kernels (this 2-core EPYC: 80.26% vs
    # 81.41%, also at the commit before the refactor; an earlier machine gave 81.06%)
    assert abs(sketch["acc"] - none["acc"]) <= 0.015, (sketch["acc"], none["acc"])
    print({m: (round(v["acc"], 4), v["comm_bytes_per_step"]) for m, v in r0.items()})


@pytest.mark.parametrize("overrides,message", [
    (["trainer=ddp", "grad_compression=zip"], r"^grad_compression=zip: valid: none, sketch, fp16, powersgd$"),
    (["grad_compression=sketch"], r"^grad_compression=sketch: compresses DDP gradients; needs trainer=ddp "
                                  r"or ddp_multinode \(trainer.strategy=auto\)$")])
def test_bad_grad_compression_is_one_clear_line(overrides, message):
    from hydra import compose, initialize_config_dir
    from lightning_modules.config_check import ConfigError, check_config
    from tests.conftest import REPO
    with initialize_config_dir(str(REPO / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=overrides)
    with pytest.raises(ConfigError, match=message):
        check_config(cfg)


def test_the_callback_records_nothing_without_ddp_and_the_hooks_bytes_with_it():
    from types import SimpleNamespace
    from lightning_modules.callbacks.grad_compression import GradCompression
    cb = GradCompression("sketch")
    cb.on_fit_start(SimpleNamespace(strategy=SimpleNamespace(model=LeNet300())), None)
    assert cb.state is None and cb.fields(None) == {}  # one process: nothing on the wire
    cb.state, _ = make_hook("sketch")
    assert cb.fields(None) == {"grad_compression": "sketch", "comm_steps": 0,
                               "comm_bytes_per_step": None, "comm_fp32_bytes_per_step": None}
