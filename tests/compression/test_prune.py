"""Magnitude pruning (Han 2015): masks, ratios, schedules (AGP), zeros held, DDP identity."""
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp
from torch import nn

from dc_helpers import prune_share, sgd_steps
from lightning_modules.compression.pruning.magnitude import (Prune, agp, effective_weight, magnitude_mask,
                                                 nonzero_params, prune_layer)
from lightning_modules.config_check import ConfigError
from lightning_modules.models import LeNet5, LeNet300

LENET300 = ["net.1", "net.3", "net.5"]


def zero_fraction(m):
    return float((effective_weight(m) == 0).float().mean())


def test_sparsity_mask_keeps_exactly_the_largest():
    w = torch.randn(50, 40)
    mask = magnitude_mask(w, sparsity=0.75)
    assert int(mask.sum()) == 500
    assert w.abs()[mask.bool()].min() >= w.abs()[~mask.bool()].max()


def test_quality_mask_is_threshold_times_std():
    w = torch.randn(100, 30)
    mask = magnitude_mask(w, quality=0.7).bool()
    assert torch.equal(mask, w.abs() > 0.7 * w.std())


def test_pruning_is_monotone():
    lin = nn.Linear(30, 20)
    prune_layer(lin, sparsity=0.5)
    first = lin.weight_mask.clone()
    with torch.no_grad():
        lin.weight_orig.add_(100 * (1 - first))  # pruned weights grow big "behind" the mask
    prune_layer(lin, sparsity=0.6)
    assert not (lin.weight_mask.bool() & ~first.bool()).any()
    assert int(lin.weight_mask.sum()) == 240


def test_per_layer_ratio_as_configured():
    torch.manual_seed(0)
    method = Prune(sparsity=[0.92, 0.91, 0.74], start=0, end=0)
    net = method.apply(LeNet300())
    assert all(zero_fraction(m) == 0 for m in (net.net[1], net.net[3], net.net[5]))  # not yet
    method.on_time(net, 0, "epoch")
    for m, s in zip((net.net[1], net.net[3], net.net[5]), (0.92, 0.91, 0.74)):
        assert zero_fraction(m) == pytest.approx(s, abs=1 / m.weight.numel())
    kept = sum(int(m.weight_mask.sum()) for m in (net.net[1], net.net[3], net.net[5]))
    assert nonzero_params(net) == kept + 410  # + biases (300 + 100 + 10), non-zero by init


def test_dict_config_with_default_and_a_layer_kept_by_a_rule():
    method = Prune(sparsity={"default": 0.5, "features.0": 0.2},
                   layers=[{"name": "*"}, {"name": "last", "quantize": False}], start=0, end=0)
    net = method.apply(LeNet5())
    method.on_time(net, 0, "epoch")
    assert zero_fraction(net.features[0]) == pytest.approx(0.2)
    assert zero_fraction(net.classifier[1]) == pytest.approx(0.5)
    assert not hasattr(net.classifier[3], "weight_mask")  # skipped: untouched


@pytest.mark.parametrize("opt", ["sgd", "adam"])
def test_masked_weights_stay_zero_through_training(opt):
    torch.manual_seed(0)
    method = Prune(sparsity=0.8, start=0, end=0)
    net = method.apply(LeNet5())
    method.on_time(net, 0, "epoch")
    masks = {n: m.weight_mask.clone() for n, m in net.named_modules() if hasattr(m, "weight_mask")}
    o = (torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3) if opt == "sgd"
         else torch.optim.Adam(net.parameters(), lr=1e-2))
    before = {n: effective_weight(m).clone() for n, m in net.named_modules() if n in masks}
    sgd_steps(net, steps=3, optimizer=o)
    for n, m in net.named_modules():
        if n in masks:
            w = effective_weight(m)
            assert torch.equal(m.weight_mask, masks[n])
            assert not w[masks[n] == 0].any()
            assert not torch.equal(w, before[n])  # the kept weights did train
            assert not m.weight_orig.grad[masks[n] == 0].any()  # no gradient behind the mask


