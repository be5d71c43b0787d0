"""Weight sharing (Deep Compression Sec. 3): k-means with linear init, <= 2^b values, shared
weights stay shared, centroid gradient = sum of member gradients."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dc_helpers import prune_share, sgd_steps
from lightning_modules.compression.pruning.magnitude import effective_weight
from lightning_modules.compression.coding.share import Share, kmeans_1d, sharing
from lightning_modules.config_check import ConfigError
from lightning_modules.models import LeNet5, LeNet300


def layers(net):
    return [m for m in net.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def test_linear_initialisation_over_min_max():
    x = torch.tensor([-2.0, -0.9, 1.1, 4.0])
    c, idx = kmeans_1d(x, 4, iters=0)
    assert torch.equal(c, torch.linspace(-2.0, 4.0, 4))  # -2, 0, 2, 4
    assert idx.tolist() == [0, 1, 2, 3]  # nearest: -0.9 -> 0, 1.1 -> 2


def test_lloyd_fixed_point():
    x = torch.randn(5000)
    c, idx = kmeans_1d(x, 16, iters=200)
    # every point at its nearest centroid, every non-empty centroid the mean of its members
    assert torch.allclose((x - c[idx]).abs(), (x[:, None] - c[None]).abs().min(1).values)
    for k in idx.unique():
        assert c[k] == pytest.approx(float(x[idx == k].mean()), abs=1e-5)


@pytest.mark.parametrize("bits", [{"conv": 4, "fc": 3}, {"conv": 8, "fc": 5}])
def test_distinct_values_at_most_two_to_the_b(bits):
    torch.manual_seed(0)
    method = Share(bits=bits, start=0)
    net = method.apply(LeNet5())
    method.on_time(net, 0, "epoch")
    for m in layers(net):
        b = bits["conv"] if isinstance(m, nn.Conv2d) else bits["fc"]
        n = m.weight.unique().numel()
        assert n <= 2 ** b
        assert n >= 2 ** b // 2  # and really clustered, not collapsed


def test_inactive_until_scheduled():
    torch.manual_seed(0)
    ref = LeNet300()
    net = LeNet300()
    net.load_state_dict(ref.state_dict())
    method = Share(start=1)
    net = method.apply(net)
    x = torch.randn(4, 1, 28, 28)
    assert torch.equal(net(x), ref(x))
    method.on_time(net, 0, "epoch")
    assert torch.equal(net(x), ref(x))
    method.on_time(net, 1, "epoch")
    assert net.net[1].weight.unique().numel() <= 32


@pytest.mark.parametrize("pruned", [False, True])
def test_centroid_gradient_is_sum_of_member_gradients(pruned):
    torch.manual_seed(0)
    lin = nn.Sequential(nn.Linear(30, 20))
    method = (prune_share(prune={"sparsity": 0.6, "start": 0, "end": 0}, share={"bits": {"conv": 4, "fc": 4}, "start": 1})
              if pruned else Share(bits={"conv": 4, "fc": 4}, start=0))
    lin = method.apply(lin)
    for t in (0, 1):
        method.on_time(lin, t, "epoch")
    layer, s = lin[0], sharing(lin[0])
    w = (layer.weight_orig * layer.weight_mask) if pruned else layer.weight
    w.retain_grad()
    F.linear(torch.randn(8, 30), w, layer.bias).pow(2).sum().backward()
    members = layer.weight_mask.bool() if pruned else torch.ones_like(w, dtype=torch.bool)
    want = torch.zeros_like(s.centroids).index_add_(0, s.idx[members], w.grad[members])
    assert torch.allclose(s.centroids.grad, want, atol=1e-5)
    assert s.centroids.grad.abs().sum() > 0


@pytest.mark.parametrize("opt", ["sgd", "adam"])
def test_weights_stay_shared_and_pruned_stay_zero_after_fine_tuning(opt):
    torch.manual_seed(0)
    method = prune_share(prune={"sparsity": 0.7, "start": 0, "end": 0},
                         share={"bits": {"conv": 5, "fc": 4}, "start": 1})
    net = method.apply(LeNet5())
    method.on_time(net, 0, "epoch")
    method.on_time(net, 1, "epoch")
    c0 = {id(m): sharing(m).centroids.clone() for m in layers(net)}
    o = (torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4) if opt == "sgd"
         else torch.optim.Adam(net.parameters(), lr=1e-2))
    sgd_steps(net, steps=3, optimizer=o)
    for m in layers(net):
        s, w = sharing(m), effective_weight(m)
        b = 5 if isinstance(m, nn.Conv2d) else 4
        assert not torch.equal(s.centroids, c0[id(m)])  # the centroids were fine-tuned
        assert torch.equal(w, s.centroids[s.idx] * m.weight_mask)  # still c[idx]
        assert w.unique().numel() <= 2 ** b  # 2^b - 1 centroids + zero
        assert not w[m.weight_mask == 0].any()


def test_bad_bits_are_one_line():
    with pytest.raises(ConfigError, match=r"method.share.bits.fc=0: must be an integer in 1..16"):
        Share(bits={"conv": 8, "fc": 0})
    with pytest.raises(ConfigError, match=r"needs exactly the keys conv and fc"):
        Share(bits={"linear": 5})
