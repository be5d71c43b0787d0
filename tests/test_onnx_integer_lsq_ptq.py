"""LSQ, PACT and PTQ (FakeQuant) layers on ONNX Runtime's integer kernels (onnx_export.py): the
activation codes computed in ONNX with torch's float32 ops in torch's order, the weight codes
rebuilding W_q exactly, so ORT's logits are torch's up to the float accumulation order; LSQ+'s
offset and per-channel activation scales stay float with their reason."""
import pytest
import torch
from torch import nn

from lightning_modules.compression.quantization.lsq import LSQQuantizer, PACTQuantizer
from lightning_modules.compression.quantization.methods import LSQ, PACT, LSQPlus
from lightning_modules.compression.quantization.ptq import PTQ, FakeQuant, act_grid
from lightning_modules.compression.quantization.qlayers import QConv2d, QLinear
from lightning_modules.deploy.onnx_export import export_onnx, optimized_ops, ort_session, run
from lightning_modules.models import LeNet5

MNIST = (1, 28, 28)
QUANTIZED = ("features.2", "classifier.1")  # LeNet-5's layers under the default rules
SATURATES = "u8s8 pair sums may saturate int16"


def bits(w, a):
    return {"w": w, "a": a, "g": 32}


def trained(method):
    """A LeNet-5 under an LSQ/PACT `method`, its steps initialised by one train-mode batch."""
    torch.manual_seed(0)
    net = method.apply(LeNet5()).train()
    with torch.no_grad():
        net(torch.randn(32, *MNIST))
    return net.eval()


def calibrated(b, per_channel):
    """A LeNet-5 quantized by PTQ, calibrated on a few random batches."""
    torch.manual_seed(0)
    method = PTQ(b, per_channel=per_channel, init_from=LeNet5().state_dict())
    batches = [(torch.randn(32, *MNIST), None) for _ in range(3)]
    return method, method.calibrate(method.apply(LeNet5()), batches).eval()