def test_agp_formula():
    assert agp(2, 2, 10, 0.1, 0.9) == 0.1 and agp(10, 2, 10, 0.1, 0.9) == 0.9
    assert agp(6, 2, 10, 0.1, 0.9) == pytest.approx(0.9 + (0.1 - 0.9) * (1 - 4 / 8) ** 3)
    assert agp(5, 5, 5, 0.0, 0.8) == 0.8  # one-shot


def test_iterative_schedule_prunes_when_due_on_the_agp_ramp():
    method = Prune(sparsity=0.9, start=2, end=8, frequency=3, interval="step")
    net = method.apply(LeNet300())
    layer, seen = net.net[3], []
    for t in range(12):
        pruned = method.on_time(net, t, "step")
        method.on_time(net, t, "epoch")  # the other interval: ignored
        seen.append((t, pruned, zero_fraction(layer)))
    assert [t for t, p, _ in seen if p] == [2, 5, 8]
    want = {2: 0.0, 5: agp(5, 2, 8, 0.0, 0.9), 8: 0.9}
    for t, p, z in seen:
        if p:
            assert z == pytest.approx(want[t], abs=1e-4)
    assert seen[-1][2] == pytest.approx(0.9)


@pytest.mark.parametrize("kw,key", [
    ({"sparsity": 0.5, "quality": 1.0}, "sparsity=0.5, method.prune.quality=1.0"),
    ({"sparsity": 1.5}, "sparsity=1.5"),
    ({"sparsity": [0.5, 0.5]}, "sparsity=[0.5, 0.5]: needs 3 values"),
    ({"sparsity": {"net.9": 0.5, "default": 0.1}}, "sparsity.net.9: not a pruned layer"),
    ({"sparsity": 0.5, "interval": "batch"}, "interval=batch"),
    ({"sparsity": 0.5, "start": 3, "end": 1}, "end=1"),
])
def test_bad_config_is_one_line(kw, key):
    with pytest.raises(ConfigError, match=key.replace("[", r"\[").replace("]", r"\]")) as e:
        Prune(**kw).apply(LeNet300())
    assert "\n" not in str(e.value)


# --- DDP: masks and centroids identical on every rank -----------------------------------------

def _compressed_state(seed):
    """Masks, centroids and indices of a tiny net pruned and shared from weights of `seed`."""
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(20, 16), nn.ReLU(), nn.Linear(16, 4))
    method = prune_share(prune={"sparsity": 0.5, "start": 0, "end": 0},
                         share={"bits": {"conv": 3, "fc": 3}, "start": 1})
    net = method.apply(net)
    method.on_time(net, 0, "epoch")
    method.on_time(net, 1, "epoch")
    return torch.cat([torch.cat([net[i].weight_mask.flatten(),
                                 net[i].parametrizations.weight_orig[0].centroids,
                                 net[i].parametrizations.weight_orig[0].idx.flatten().float()])
                      for i in (0, 2)])


def _ddp_worker(rank, world, port, out):
    import torch.distributed as dist
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    state = _compressed_state(seed=rank)  # replicas deliberately different
    gathered = [torch.zeros_like(state) for _ in range(world)]
    dist.all_gather(gathered, state)
    if rank == 0:
        torch.save(gathered, out)
    dist.destroy_process_group()


@pytest.mark.slow
def test_ddp_masks_and_codebooks_identical_on_every_rank(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = str(tmp_path / "states.pt")
    mp.spawn(_ddp_worker, args=(2, port, out), nprocs=2, join=True)
    a, b = torch.load(out)
    assert torch.equal(a, b)
    assert torch.equal(a, _compressed_state(seed=0))  # rank 0's, as computed alone
    assert not torch.equal(a, _compressed_state(seed=1))  # the ranks did start different
