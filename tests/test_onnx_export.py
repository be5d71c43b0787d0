"""ONNX export (lightning_modules/deploy/onnx_export.py): every net runs in ONNX Runtime; layers
on uniform <= 8-bit grids run on its integer kernels with the trained scales, exactly."""
import json
from functools import partial

import onnx
import pytest
import torch
from torch import nn

from lightning_modules.compression.quantization.methods import BNN, BWN, TWN, XNOR, DoReFa, Uniform
from lightning_modules.compression.quantization import quantizers as Q
from lightning_modules.compression.quantization.qlayers import QConv2d, QLinear
from lightning_modules.deploy.onnx_export import export_onnx, optimized_ops, ort_session, run
from lightning_modules.models import CifarResNet, LeNet5, LeNet300
from lightning_modules.models.compact import VGGSmall

MNIST, CIFAR = (1, 28, 28), (3, 32, 32)


def bits(w, a):
    return {"w": w, "a": a, "g": 32}


def trained_like(net, shape, batches=3):
    """Random weights, BatchNorm statistics from a few train-mode random batches, eval mode."""
    torch.manual_seed(0)
    net.train()
    with torch.no_grad():
        for _ in range(batches):
            net(torch.randn(32, *shape))
    return net.eval()


def check(net, shape, tmp_path, n=512):
    """Export, run n random inputs; returns (info, torch logits, ORT logits)."""
    info = export_onnx(net, shape, tmp_path / "net.onnx")
    x = torch.randn(n, *shape, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = net(x)
    return info, ref, run(ort_session(info["file"]), x)


def agreement(a, b):
    return (a.argmax(1) == b.argmax(1)).float().mean().item()


@pytest.mark.parametrize("make,shape", [(LeNet5, MNIST), (LeNet300, MNIST), (lambda: CifarResNet(8), CIFAR),
                                        (lambda: VGGSmall(width=16), CIFAR)],
                         ids=["lenet5", "lenet300", "resnet8", "vggsmall"])
def test_fp32_nets_match_torch_with_dynamic_batch(make, shape, tmp_path):
    net = trained_like(make(), shape)
    info, ref, out = check(net, shape, tmp_path, n=64)
    assert info["layers"] == {} and torch.allclose(out, ref, atol=1e-4) and agreement(out, ref) == 1.0
    session = ort_session(info["file"])
    for batch in (1, 7):
        x = torch.randn(batch, *shape)
        with torch.no_grad():
            assert torch.allclose(run(session, x), net(x), atol=1e-4)


INTEGER = [("dorefa_w2a2", lambda: DoReFa(bits(2, 2))), ("dorefa_w4a4", lambda: DoReFa(bits(4, 4))),
           ("uniform_w4a4", lambda: Uniform(bits(4, 4))), ("uniform_w4a8", lambda: Uniform(bits(4, 8))),
           ("xnor_w1a1", lambda: XNOR(bits(1, 1))), ("bnn_w1a1", lambda: BNN(bits(1, 1)))]


@pytest.mark.slow
@pytest.mark.parametrize("make,shape", [(LeNet5, MNIST), (lambda: CifarResNet(8), CIFAR)], ids=["lenet5", "resnet8"])
@pytest.mark.parametrize("name,method", INTEGER, ids=[n for n, _ in INTEGER])
def test_integer_methods_run_on_integer_kernels(name, method, make, shape, tmp_path):
    net = trained_like(method().apply(make()), shape)
    info, ref, out = check(net, shape, tmp_path)
    assert set(info["layers"].values()) == {"int8"} and info["reasons"] == {}
    ops = optimized_ops(info["file"])
    n_int = sum(ops[op] for op in ("ConvInteger", "MatMulInteger", "QLinearConv", "QLinearMatMul"))
    assert n_int == len(info["layers"])
    assert agreement(out, ref) >= 0.995
    # a code flips where the upstream float BN/conv rounds differently in ORT (and DoReFa's float
    # levels 2 (q/n) - 1 are an ulp off (2q - n)/n): logits close in the median, not everywhere
    rel = (out - ref).abs().amax(1) / ref.abs().amax(1)
    assert rel.median() <= 1e-3


@pytest.mark.slow
@pytest.mark.parametrize("name,method,reason", [
    ("twn_w2a32", lambda: TWN(bits(2, 32)), "float activations"),
    ("bwn_w1a32", lambda: BWN(bits(1, 32)), "float activations"),
    ("uniform_w8a8", lambda: Uniform(bits(8, 8)), "do not fit int8"),
    ("dorefa_w8a8", lambda: DoReFa(bits(8, 8)), "do not fit int8")], ids=lambda v: v if isinstance(v, str) else "")
def test_layers_without_two_integer_grids_stay_fp32(name, method, reason, tmp_path):
    """Weight-only methods have float inputs; 8-bit DoReFa/uniform weights have odd codes in
    [-255, 255] (no int8): the whole layer stays float (W_q baked in, its act quantizer in float).

    With float activations the logits match to float accumulation error. With an 8-bit activation
    quantizer in float, a pre-activation that ORT's conv (its own accumulation order and FMA use,
    which differ between AVX2 and AVX-512 kernels) and torch's put on opposite sides of a rounding
    tie of round(255 x) moves that activation by one code (1/255) and the logits by a few
    thousandths: on the AVX2-only CI machine 18 of 512 inputs had such a flip in DoReFa W8A8
    (none on an AVX-512 one). Such inputs must stay few and their deviation about one code's worth;
    the rest match to float error."""
    net = trained_like(method().apply(LeNet5()), MNIST)
    info, ref, out = check(net, MNIST, tmp_path)
    assert set(info["layers"].values()) == {"fp32"}
    assert all(reason in r for r in info["reasons"].values()) and info["reasons"].keys() == info["layers"].keys()
    ops = optimized_ops(info["file"])
    assert not ops["ConvInteger"] and not ops["MatMulInteger"]
    assert agreement(out, ref) >= 0.995
    if name.endswith("a32"):
        assert torch.allclose(out, ref, atol=1e-3)
    else:
        dev = (out - ref).abs().amax(dim=1)  # per input
        assert (dev <= 1e-3).float().mean() >= 0.9 and dev.max() <= 0.05


def test_integer_accumulator_is_exact(tmp_path):
    """On inputs exactly on the grid, the layer's output is float32(exact integer dot product) *
    float32(s_a s_w): the int32 accumulator of ConvInteger/MatMulInteger, not a float sum."""
    torch.manual_seed(0)
    conv = QConv2d(8, 6, 3, padding=1, bias=False, weight_quant=partial(Q.uniform_weight, k=4),
                   act_quant=partial(Q.dorefa_act, k=8))
    net = nn.Sequential(conv).eval()
    info = export_onnx(net, (8, 5, 5), tmp_path / "conv.onnx")
    assert info["layers"] == {"0": "int8"}
    codes = torch.randint(0, 256, (4, 8, 5, 5)).double()
    w = conv.quantized_weight().detach()
    s = w.abs().amax((1, 2, 3))
    m = torch.round(w / s.reshape(-1, 1, 1, 1) * 15).double()
    acc = torch.nn.functional.conv2d(codes, m, padding=1)
    expect = acc.float() * (s / 15 / 255).float().reshape(-1, 1, 1)
    out = run(ort_session(info["file"]), (codes / 255).float())
    assert torch.equal(out, expect)


def test_sign_inputs_map_zero_to_plus_one_and_pad_with_zero(tmp_path):
    """BNN sign(0) = +1 (not ONNX Sign's 0); the padded border counts 0, as in torch."""
    torch.manual_seed(0)
    net = trained_like(BNN(bits(1, 1)).apply(CifarResNet(8)), CIFAR)
    layer = net.layers[0].conv1
    x = torch.randn(3, 16, 8, 8)
    x[:, :, ::2] = 0.0
    info = export_onnx(nn.Sequential(layer), (16, 8, 8), tmp_path / "sign.onnx")
    with torch.no_grad():
        assert torch.equal(run(ort_session(info["file"]), x), layer(x))


def test_metadata_and_reported_size(tmp_path):
    net = trained_like(DoReFa(bits(8, 8)).apply(LeNet5()), MNIST)
    info = export_onnx(net, MNIST, tmp_path / "sub" / "net.onnx")
    model = onnx.load(info["file"])
    props = {p.key: p.value for p in model.metadata_props}
    assert props["producer"] == "lightweight_bench" and model.producer_name == "lightweight_bench"
    assert json.loads(props["layers"]) == info["layers"] and json.loads(props["reasons"]) == info["reasons"]
    assert info["bytes"] == (tmp_path / "sub" / "net.onnx").stat().st_size and info["opset"] == 17
    assert [i.name for i in model.graph.input] == ["input"] and [o.name for o in model.graph.output] == ["logits"]


def test_integer_false_keeps_every_layer_float(tmp_path):
    net = trained_like(DoReFa(bits(2, 2)).apply(LeNet5()), MNIST)
    info = export_onnx(net, MNIST, tmp_path / "net.onnx", integer=False)
    assert set(info["layers"].values()) == {"fp32"} and set(info["reasons"].values()) == {"integer=False"}
    assert isinstance(net.classifier[1], QLinear) and net.classifier[1].weight_quant is not None
