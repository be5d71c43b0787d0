"""Packed-bit kernels (lightning_modules/deploy/binary_kernels.c through binary.py) against the
harness's own float simulation: integer dot products exactly equal, scaled outputs allclose, and
converted nets (to_binary) predicting as the trained ones."""
from functools import partial

import pytest
import torch
import torch.nn.functional as F

from lightning_modules.compression.quantization import quantizers as Q
from lightning_modules.compression.quantization.methods import BNN, BWN, XNOR, DoReFa, Uniform
from lightning_modules.compression.quantization.qlayers import QConv2d, QLinear
from lightning_modules.deploy import binary as B
from lightning_modules.models import CifarResNet, LeNet5, VGGSmall

W1A1 = {"w": 1, "a": 1, "g": 32}


@pytest.fixture(scope="module", autouse=True)
def lib():
    try:
        return B.load()
    except B.BinaryKernelUnavailable as e:
        pytest.skip(str(e))


@pytest.fixture(params=["avx2", "avx512"])
def isa(request, lib):
    """Each kernel path: AVX2 always, AVX-512 VPOPCNTDQ where the CPU has it."""
    if request.param == "avx512" and not B.avx512_supported():
        pytest.skip("this CPU lacks AVX-512 VPOPCNTDQ")
    return request.param


@pytest.fixture(params=["avx2", "avx512"])
def isa_env(request, lib, monkeypatch):
    """Each kernel path, chosen the way a deployed net sees it: through $LWB_BINARY_ISA."""
    if request.param == "avx512" and not B.avx512_supported():
        pytest.skip("this CPU lacks AVX-512 VPOPCNTDQ")
    monkeypatch.setenv("LWB_BINARY_ISA", request.param)
    return request.param


LAYOUTS = ["channel", "joint"]


def binarize(x: torch.Tensor, act: str) -> torch.Tensor:
    """The float simulation's 1-bit input: bnn_sign (pm1) or dorefa_act k=1 (01)."""
    return Q.bnn_sign(x) if act == "pm1" else Q.dorefa_act(x, 1)


def signs(*shape) -> torch.Tensor:
    return Q.bnn_sign(torch.randn(*shape))


