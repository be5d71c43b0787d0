"""Compact nets (issue 6): every model config composes with every kind of method (1-bit
quantization, magnitude pruning) with the effect each promises; the ImageNet forms have the
published sizes and are torchvision's nets; the shift, active shift and compound scaling do what
their papers' formulas say. (Every model training a step: tests/test_model_backward.py.)"""
import copy
import functools
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import torchvision.models as tvm
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch import nn
from torchvision.ops import StochasticDepth

from lightning_modules.compression.quantization.pack import load_packed
from lightning_modules.compression.quantization.qlayers import QConv2d, QLayer
from lightning_modules.config_check import choices
from lightning_modules.models import ActiveShift, CifarResNet, Shift, ShiftResNet, SSPQNet
from lightning_modules.models.compact import channel_shuffle
from lightning_modules.models.efficientnet import B0, EfficientNet, compound
from tests.compression.conftest import build_method

CONF = Path(__file__).resolve().parents[1] / "conf"


def build(model: str, c: int, s: int, classes: int = 10) -> nn.Module:
    cfg = OmegaConf.load(CONF / "model" / f"{model}.yaml")
    return instantiate(cfg.net, in_channels=c, image_size=s, num_classes=classes, _convert_="all")


@functools.lru_cache(maxsize=1)
def _built(model: str, c: int, s: int) -> nn.Module:
    return build(model, c, s)


def built(model: str, c: int, s: int) -> nn.Module:
    """A fresh copy of the net (copying is cheaper than initialising the big ones again: the
    method tests of one model run one after the other)."""
    return copy.deepcopy(_built(model, c, s))


def n_params(m):
    return sum(p.numel() for p in m.parameters())