def compare(net, shape, path, n=256):
    """Export, run n random inputs: (info, torch logits, ORT logits, per-row error / row scale)."""
    info = export_onnx(net, shape, path)
    x = torch.randn(n, *shape, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = net(x)
    out = run(ort_session(info["file"]), x)
    return info, ref, out, (out - ref).abs().amax(1) / ref.abs().amax(1)


CASES = [("lsq_w4a4", lambda: trained(LSQ(bits(4, 4))), QUANTIZED),
         ("lsq_w2a2", lambda: trained(LSQ(bits(2, 2))), QUANTIZED),
         ("lsq_w4a4_per_channel", lambda: trained(LSQ(bits(4, 4), per_channel=True)), QUANTIZED),
         ("pact_w4a4", lambda: trained(PACT(bits(4, 4))), QUANTIZED),
         ("ptq_w4a4_per_channel", lambda: calibrated(bits(4, 4), True)[1], QUANTIZED),
         ("ptq_w4a4_per_tensor", lambda: calibrated(bits(4, 4), False)[1], QUANTIZED),
         # 8-bit codes 0..255 times weight codes up to 127: the QLinear stays float (AVX2's int16)
         ("ptq_w8a8_per_channel", lambda: calibrated(bits(8, 8), True)[1], QUANTIZED[:1]),
         ("ptq_w8a8_per_tensor", lambda: calibrated(bits(8, 8), False)[1], QUANTIZED[:1])]


@pytest.mark.parametrize("name,make,int8", CASES, ids=[c[0] for c in CASES])
def test_quantized_lenet5_runs_on_integer_kernels_with_torch_logits(name, make, int8, tmp_path):
    net = make()
    info, ref, out, rel = compare(net, MNIST, tmp_path / "net.onnx")
    assert info["layers"] == {n: "int8" if n in int8 else "fp32" for n in QUANTIZED}
    assert all(SATURATES in r for r in info["reasons"].values()) and len(info["reasons"]) == 2 - len(int8)
    ops = optimized_ops(info["file"])
    assert ops["ConvInteger"] == 1 and ops["MatMulInteger"] == len(int8) - 1
    assert (out.argmax(1) == ref.argmax(1)).all()
    # the same codes: only the float accumulation order differs (a code one rounding from its
    # boundary may flip in the layer after an integer one: a few rows, at 8 bits)
    assert (rel <= 1e-4).float().mean() >= 0.98 and rel.median() <= 1e-5, rel.max()


@pytest.mark.parametrize("per_channel", [True, False])
def test_ptq_reloaded_from_its_packed_file_stays_integer(per_channel, tmp_path):
    """The deploy step exports the net reloaded from the packed file (no weight quantizer): the
    weights are found on their grid again from the values (per tensor or per row scales)."""
    method, net = calibrated(bits(4, 4), per_channel)
    method.export(net, tmp_path / "ptq.lwb")
    reloaded = method.load(LeNet5(), tmp_path / "ptq.lwb").eval()
    assert all(reloaded.get_submodule(n).weight_quant is None for n in QUANTIZED)
    info, ref, out, rel = compare(reloaded, MNIST, tmp_path / "net.onnx")
    assert info["layers"] == {n: "int8" for n in QUANTIZED}
    with torch.no_grad():
        x = torch.randn(64, *MNIST)
        assert torch.equal(reloaded(x), net(x))
    assert (out.argmax(1) == ref.argmax(1)).all() and rel.median() <= 1e-5


def test_lsq_plus_offset_stays_float_with_its_reason(tmp_path):
    net = trained(LSQPlus(bits(4, 4)))
    info, ref, out, rel = compare(net, MNIST, tmp_path / "net.onnx")
    assert info["layers"] == {n: "fp32" for n in QUANTIZED}
    assert all("LSQ+ offset" in info["reasons"][n] for n in QUANTIZED)
    ops = optimized_ops(info["file"])
    assert not ops["ConvInteger"] and not ops["MatMulInteger"]
    assert (out.argmax(1) == ref.argmax(1)).all() and rel.median() <= 1e-5


def test_per_channel_activation_scales_stay_float(tmp_path):
    act = FakeQuant(*act_grid(8))
    act.scale, act.zero_point = torch.full((1, 4, 1, 1), 0.02), torch.zeros(1, 4, 1, 1)  # one per input channel
    conv = QConv2d(4, 6, 3, bias=False, weight_quant=LSQQuantizer.for_weight(torch.randn(6, 4, 3, 3), 4),
                   act_quant=act)
    info = export_onnx(nn.Sequential(conv).eval(), (4, 6, 6), tmp_path / "conv.onnx")
    assert info["layers"] == {"0": "fp32"} and "per-channel activation scales" in info["reasons"]["0"]


def padded_conv(act_quant):
    torch.manual_seed(0)
    w = torch.randn(6, 4, 3, 3)
    conv = QConv2d(4, 6, 3, padding=1, bias=True, weight_quant=LSQQuantizer.for_weight(w, 4, per_channel=True),
                   act_quant=act_quant)
    with torch.no_grad():
        conv.weight.copy_(w)
    return conv


def lsq_act(signed):
    q = LSQQuantizer.for_activation(4)
    q.set_(torch.tensor(0.3), signed=signed)
    return q


def fake_act(zero_point, k=8):
    q = FakeQuant(*act_grid(k))
    q.set_qparams(torch.tensor(0.02), torch.tensor(float(zero_point)))
    return q


@pytest.mark.parametrize("act", [lambda: lsq_act(True), lambda: lsq_act(False), lambda: fake_act(37),
                                 lambda: fake_act(3, k=4)],
                         ids=["lsq_signed", "lsq_unsigned", "fakequant_z37", "fakequant_4bit_z3"])
def test_zero_padding_is_the_zero_point_and_a_perturbed_step_is_caught(act, tmp_path):
    """torch pads the dequantized input with 0, i.e. code z_a; ConvInteger pads with its zero
    point z_a: the border agrees. The same comparison catches a step off by one part in 1e3."""
    conv = padded_conv(act())
    net = nn.Sequential(conv).eval()
    x = torch.randn(16, 4, 6, 6, generator=torch.Generator().manual_seed(2)) * 2
    with torch.no_grad():
        ref = net(x)
    info = export_onnx(net, (4, 6, 6), tmp_path / "conv.onnx")
    assert info["layers"] == {"0": "int8"}
    out = run(ort_session(info["file"]), x)
    scale = ref.abs().max()
    assert (out - ref).abs().max() <= 1e-5 * scale  # the border included
    q = conv.act_quant
    with torch.no_grad():
        (q.step if isinstance(q, LSQQuantizer) else q.scale).mul_(1.001)
    bad = run(ort_session(export_onnx(net, (4, 6, 6), tmp_path / "bad.onnx")["file"]), x)
    assert (bad - ref).abs().max() > 1e-3 * scale


def pact_act():
    return PACTQuantizer(4, alpha=2.9)  # an alpha where x / (alpha / n) rounds differently at ties


K = torch.arange(-40, 300, dtype=torch.float32) + 0.5


@pytest.mark.parametrize("act,half", [(lambda: lsq_act(True), lambda: K * 0.3),
                                      (lambda: lsq_act(False), lambda: K * 0.3),
                                      (lambda: fake_act(37), lambda: K * 0.02),
                                      (pact_act, lambda: K / (15.0 / torch.tensor(2.9)))],
                         ids=["lsq_signed", "lsq_unsigned", "fakequant", "pact"])
def test_activation_codes_equal_torchs_at_rounding_ties(act, half, tmp_path):
    """Inputs at and one ulp around every half step (k + 1/2) s (PACT: (k + 1/2) / (n / alpha)),
    and past the clip range: behind identity weights each output is q_a s_a alone, so ORT's codes
    must be torch's exactly (LSQ/FakeQuant's quotient x / s, not x (1/s); PACT's product
    x (n / alpha), not x / (alpha / n); round half to even)."""
    n = 64
    w = FakeQuant(-7, 7, channels=n, dims=2)  # scale 1: W_q = I, m = I, s_w = 1
    layer = QLinear(n, n, bias=False, weight_quant=w, act_quant=act())
    with torch.no_grad():
        layer.weight.copy_(torch.eye(n))
    half = half()
    x = torch.cat([half, torch.nextafter(half, torch.tensor(-1e9)), torch.nextafter(half, torch.tensor(1e9))])
    x = torch.cat([x, torch.zeros((-len(x)) % n)]).reshape(-1, n)
    net = nn.Sequential(layer).eval()
    info = export_onnx(net, (n,), tmp_path / "id.onnx")
    assert info["layers"] == {"0": "int8"}
    with torch.no_grad():
        ref = net(x)
    assert torch.equal(run(ort_session(info["file"]), x), ref)