def with_edges(x: torch.Tensor) -> torch.Tensor:
    """Put the encodings' boundary values (0, 0.5, 1, -0) into x."""
    flat = x.view(-1)
    flat[: 4 * (flat.numel() // 4)].view(-1, 4)[::3] = torch.tensor([0.0, 0.5, 1.0, -0.0])
    return x


CONV_GEOMETRIES = [(k, s, p) for k in (1, 3, 5) for s in (1, 2) for p in (0, 1, 2)] + [((1, 3), (2, 1), (0, 1))]


def xnor_k(x: torch.Tensor, k, s, p) -> torch.Tensor:
    """XNOR-Net's K: mean_c |x| summed over each receptive field (zero padded) / (kh kw)."""
    kh, kw = (k, k) if isinstance(k, int) else k
    a = x.abs().mean(1, keepdim=True)
    return F.conv2d(a, torch.ones(1, 1, kh, kw), stride=s, padding=p) / (kh * kw)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("act", ["pm1", "pm1+xnor", "01"])
@pytest.mark.parametrize("channels", [3, 16, 20, 32, 64, 65, 130])
def test_conv_dot_products_are_exact(act, channels, layout, isa):
    torch.manual_seed(channels)
    enc, xnor = act.split("+")[0], act.endswith("xnor")
    for i, (k, s, p) in enumerate(CONV_GEOMETRIES):
        n, o = (1, 3)[i % 2], 5 + i % 3
        kh, kw = (k, k) if isinstance(k, int) else k
        x = with_edges(torch.randn(n, channels, 7, 8))
        w = signs(o, channels, kh, kw)
        ref = F.conv2d(binarize(x, enc), w, stride=s, padding=p)
        y = B.binary_conv2d(x, B.pack_weight(w), channels, k, s, p, torch.ones(o), None, act=enc,
                            xnor=xnor, threads=2, isa=isa, layout=layout)
        if xnor:  # the integer dot, scaled by K once
            torch.testing.assert_close(y, ref * xnor_k(x, k, s, p), rtol=1e-5, atol=1e-5)
        else:
            assert torch.equal(y, ref), (k, s, p)


def test_joint_weight_puts_tap_t_channel_c_at_bit_t_c_plus_c():
    torch.manual_seed(0)
    for c, k in ((3, 3), (16, 3), (20, 5), (65, 3)):
        w = signs(6, c, k, k)
        joint = B.joint_weight(B.pack_weight(w), c, k * k)
        assert torch.equal(joint, B.pack_weight(w.permute(0, 2, 3, 1).reshape(6, -1)))


def test_layout_and_isa_choice(lib, monkeypatch):
    monkeypatch.delenv("LWB_BINARY_LAYOUT", raising=False)
    assert [B.choose_layout(c) for c in (3, 16, 32, 64, 65, 127, 128, 130, 256)] == \
        ["joint"] * 3 + ["channel"] + ["joint"] * 2 + ["channel"] * 3
    monkeypatch.setenv("LWB_BINARY_LAYOUT", "channel")
    assert B.choose_layout(16) == "channel" and B.choose_layout(16, "joint") == "joint"
    monkeypatch.setenv("LWB_BINARY_LAYOUT", "rows")
    with pytest.raises(ValueError, match="LWB_BINARY_LAYOUT"):
        B.choose_layout(16)
    monkeypatch.delenv("LWB_BINARY_ISA", raising=False)
    assert B.isa() == ("avx512" if B.avx512_supported() else "avx2")
    monkeypatch.setenv("LWB_BINARY_ISA", "avx2")
    assert B.isa() == "avx2"
    monkeypatch.setenv("LWB_BINARY_ISA", "sse")
    with pytest.raises(ValueError, match="LWB_BINARY_ISA"):
        B.isa()


@pytest.mark.parametrize("act", ["pm1", "01"])
@pytest.mark.parametrize("k", [1, 63, 64, 65, 500, 4096])
def test_linear_dot_products_are_exact(act, k, isa):
    torch.manual_seed(k)
    x, w = with_edges(torch.randn(5, k)), signs(7, k)
    y = B.binary_linear(x, B.pack_weight(w), k, torch.ones(7), None, act=act, xnor=False, threads=2,
                        isa=isa)
    assert torch.equal(y, F.linear(binarize(x, act), w))


# the quantizers each method gives a W1A1 layer (methods.py), for conv (act dim 1) and linear (-1)
ROLES = {
    "xnor": lambda dim: (Q.bwn_weight, partial(Q.xnor_input, dim=dim)),
    "bnn": lambda dim: (Q.bnn_sign, Q.bnn_sign),
    "dorefa": lambda dim: (partial(Q.dorefa_weight, k=1), partial(Q.dorefa_act, k=1)),
    "uniform": lambda dim: (partial(Q.uniform_weight, k=1), partial(Q.dorefa_act, k=1)),
}


def scaled_close(y: torch.Tensor, ref: torch.Tensor) -> None:
    torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-5 * ref.abs().max().item())


@pytest.mark.parametrize("method", list(ROLES))
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("geometry", [(20, 3, 1, 1), (16, 3, 2, 1), (65, 3, 2, 2), (130, 5, 1, 0), (3, 1, 1, 0)])
def test_scaled_conv_matches_qconv2d(method, geometry, layout, isa_env, monkeypatch):
    monkeypatch.setenv("LWB_BINARY_LAYOUT", layout)
    c, k, s, p = geometry
    torch.manual_seed(c + k)
    wq, aq = ROLES[method](1)
    layer = QConv2d(c, 9, k, s, p, weight_quant=wq, act_quant=aq).eval()
    x = with_edges(torch.randn(3, c, 9, 9))
    binary, report = B.to_binary(layer)
    assert isinstance(binary, B.BinaryConv2d) and report["binary"] == [""]
    assert (binary.act, binary.xnor) == ("01" if method in ("dorefa", "uniform") else "pm1", method == "xnor")
    with torch.no_grad():
        scaled_close(binary(x), layer(x))


@pytest.mark.parametrize("method", list(ROLES))
@pytest.mark.parametrize("k", [1, 65, 500])
def test_scaled_linear_matches_qlinear(method, k, isa_env):
    torch.manual_seed(k)
    wq, aq = ROLES[method](-1)
    layer = QLinear(k, 11, weight_quant=wq, act_quant=aq).eval()
    x = with_edges(torch.randn(4, k))
    binary, _ = B.to_binary(layer)
    assert isinstance(binary, B.BinaryLinear)
    with torch.no_grad():
        scaled_close(binary(x), layer(x))


@pytest.mark.parametrize("layout", LAYOUTS)
def test_threads_give_identical_results(layout, isa):
    torch.manual_seed(0)
    x, w = torch.randn(3, 70, 12, 12), signs(33, 70, 3, 3)
    pw, alpha, bias = B.pack_weight(w), torch.rand(33), torch.randn(33)
    for act, xnor in (("pm1", True), ("01", False)):
        one, two = (B.binary_conv2d(x, pw, 70, 3, 1, 1, alpha, bias, act=act, xnor=xnor, threads=t,
                                    isa=isa, layout=layout) for t in (1, 2))
        assert torch.equal(one, two)
    xl, wl, alpha = torch.randn(9, 300), B.pack_weight(signs(65, 300)), torch.rand(65)
    one, two = (B.binary_linear(xl, wl, 300, alpha, None, act="pm1", xnor=True, threads=t, isa=isa)
                for t in (1, 2))
    assert torch.equal(one, two)


def trained_like(net: torch.nn.Module, shape: tuple[int, ...]) -> torch.nn.Module:
    """BatchNorms out of their initial state: a few random batches in train mode, then eval."""
    net.train()
    with torch.no_grad():
        for _ in range(3):
            net(torch.randn(16, *shape))
    return net.eval()


METHODS = {"xnor": XNOR, "bnn": BNN, "dorefa": DoReFa, "uniform": Uniform}
NETS = {"lenet5": (LeNet5, (1, 28, 28), ["features.2", "classifier.1"]),
        "resnet8": (partial(CifarResNet, depth=8), (3, 32, 32), None),
        "vggsmall": (partial(VGGSmall, width=16), (3, 32, 32), None)}


@pytest.mark.parametrize("input_bn", [True, False])
@pytest.mark.parametrize("method", list(METHODS))
@pytest.mark.parametrize("net_name", ["lenet5", "resnet8", pytest.param("vggsmall", marks=pytest.mark.slow)])
def test_converted_net_predicts_as_the_trained_one(net_name, method, input_bn, isa_env):
    """Layer by layer, on the trained net's own activations, each binary layer gives the QLayer's
    output (allclose). End to end the two nets agree on the class, and on the logits for all but
    a rare sample: the float simulation sums alpha-scaled products with rounding, the kernel
    computes dot * alpha from an exact integer, so an activation that lands within an ulp of a
    threshold (0 for sign, 0.5 for DoReFa) can binarise differently downstream."""
    torch.manual_seed(1)
    build, shape, expected = NETS[net_name]
    net = trained_like(METHODS[method](W1A1, input_bn=input_bn).apply(build()), shape)
    binary, report = B.to_binary(net)
    quantized = [n for n, m in net.named_modules() if isinstance(m, (QConv2d, QLinear))]
    assert report["binary"] == (expected or quantized) and quantized
    assert not any(isinstance(m, (QConv2d, QLinear)) for m in binary.modules())
    assert all(report["reasons"][n] == "float layer (not quantized)" for n in report["torch"])

    seen = {}
    hooks = [net.get_submodule(n).register_forward_hook(
        lambda m, args, out, n=n: seen.__setitem__(n, (args[0].clone(), out.clone())))
        for n in quantized]
    x = torch.randn(256, *shape)
    with torch.no_grad():
        ref, y = net(x), binary(x)
        for h in hooks:
            h.remove()
        for n, (inp, out) in seen.items():
            scaled_close(binary.get_submodule(n)(inp), out)
    assert (ref.argmax(1) == y.argmax(1)).float().mean() >= 0.999
    close = torch.isclose(y, ref, rtol=1e-4, atol=1e-4 * ref.abs().max().item()).all(1)
    assert close.float().mean() >= 0.99


@pytest.mark.parametrize("method, bits, word", [(DoReFa, {"w": 2, "a": 2, "g": 32}, "a2"),
                                                (DoReFa, {"w": 2, "a": 1, "g": 32}, "w2"),
                                                (BWN, {"w": 1, "a": 32, "g": 32}, "a32")])
def test_layers_that_are_not_w1a1_stay_in_torch(method, bits, word):
    net = method(bits).apply(LeNet5()).eval()
    binary, report = B.to_binary(net)
    assert report["binary"] == []
    assert set(report["torch"]) == {"features.0", "features.2", "classifier.1", "classifier.3"}
    assert word in report["reasons"]["features.2"] and word in report["reasons"]["classifier.1"]
    assert isinstance(binary.features[2], QConv2d)


def test_unsupported_conv_geometry_stays_in_torch():
    for kw in ({"groups": 2}, {"dilation": 2}, {"padding": 1, "padding_mode": "circular"}):
        layer = QConv2d(4, 4, 3, weight_quant=Q.bnn_sign, act_quant=Q.bnn_sign, **kw).eval()
        binary, report = B.to_binary(layer)
        assert report["torch"] == [""] and isinstance(binary, QConv2d), kw


def test_wrong_inputs_are_refused_in_python():
    w = B.pack_weight(signs(4, 8, 3, 3))
    with pytest.raises(ValueError, match="do not fit"):
        B.binary_conv2d(torch.randn(1, 9, 5, 5), w, 8, 3, 1, 0, torch.ones(4), None, act="pm1",
                        xnor=False, threads=1)
    with pytest.raises(ValueError, match="float32"):
        B.binary_conv2d(torch.randn(1, 8, 5, 5).double(), w, 8, 3, 1, 0, torch.ones(4), None,
                        act="pm1", xnor=False, threads=1)
    with pytest.raises(ValueError, match="act="):
        B.binary_conv2d(torch.randn(1, 8, 5, 5), w, 8, 3, 1, 0, torch.ones(4), None, act="pm",
                        xnor=False, threads=1)


def test_the_build_is_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("LWB_KERNEL_CACHE", str(tmp_path))
    first = B.build()
    assert first.parent == tmp_path and first.exists()
    mtime = first.stat().st_mtime_ns
    assert B.build() == first and first.stat().st_mtime_ns == mtime
    assert [p.name for p in tmp_path.iterdir()] == [first.name]  # no temporary file left


def test_a_missing_compiler_is_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("LWB_KERNEL_CACHE", str(tmp_path))
    monkeypatch.setenv("CC", "no-such-compiler-cc")
    with pytest.raises(B.BinaryKernelUnavailable, match="no-such-compiler-cc.*not found"):
        B.build(force=True)


def test_a_failing_compile_is_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("LWB_KERNEL_CACHE", str(tmp_path))
    monkeypatch.setenv("CC", "false")
    with pytest.raises(B.BinaryKernelUnavailable, match="^false -O3 .*: exit status 1$"):
        B.build(force=True)
    assert list(tmp_path.iterdir()) == []  # the temporary file is gone