def _layers(net: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, layer) of the Conv2d/Linear layers in module order: what methods select from."""
    return [(n, m) for n, m in net.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


@pytest.mark.parametrize("model,method", [(m, k) for m in choices("model") for k in ("dorefa", "xnor")])
def test_every_model_composes_with_1_bit_quantization(model, method):
    """DoReFa W1 / XNOR (BWN weights) on every net (16x16 inputs: the same layers, a third of the
    28x28 work): every Conv2d/Linear but the first and the last is swapped; the weight each one
    uses has a single magnitude per output channel (+-alpha: one bit plus a scale), and the
    straight-through estimator gives every parameter a finite gradient."""
    torch.manual_seed(0)
    net = built(model, 1, 16)
    names = [n for n, _ in _layers(net)]
    net = build_method(method, {"dorefa": "w1a2g6", "xnor": "w1a1g32"}[method]).apply(net)
    swapped = [n for n, m in net.named_modules() if isinstance(m, QLayer)]
    assert swapped == names[1:-1], f"{model}: the first and last layers stay float, the rest is swapped"
    for n in swapped:
        w = net.get_submodule(n).quantized_weight().detach().abs().flatten(1)
        assert (w > 0).all() and torch.equal(w.max(1).values, w.min(1).values), n
    out = net(torch.randn(2, 1, 16, 16))
    assert out.shape == (2, 10) and torch.isfinite(out).all()
    F.cross_entropy(out, torch.tensor([1, 2])).backward()
    for n, p in net.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), f"{model}: {n}"


@pytest.mark.parametrize("model", choices("model"))
def test_every_model_composes_with_magnitude_pruning(model):
    """conf/method/prune.yaml on every net: nothing is pruned before its start; at its start every
    Conv2d/Linear loses exactly round(s n) of its n weights, the smallest |w| (the output
    changes), the pruned weights stay zero through an optimizer step, and the non-zero count
    the record reports drops by the pruned count."""
    from lightning_modules.compression.pruning.magnitude import nonzero_params
    cfg = OmegaConf.load(CONF / "method" / "prune.yaml")
    s, schedule = float(cfg.prune.sparsity), cfg.prune  # prune.yaml = Compose(prune, code)
    torch.manual_seed(0)
    net = built(model, 1, 16)
    for m in net.modules():  # train mode (batch statistics keep an untrained deep net's signal
        if isinstance(m, (nn.Dropout, StochasticDepth)):  # alive), without random dropping
            m.p = 0.0
    dense = {n: m.weight.detach().clone() for n, m in _layers(net)}
    x = torch.randn(2, 1, 16, 16)
    with torch.no_grad():
        ref = net(x)
    nonzero = nonzero_params(net)  # zero-initialised biases and shifts do not count
    method = instantiate(cfg, _convert_="all")
    net = method.apply(net)
    method.on_time(net, schedule.start - 1, schedule.interval)  # before the schedule: still dense
    with torch.no_grad():
        assert torch.equal(net(x), ref)
    assert nonzero_params(net) == nonzero
    method.on_time(net, schedule.start, schedule.interval)
    with torch.no_grad():
        assert (net(x) - ref).abs().max() > 1e-3 * ref.abs().max()  # relative: some nets start near 0
    pruned = 0
    for n, m in _layers(net):
        gone, mag = m.weight.detach() == 0, dense[n].abs()
        assert int(gone.sum()) == round(s * mag.numel()), n
        assert mag.masked_fill(gone, torch.inf).min() >= mag.masked_fill(~gone, 0).max(), n  # smallest |w| went
        pruned += int((gone & (mag > 0)).sum())  # a weight initialised to 0.0 was no parameter
    assert nonzero_params(net) == nonzero - pruned
    F.cross_entropy(net(x), torch.tensor([1, 2])).backward()
    torch.optim.SGD(net.parameters(), lr=0.1).step()
    with torch.no_grad():
        net(x)  # the forward pass recomputes each layer's masked weight
    for n, m in _layers(net):
        assert int((m.weight == 0).sum()) == round(s * dense[n].numel()), n


# --- the ImageNet forms are the published nets ---------------------------------------------------

TORCHVISION = {"alexnet": tvm.alexnet, "vgg16": tvm.vgg16_bn, "resnet18": tvm.resnet18,
               "resnet50": tvm.resnet50, "mobilenet_v2": tvm.mobilenet_v2,
               "resnet_dilated": functools.partial(tvm.resnet50, replace_stride_with_dilation=[False, False, True]),
               "efficientnet_b0": tvm.efficientnet_b0}


@pytest.mark.parametrize("model,params", [
    ("alexnet", 61_100_840),          # Krizhevsky et al. 2012 (torchvision's one-GPU variant): 61M
    pytest.param("vgg16", 138_365_992, marks=pytest.mark.slow),  # Simonyan & Zisserman 2015, D (+BN): 138M, ~5 s
    ("resnet18", 11_689_512),         # torchvision / He et al. 2016: 11.7M
    ("resnet50", 25_557_032),         # He et al. 2016: 25.6M
    ("resnet_dilated", 25_557_032),   # dilation adds no weights
    ("mobilenet_v1", 4_231_976),      # Howard et al. 2017, Table 1 / 8: 4.2M
    ("mobilenet_v2", 3_504_872),      # Sandler et al. 2018: 3.4M (torchvision's 3.5M)
    ("efficientnet_b0", 5_288_548),   # Tan & Le 2019, Table 2: 5.3M (torchvision's efficientnet_b0)
])
def test_imagenet_forms_have_the_published_size_and_are_torchvisions_nets(model, params):
    """At 224 px (stem imagenet) the net has the published parameter count and, with the same
    weights loaded, computes torchvision's reference net's logits."""
    torch.manual_seed(0)
    net = build(model, 3, 224, 1000).eval()
    assert n_params(net) == params
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        out = net(x)
    assert out.shape == (1, 1000)
    if model in TORCHVISION:
        ref = TORCHVISION[model](weights=None).eval()
        state = {k.removeprefix("net."): v for k, v in net.state_dict().items()}
        ref.load_state_dict(state)  # strict: the same modules, names and shapes
        with torch.no_grad():
            torch.testing.assert_close(out, ref(x), rtol=1e-4, atol=1e-5)


# --- shift ------------------------------------------------------------------------------------

@pytest.mark.parametrize("channels,k,dilation", [(18, 3, 1), (20, 3, 1), (25, 5, 1), (9, 3, 2)])
def test_shift_by_indexing_equals_the_one_hot_depthwise_conv(channels, k, dilation):
    torch.manual_seed(0)
    shift = Shift(channels, k, dilation)
    x = torch.randn(2, channels, 7, 6)
    conv = F.conv2d(x, shift.one_hot_kernel(), padding=shift.pad, dilation=dilation, groups=channels)
    assert torch.equal(shift(x), conv)
    # its hand-written backward (the opposite shift) is the conv's gradient too
    g = torch.randn_like(conv)
    xs, xc = x.clone().requires_grad_(), x.clone().requires_grad_()
    (shift(xs) * g).sum().backward()
    ref = F.conv2d(xc, shift.one_hot_kernel(), padding=shift.pad, dilation=dilation, groups=channels)
    (ref * g).sum().backward()
    assert torch.equal(xs.grad, xc.grad)
    # K^2 groups, sizes as equal as possible; the centre group is not moved
    assert sum(shift.sizes) == channels and max(shift.sizes) - min(shift.sizes) <= 1
    assert len(shift.sizes) == k * k


def test_shift_moves_each_group_by_its_offset_and_has_no_parameters_or_flops():
    from torch.utils.flop_counter import FlopCounterMode
    shift = Shift(9, 3)
    x = torch.arange(9 * 5 * 5, dtype=torch.float).reshape(1, 9, 5, 5)
    y = shift(x)
    for g, (dy, dx) in enumerate(shift.offsets):  # one channel per group
        assert y[0, g, 2, 2] == x[0, g, 2 + dy, 2 + dx]
    assert shift.offsets[4] == (0, 0) and torch.equal(y[0, 4], x[0, 4])
    assert y[0, 0, 0].abs().sum() == 0  # (dy, dx) = (-1, -1): zeros shifted in at the top
    with FlopCounterMode(display=False) as fc:
        shift(x)
    assert fc.get_total_flops() == 0 and n_params(shift) == 0


def test_active_shift_integer_shifts_equal_the_fixed_shift_and_fractions_interpolate():
    torch.manual_seed(0)
    x = torch.randn(2, 9, 6, 6)
    fixed = Shift(9, 3)
    active = ActiveShift(9)
    with torch.no_grad():
        active.theta.copy_(torch.tensor(fixed.offsets, dtype=torch.float))
    torch.testing.assert_close(active(x), fixed(x), rtol=0, atol=1e-6)
    with torch.no_grad():  # half a pixel to the right: the mean of two neighbours
        active.theta.copy_(torch.tensor([[0.0, 0.5]] * 9))
    y = active(x)
    torch.testing.assert_close(y[..., :-1], (x[..., :-1] + x[..., 1:]) / 2, rtol=0, atol=1e-6)
    assert torch.allclose(y[..., -1], x[..., -1] / 2, atol=1e-6)  # zero beyond the edge


def test_active_shift_parameters_receive_gradients():
    torch.manual_seed(0)
    active = ActiveShift(8, stride=2)
    x = torch.randn(2, 8, 7, 7)
    y = active(x)
    assert y.shape == (2, 8, 4, 4)
    (y * torch.randn_like(y)).sum().backward()
    assert active.theta.grad is not None and active.theta.grad.shape == (8, 2)
    assert (active.theta.grad.abs().sum(1) > 0).all()  # every channel's (dy, dx) learns
    net = SSPQNet(1, 28, 10, widths=(8, 16), blocks=(1, 1), expansion=2, head=None)
    net(torch.randn(2, 1, 28, 28)).sum().backward()
    assert all(m.theta.grad.abs().sum() > 0 for m in net.modules() if isinstance(m, ActiveShift))


@pytest.mark.parametrize("depth", [20, 56])
def test_shift_resnet_has_fewer_parameters_than_the_resnet_of_its_depth(depth):
    # per block 2 eps C^2 (1x1 convs) against 18 C^2 (two 3x3 convs): eps = 6 -> 2/3 of the weights
    shift, plain = ShiftResNet(depth, 3, 32, 10), CifarResNet(depth, 3, 32, 10)
    assert n_params(shift) < n_params(plain)
    convs = [m for m in shift.layers.modules() if isinstance(m, nn.Conv2d)]
    assert convs and all(m.kernel_size == (1, 1) for m in convs)
    w_shift = sum(m.weight.numel() for m in convs)
    w_plain = sum(m.weight.numel() for m in plain.layers.modules() if isinstance(m, nn.Conv2d))
    assert w_shift / w_plain == pytest.approx(2 * 6 / 18, rel=0.02)


def test_channel_shuffle_interleaves_the_groups():
    x = torch.arange(6.0).reshape(1, 6, 1, 1)
    assert channel_shuffle(x, 2).flatten().tolist() == [0, 3, 1, 4, 2, 5]


# --- EfficientNet compound scaling --------------------------------------------------------------

@pytest.mark.parametrize("phi", [0, 1, 2, 3])
def test_compound_scaling_follows_the_formula(phi):
    """depth x 1.2^phi (ceil), width x 1.1^phi (multiple of 8, >= 90%), resolution x 1.15^phi."""
    c = compound(phi, 224)
    assert c["depth_mult"] == pytest.approx(1.2 ** phi) and c["width_mult"] == pytest.approx(1.1 ** phi)
    assert c["resolution"] == round(224 * 1.15 ** phi)
    assert c["layers"] == [math.ceil(n * 1.2 ** phi) for *_, n in B0]
    for ch, (*_, out, _) in zip(c["channels"], B0):
        v = out * 1.1 ** phi  # nearest multiple of 8, one step up if that loses more than 10%
        nearest = int(v + 4) // 8 * 8
        assert ch == (nearest if nearest >= 0.9 * v else nearest + 8)
    net = EfficientNet(3, 32, 10, phi=phi)
    assert net.resolution == round(32 * 1.15 ** phi)
    stages = net.net.features[1:-1]
    assert [len(s) for s in stages] == c["layers"]
    outs = [s[-1].block[-1][0].out_channels for s in stages]  # each stage's last projection conv
    assert outs == c["channels"]


def test_b0_is_the_papers_table():
    c = compound(0, 224)
    assert c["channels"] == [16, 24, 40, 80, 112, 192, 320] and c["layers"] == [1, 2, 2, 3, 3, 4, 1]
    assert c["resolution"] == 224 and c["stem"] == 32
    assert [compound(p, 224)["resolution"] for p in (1, 2, 3)] == [258, 296, 341]


# --- SSPQ: DoReFa on the point-wise convs, packed -----------------------------------------------

def test_sspq_method_quantizes_only_pointwise_convs_and_exports_packed(tmp_path):
    torch.manual_seed(0)
    net = build("sspq_small", 1, 28)
    fp32_file = tmp_path / "fp32.pt"
    instantiate(OmegaConf.load(CONF / "method" / "fp32.yaml")).export(net, fp32_file)
    method = build_method("sspq", {"w": 2, "a": 32, "g": 32})
    net = method.apply(net)
    q = [m for m in net.modules() if isinstance(m, QConv2d)]
    assert q and all(m.kernel_size == (1, 1) and m.weight_quant is not None for m in q)
    assert type(net.stem[0]) is nn.Conv2d and type(net.fc) is nn.Linear  # skip: first, last
    assert all(m.input_bn is None for m in q)  # SSPQ's BatchNorm follows the conv
    net(torch.randn(4, 1, 28, 28)).sum().backward()
    net.eval()
    x = torch.randn(3, 1, 28, 28)
    with torch.no_grad():
        ref = net(x)
    path = method.export(net, tmp_path / "sspq.pt")
    fresh = build_method("sspq", {"w": 2, "a": 32, "g": 32}).apply(build("sspq_small", 1, 28))
    again = load_packed(fresh, path)
    with torch.no_grad():
        assert torch.equal(again.eval()(x), ref)
    # 2-bit point-wise weights: the file is at least 5x smaller than the float32 export
    assert fp32_file.stat().st_size / path.stat().st_size >= 5


# --- the compact table ---------------------------------------------------------------------------

def test_compact_table_shows_cost_and_the_size_chain(tmp_path):
    from benchmarks import render, tables
    from tests.test_tables import rec
    chain = [rec("resnet20", "32", 10.0, 1.0, 0.80, params=269_434, flops=61_642_496, bops=0,
                 flops_effective=61_642_496, footprint_bytes=1_111_395),
             rec("sspq_small", "32", 8.0, 1.0, 0.76, params=126_000, flops=32_300_000, bops=0,
                 flops_effective=32_300_000, footprint_bytes=546_495),
             rec("sspq_small", "32", 8.0, 1.0, 0.75, method="sspq", bits=(2, 4, 32),
                 method_label="SSPQ (DoReFa 1x1)", params=126_000, flops=32_300_000,
                 bops=8 * 15_000_000, flops_effective=2_300_000 + 2 * 8 * 15_000_000 // 64,
                 footprint_bytes=100_000)]
    t = tables.display_compact(tables.frame(chain))
    assert list(t.columns) == tables.COMPACT_COLUMNS
    assert list(t.Network) == ["resnet20", "sspq_small", "sspq_small + SSPQ (DoReFa 1x1)"]
    assert list(t["Size ×"]) == ["1.0×", "2.0×", "11.1×"]  # against the first row's file
    assert list(t.BOPs) == ["0", "0", "120.00M"] and t["FLOPs eff."].iloc[2] == "6.05M"
    md = render.write("sspq_chain", {"description": "chain", "table": "compact"}, chain, tmp_path)["md"].read_text()
    assert "| sspq_small + SSPQ (DoReFa 1x1) |" in md
