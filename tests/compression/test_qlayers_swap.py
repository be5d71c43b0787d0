"""Quantized layers (roles), module swapping, and the methods built from them (conf/method/*.yaml)."""
import ast
import subprocess
import sys
from functools import partial
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lightning_modules.compression.quantization import quantizers as Q
from lightning_modules.compression.quantization.learned import LQQuantizer, TTQQuantizer
from lightning_modules.compression.quantization.qlayers import QConv2d, QLayer, QLinear
from lightning_modules.compression.select import DEFAULT_QUANT_RULES, candidates, choose
from lightning_modules.compression.swap import swap_modules
from lightning_modules.config_check import ConfigError
from lightning_modules.models import CifarResNet, LeNet5, LeNet300

ROOT = Path(__file__).resolve().parents[2]
CONF = ROOT / "conf"
# every quantization method in conf/method (the ones built on quant_methods.py)
METHODS = sorted(p.stem for p in (CONF / "method").glob("*.yaml")
                 if "compression.quantization.methods." in p.read_text())


# --- layers ---------------------------------------------------------------------------------

def test_layers_without_quantizers_equal_torch_layers():
    torch.manual_seed(0)
    conv, lin = nn.Conv2d(3, 4, 3, stride=2, padding=1), nn.Linear(6, 5)
    x, v = torch.randn(2, 3, 7, 7), torch.randn(3, 6)
    assert torch.equal(QConv2d.from_float(conv)(x), conv(x))
    assert torch.equal(QLinear.from_float(lin)(v), lin(v))


def test_weight_and_act_roles():
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 4, 3, padding=1)
    q = QConv2d.from_float(conv, weight_quant=Q.ste_sign, act_quant=partial(Q.dorefa_act, k=2))
    x = torch.randn(2, 3, 5, 5)
    want = F.conv2d(torch.round(x.clamp(0, 1) * 3) / 3, torch.where(conv.weight >= 0, 1.0, -1.0),
                    conv.bias, padding=1)
    torch.testing.assert_close(q(x), want)
    assert torch.equal(q.weight, conv.weight) and q.weight is not conv.weight  # a copy


def test_xnor_conv_equals_explicit_computation():
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 4, 3, stride=2, padding=1)
    q = QConv2d.from_float(conv, weight_quant=Q.bwn_weight, act_quant=Q.xnor_input)
    x = torch.randn(2, 3, 7, 7)
    sign = lambda t: torch.where(t >= 0, 1.0, -1.0)
    cols = F.unfold(sign(x), 3, padding=1, stride=2)                   # (N, C*9, L), sign(I)
    mags = F.unfold(x.abs(), 3, padding=1, stride=2)                   # |I| per window
    k = mags.mean(1, keepdim=True)                                     # K = box(mean_c |I|)
    alpha = conv.weight.abs().mean(dim=(1, 2, 3)).view(1, 4, 1)
    y = (sign(conv.weight).view(4, -1) @ cols) * k * alpha + conv.bias.view(1, 4, 1)
    torch.testing.assert_close(q(x), y.view(2, 4, 4, 4))


def test_xnor_linear_equals_explicit_computation():
    torch.manual_seed(0)
    lin = nn.Linear(10, 3)
    q = QLinear.from_float(lin, weight_quant=Q.bwn_weight, act_quant=partial(Q.xnor_input, dim=-1))
    x = torch.randn(5, 10)
    sign = lambda t: torch.where(t >= 0, 1.0, -1.0)
    alpha = lin.weight.abs().mean(1)
    want = (sign(x) @ sign(lin.weight).T) * x.abs().mean(1, keepdim=True) * alpha + lin.bias
    torch.testing.assert_close(q(x), want)


class _Double(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, g):
        return 2 * g


