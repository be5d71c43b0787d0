"""Cost: the documents' operation counts against torch.utils.flop_counter, and BOPs."""
import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from lightning_modules.compression.cost import cost, layer_macs, uniform_bits
from lightning_modules.models import LeNet5
from lightning_modules.models.compact import DepthwiseSeparable


def counted(model, x) -> int:
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        model(x)
    return fc.get_total_flops()


@pytest.mark.parametrize("C,N,K,X", [(8, 16, 3, 10), (32, 64, 3, 7), (16, 24, 5, 9)])
def test_depthwise_separable_operations_match_the_documents_formulas(C, N, K, X):
    """Per output position (biases left out): standard conv N C K^2 multiply-adds, depthwise
    separable C K^2 + N C (the documents' table); flop_counter counts 2 FLOPs per multiply-add
    over the X x X positions."""
    x = torch.randn(1, C, X, X)
    standard = nn.Conv2d(C, N, K, padding=K // 2, bias=False)
    separable = nn.Sequential(nn.Conv2d(C, C, K, padding=K // 2, groups=C, bias=False),
                              nn.Conv2d(C, N, 1, bias=False))
    assert counted(standard, x) == 2 * X * X * (N * C * K ** 2)
    assert counted(separable, x) == 2 * X * X * (C * K ** 2 + N * C)
    # the saving the documents state: 1/N + 1/K^2
    ratio = counted(separable, x) / counted(standard, x)
    assert ratio == pytest.approx(1 / N + 1 / K ** 2)
    # parameters: N C K^2 against C K^2 + N C
    assert sum(p.numel() for p in standard.parameters()) == N * C * K ** 2
    assert sum(p.numel() for p in separable.parameters()) == C * K ** 2 + N * C
    # MobileNet's layer (with BatchNorm) does the same multiply-adds in its convs
    assert sum(layer_macs(DepthwiseSeparable(C, N).eval(), (1, C, X, X)).values()) == \
        X * X * (C * 9 + N * C)


def test_layer_macs_agree_with_flop_counter():
    net = LeNet5().eval()
    x = torch.zeros(1, 1, 28, 28)
    assert 2 * sum(layer_macs(net, tuple(x.shape)).values()) == counted(net, x)


FP = {"w": 32, "a": 32, "g": 32}


def test_full_precision_has_no_bops_and_one_row_per_layer():
    net = LeNet5()
    flops = counted(net.eval(), torch.zeros(1, 1, 28, 28))
    macs = layer_macs(net, (1, 1, 28, 28))
    for bits in (None, {}, uniform_bits(net, {"w": 1, "a": 1, "g": 32})):  # a float net: no QLayer
        c = cost(net, (1, 28, 28), bits, flops)
        assert (c["bops"], c["flops_effective"]) == (0, flops)
    assert c["layers"] == [
        {"name": n, "type": type(m).__name__, "bits": FP, "macs": macs[n], "bops": 0,
         "params": m.weight.numel() + m.bias.numel()}
        for n, m in net.named_modules() if n in macs]
    assert [r["name"] for r in c["layers"]] == ["features.0", "features.2", "classifier.1", "classifier.3"]
    assert sum(r["params"] for r in c["layers"]) == sum(p.numel() for p in net.parameters())
    assert 2 * sum(r["macs"] for r in c["layers"]) == flops


@pytest.mark.parametrize("name,w,a", [("xnor", 1, 1), ("dorefa", 1, 2), ("dorefa", 2, 4),
                                      ("bwn", 1, 32)])
def test_bops_are_macs_times_w_times_a_bits(name, w, a, make_method):
    """XNOR/DoReFa layers (W and A quantized) cost MACs x W x A binary ops; the skipped first
    conv and last linear, and weight-only methods (BWN), stay in FLOPs. Effective FLOPs keep the
    papers' 64 binary ops per float multiply-add (2 FLOPs here). One triple spread over the
    quantized layers (uniform_bits) gives the totals of the former whole-model `bits`."""
    model = make_method(name, {"w": w, "a": a, "g": 32}).apply(LeNet5())
    macs = layer_macs(LeNet5().eval(), (1, 1, 28, 28))
    quantized = macs["features.2"] + macs["classifier.1"]  # conv2 and ip1
    flops = counted(model.eval(), torch.zeros(1, 1, 28, 28))
    bits = uniform_bits(model, {"w": w, "a": a, "g": 32})
    assert bits == {n: {"w": w, "a": a, "g": 32} for n in ("features.2", "classifier.1")}
    c = cost(model, (1, 28, 28), bits, flops)
    rows = {r["name"]: r for r in c["layers"]}
    assert [rows[n]["bits"] for n in ("features.0", "classifier.3")] == [FP, FP]
    assert rows["features.2"]["bits"] == {"w": w, "a": a, "g": 32}
    if a == 32:
        assert (c["bops"], c["flops_effective"]) == (0, flops)
        return
    assert c["bops"] == quantized * w * a == sum(r["bops"] for r in c["layers"])
    assert c["flops_effective"] == round(flops - 2 * quantized + 2 * quantized * w * a / 64)
    assert c["flops_effective"] < flops


def test_mixed_precision_counts_each_layer_at_its_own_bits(make_method):
    """Per-layer bits (a Method's layer_bits): conv2 at W1A2, ip1 at W4A8, the classifier at
    W2A32 (weight-only: stays in FLOPs), conv1 left out (32 bits)."""
    model = make_method("dorefa", {"w": 2, "a": 2, "g": 32}).apply(LeNet5())
    macs = layer_macs(LeNet5().eval(), (1, 1, 28, 28))
    flops = counted(model.eval(), torch.zeros(1, 1, 28, 28))
    bits = {"features.2": {"w": 1, "a": 2, "g": 32}, "classifier.1": {"w": 4, "a": 8, "g": 8},
            "classifier.3": {"w": 2, "a": 32, "g": 32}}
    c = cost(model, (1, 28, 28), bits, flops)
    want = {"features.0": 0, "features.2": macs["features.2"] * 2, "classifier.1": macs["classifier.1"] * 32,
            "classifier.3": 0}
    assert {r["name"]: r["bops"] for r in c["layers"]} == want
    assert {r["name"]: r["bits"] for r in c["layers"]} == {"features.0": FP, **bits}
    binary = macs["features.2"] + macs["classifier.1"]
    assert c["bops"] == sum(want.values())
    assert c["flops_effective"] == round(flops - 2 * binary + 2 * c["bops"] / 64)
    with pytest.raises(TypeError, match="uniform_bits"):  # the former whole-model triple
        cost(model, (1, 28, 28), {"w": 2, "a": 2, "g": 32}, flops)
