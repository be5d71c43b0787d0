"""Masks and centroids are identical on every DDP rank: two real gloo processes whose replicas
deliberately differ (different seeds) run the Deep Compression schedule; afterwards both hold
rank 0's masks, centroids and indices, the ones a single process computes from rank 0's weights."""
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from lightning_modules.models import LeNet5

SCHEDULE = {"prune": {"sparsity": 0.8, "start": 1, "end": 2, "frequency": 1},
            "share": {"start": 3, "bits": {"conv": 4, "fc": 3}, "iters": 20}}


def _method():
    from dc_helpers import deep_compression
    return deep_compression(**SCHEDULE)


def run_schedule(net, method):
    for t in range(4):
        with torch.no_grad():  # replicas keep drifting apart between the steps
            for p in net.parameters():
                p.add_(0.01 * torch.randn_like(p))
        method.on_time(net, t, "epoch")
    return {k: v.detach().clone() for k, v in net.state_dict().items()
            if k.endswith(("weight_mask", "centroids", "idx"))}


def _worker(rank: int, world: int, init: str, out: str):
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        torch.manual_seed(100 + rank)  # different replicas and different drift per rank
        net = LeNet5()
        method = _method()
        net = method.apply(net)
        torch.save(run_schedule(net, method), os.path.join(out, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_masks_and_centroids_identical_on_every_rank(tmp_path):
    init = f"file://{tmp_path / 'pg'}"
    mp.start_processes(_worker, args=(2, init, str(tmp_path)), nprocs=2, join=True, start_method="spawn")
    r0 = torch.load(tmp_path / "rank0.pt")
    r1 = torch.load(tmp_path / "rank1.pt")
    assert set(r0) == set(r1) and any(k.endswith("weight_mask") for k in r0) \
        and any(k.endswith("centroids") for k in r0)
    for k in r0:
        assert torch.equal(r0[k], r1[k]), k
    masks = [v for k, v in r0.items() if k.endswith("weight_mask")]
    kept = sum(int(m.sum()) for m in masks) / sum(m.numel() for m in masks)
    assert kept == pytest.approx(0.2, abs=0.01)  # the schedule really pruned
    # rank 0's result is what one process computes from rank 0's replica; rank 1's own replica
    # would have given other masks (so the equality above is the broadcast, not a coincidence)
    alone = {}
    for seed in (100, 101):
        torch.manual_seed(seed)
        method = _method()
        alone[seed] = run_schedule(method.apply(LeNet5()), method)
    assert all(torch.equal(alone[100][k], r0[k]) for k in r0)
    assert any(not torch.equal(alone[101][k], r0[k]) for k in r0)