def test_input_bn_is_xnor_block_order():
    """BatchNorm -> BinActiv -> BinConv: the layer with input_bn equals BN then the same layer."""
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 4, 3, padding=1)
    roles = dict(weight_quant=Q.bwn_weight, act_quant=Q.xnor_input)
    q = QConv2d.from_float(conv, input_bn=True, **roles)
    plain = QConv2d.from_float(conv, **roles)
    assert isinstance(q.input_bn, nn.BatchNorm2d) and q.input_bn.num_features == 3
    with torch.no_grad():
        q.input_bn.weight.uniform_(0.5, 2)
        q.input_bn.bias.uniform_(-1, 1)
    x = torch.randn(8, 3, 6, 6) * 5 + 3
    bn = nn.BatchNorm2d(3)
    bn.load_state_dict(q.input_bn.state_dict())
    torch.testing.assert_close(q(x), plain(bn(x)))
    # training mode: the batch is normalised per channel before the sign (mean 0 inside BN)
    assert q.input_bn.running_mean.abs().sum() > 0  # running statistics were updated
    lin = QLinear.from_float(nn.Linear(6, 2), input_bn=True, weight_quant=Q.ste_sign)
    assert isinstance(lin.input_bn, nn.BatchNorm1d) and lin.input_bn.num_features == 6
    assert QConv2d.from_float(conv).input_bn is None  # off unless asked


def test_channel_batchnorm_equals_batchnorm2d_before_flatten():
    torch.manual_seed(0)
    lin = QLinear.from_float(nn.Linear(5 * 3 * 3, 4), input_bn=5, weight_quant=Q.bwn_weight,
                             act_quant=partial(Q.xnor_input, dim=-1))
    assert lin.input_bn.num_features == 5  # 4 x 5 floats of state, not 4 x 45
    bn2d = nn.BatchNorm2d(5)
    with torch.no_grad():
        lin.input_bn.weight.uniform_(0.5, 2)
        lin.input_bn.bias.uniform_(-1, 1)
    bn2d.load_state_dict(lin.input_bn.state_dict())
    plain = QLinear.from_float(nn.Linear(45, 4), weight_quant=Q.bwn_weight,
                               act_quant=partial(Q.xnor_input, dim=-1))
    plain.load_state_dict({k: v for k, v in lin.state_dict().items() if not k.startswith("input_bn")})
    m = torch.randn(6, 5, 3, 3) * 4 + 2
    for mode in (True, False):  # batch statistics, then the running ones
        lin.train(mode), bn2d.train(mode)
        torch.testing.assert_close(lin(m.flatten(1)), plain(bn2d(m).flatten(1)))


@pytest.mark.parametrize("name", ["xnor", "dorefa", "bnn"])
def test_method_yaml_puts_bn_before_quantized_layers_only(name, make_method):
    net = make_method(name).apply(LeNet5())
    with_bn = {n for n, m in net.named_modules() if isinstance(m, QLayer) and m.input_bn is not None}
    assert with_bn == {"features.2", "classifier.1"}  # conv2 and ip1; first and last stay FP
    assert net.get_submodule("features.2").input_bn.num_features == 20       # BatchNorm2d
    assert net.get_submodule("classifier.1").input_bn.num_features == 50     # per channel of 50x4x4
    assert all(type(net.get_submodule(n)) in (nn.Conv2d, nn.Linear)
               for n in ("features.0", "classifier.3"))
    # a bool only: a typo in the config is one clear line
    with pytest.raises(ConfigError, match=r"method.input_bn=yes: must be true or false"):
        from lightning_modules.compression.quantization.methods import XNOR
        XNOR({"w": 1, "a": 1, "g": 32}, input_bn="yes")


def test_grad_quant_acts_on_output_gradient_only():
    torch.manual_seed(0)
    lin = nn.Linear(4, 3)
    q = QLinear.from_float(lin, grad_quant=_Double.apply)
    x = torch.randn(2, 4, requires_grad=True)
    x2 = x.detach().clone().requires_grad_(True)
    y, y_ref = q(x), lin(x2)
    assert torch.equal(y, y_ref)
    y.sum().backward()
    y_ref.sum().backward()
    torch.testing.assert_close(x.grad, 2 * x2.grad)
    torch.testing.assert_close(q.weight.grad, 2 * lin.weight.grad)
    torch.testing.assert_close(q.bias.grad, 2 * lin.bias.grad)


def test_stateful_quantizers_are_registered_and_trained():
    torch.manual_seed(0)
    conv = nn.Conv2d(2, 4, 3)
    q = QConv2d.from_float(conv, weight_quant=TTQQuantizer.from_weight(conv.weight),
                           act_quant=LQQuantizer.for_activation(2))
    names = dict(q.named_parameters()).keys()
    assert {"weight", "bias", "weight_quant.wp", "weight_quant.wn"} <= names
    assert "act_quant.basis" in q.state_dict()
    opt = torch.optim.SGD(q.parameters(), lr=0.1)
    before = {k: v.detach().clone() for k, v in q.state_dict().items()}
    q(torch.rand(2, 2, 6, 6)).square().sum().backward()
    assert q.weight_quant.wp.grad.abs() > 0 and q.weight_quant.wn.grad.abs() > 0
    opt.step()
    after = q.state_dict()
    for key in ("weight", "weight_quant.wp", "weight_quant.wn", "act_quant.basis"):
        assert not torch.equal(before[key], after[key]), key


def test_clip_only_with_weight_clip():
    lin = nn.Linear(3, 2)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[2.0, -3.0, 0.5], [0.1, -0.2, 1.5]]))
    q = QLinear.from_float(lin, weight_quant=Q.ste_sign, weight_clip=(-1, 1))
    q.clip_()
    assert q.weight.tolist() == [[1.0, -1.0, 0.5], pytest.approx([0.1, -0.2, 1.0])]
    free = QLinear.from_float(lin)
    free.clip_()
    assert torch.equal(free.weight, lin.weight)


# --- swapping -------------------------------------------------------------------------------

NETS = {"lenet300": lambda: LeNet300(), "lenet5": lambda: LeNet5(),
        "resnet8": lambda: CifarResNet(depth=8, in_channels=1, image_size=28)}


def _factory(name, m):
    cls = QConv2d if isinstance(m, nn.Conv2d) else QLinear
    return cls.from_float(m, weight_quant=Q.ste_sign)


@pytest.mark.parametrize("net", sorted(NETS))
def test_swap_keeps_shapes_and_leaves_the_unnamed_layers(net):
    torch.manual_seed(0)
    model = NETS[net]().eval()
    layers = candidates(model)
    first, last = layers[0], layers[-1]
    x = torch.randn(2, 1, 28, 28)
    shape = model(x).shape
    model = swap_modules(model, _factory, [n for n, _ in layers[1:-1]])
    assert model(x).shape == shape == (2, 10)
    assert model.get_submodule(first[0]) is first[1] and model.get_submodule(last[0]) is last[1]
    swapped = [n for n, m in model.named_modules() if isinstance(m, QLayer)]
    assert swapped == [n for n, _ in layers[1:-1]] and len(swapped) >= 1
    assert candidates(model) == [first, last]


def test_swap_names_chosen_by_rules_and_an_unknown_name():
    model = LeNet5()
    keep = model.features[2]
    model = swap_modules(model, _factory, choose(model, [{"name": "*"}, {"name": "features.2", "quantize": False}]))
    assert model.features[2] is keep
    assert isinstance(model.features[0], QConv2d) and isinstance(model.classifier[3], QLinear)
    with pytest.raises(ConfigError) as e:
        choose(LeNet5(), [{"name": "features.9", "quantize": False}])
    assert "features.9" in str(e.value) and "\n" not in str(e.value)


def test_swap_torchvision_resnet():
    import torchvision
    model = torchvision.models.resnet18(num_classes=10).eval()
    n = len(candidates(model))
    model = swap_modules(model, _factory, choose(model, DEFAULT_QUANT_RULES))
    assert isinstance(model.layer1[0].conv1, QConv2d) and type(model.conv1) is nn.Conv2d
    assert type(model.fc) is nn.Linear and len(candidates(model)) == 2 < n
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 10)


# --- methods from their YAML ----------------------------------------------------------------

def test_every_method_has_a_preset(presets):
    assert sorted(presets) == METHODS


@pytest.mark.parametrize("name", METHODS)
def test_method_yaml_applies_and_trains(name, make_method):
    torch.manual_seed(0)
    method = make_method(name)
    assert method.name == name
    if name == "sspq":  # 1x1 convs only (its layers rules); LeNet-5 has none (see test_compact_models.py)
        assert not any(isinstance(m, QLayer) for m in method.apply(LeNet5()).modules())
        return
    model = method.apply(LeNet5())
    assert type(model.features[0]) is nn.Conv2d and type(model.classifier[3]) is nn.Linear
    assert isinstance(model.features[2], QConv2d) and isinstance(model.classifier[1], QLinear)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    x, y = torch.randn(4, 1, 28, 28), torch.randint(0, 10, (4,))
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    assert model.features[2].weight.grad.abs().sum() > 0
    opt.step()
    assert torch.isfinite(model(x)).all()


@pytest.mark.parametrize("name,bits,key", [
    ("xnor", {"w": 3, "a": 1, "g": 32}, "bits.w=3"),
    ("xnor", {"w": 1, "a": 32, "g": 32}, "bits.a=32"),
    ("dorefa", {"w": 1, "a": 2, "g": 0}, "bits.g=0"),
    ("dorefa", {"w": 33, "a": 2, "g": 6}, "bits.w=33"),
    ("bnn", {"w": 1, "a": 1, "g": 8}, "bits.g=8"),
    ("twn", {"w": 1, "a": 32, "g": 32}, "bits.w=1"),
    ("lqnet", {"w": 2, "a": 9, "g": 32}, "bits.a=9"),
    ("uniform", {"w": 2.5, "a": 2, "g": 32}, "bits.w=2.5"),
])
def test_bad_bits_one_line_config_error(name, bits, key, make_method):
    with pytest.raises(Exception) as e:
        make_method(name, bits)
    err = e.value if isinstance(e.value, ConfigError) else e.value.__cause__  # hydra wraps it
    assert isinstance(err, ConfigError) and isinstance(err, ValueError)
    msg = str(err)
    assert msg.startswith(key + ":") and "\n" not in msg and name in msg


def test_binaryconnect_clips_after_each_step(make_method):
    method = make_method("binaryconnect")
    model = method.apply(LeNet5())
    with torch.no_grad():
        model.features[2].weight.mul_(100)
        model.features[0].weight.mul_(100)  # skipped layer: full precision, never clipped
    method.after_step(model, 1e-3)
    assert model.features[2].weight.abs().max() <= 1 and model.classifier[1].weight.abs().max() <= 1
    assert model.features[0].weight.abs().max() > 1
    xnor = make_method("xnor")
    model = xnor.apply(LeNet5())
    with torch.no_grad():
        model.features[2].weight.mul_(100)
    xnor.after_step(model, 1e-3)  # XNOR-Net does not clip its latent weights
    assert model.features[2].weight.abs().max() > 1


@pytest.mark.slow
def test_compression_package_is_a_leaf():
    """compression/ imports nothing from the app (config_check, callbacks, models, run, earlier
    runs) and neither Lightning nor Hydra: every import, module-level or not, resolves inside the
    package or to torch, numpy, the standard library, and ONNX Runtime's calibrators (PTQ's
    percentile / entropy observers, quantization/ptq.py)."""
    pkg = ROOT / "lightning_modules" / "compression"
    allowed = {"torch", "numpy", "__future__", "onnxruntime"}
    for path in pkg.rglob("*.py"):
        here = ["lightning_modules", *path.relative_to(ROOT / "lightning_modules").parent.parts]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level:
                base = here[:len(here) - node.level + 1]
                target = ".".join([*base, *(node.module or "").split(".")]).strip(".")
                assert target.startswith("lightning_modules.compression"), (path, target)
            elif isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module]
                for n in names:
                    top = n.split(".")[0]
                    assert top in allowed or top in sys.stdlib_module_names, (path, n)
    code = ("import sys, lightning_modules.compression.quantization.methods, lightning_modules.compression.quantization.pack;"
            "assert 'pytorch_lightning' not in sys.modules and 'lightning' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)


@pytest.mark.parametrize("roles", [
    dict(weight_quant=Q.bwn_weight, act_quant=Q.xnor_input),
    dict(weight_quant=partial(Q.dorefa_weight, k=2), act_quant=partial(Q.dorefa_act, k=2),
         grad_quant=partial(Q.dorefa_grad, k=4)),
], ids=["xnor", "dorefa"])
def test_layer_under_float16_autocast(roles):
    torch.manual_seed(0)
    q = QConv2d(3, 4, 3, padding=1, **roles)
    x = torch.randn(2, 3, 6, 6, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.float16):
        assert q.quantized_weight().dtype == torch.float32  # quantizer math in float32
        y = q(x)
    y.float().square().sum().backward()
    assert torch.isfinite(x.grad).all() and q.weight.grad.dtype == torch.float32
    with torch.no_grad():
        ref = q(x)  # the float32 forward, for scale
    torch.testing.assert_close(y.float(), ref, rtol=0.05, atol=0.05)
