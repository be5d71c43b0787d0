"""The layer-selection grammar (compression/select.py): today's keys as presets select exactly the
layers and values today's code selects, on our nets and torchvision's; override order; errors."""
import copy

import pytest
import torch
from torch import nn

from lightning_modules.compression import select as sel
from lightning_modules.compression.coding.deep_compression import _gap_bits
from lightning_modules.compression.errors import ConfigError
from lightning_modules.compression.factorization.low_rank import LowRank
from lightning_modules.compression.quantization.pq import ProductQuant
from lightning_modules.compression.pruning.magnitude import layers, per_layer
from lightning_modules.compression.quantization.qlayers import QLayer
from lightning_modules.compression.coding.share import Share, _bits_for
from lightning_modules.models import (CifarResNet, LeNet5, LeNet300, MLP, MobileNetV1, ShuffleNet,
                                      SSPQNet, mobilenet_v2, resnet)

NETS = {
    "lenet5": LeNet5,
    "lenet300": LeNet300,
    "mlp": lambda: MLP(hidden=(64, 32), dropout_hidden=0.5),
    "resnet8": lambda: CifarResNet(depth=8, in_channels=1, image_size=28),
    "resnet20": lambda: CifarResNet(depth=20),
    "mobilenet_v1": lambda: MobileNetV1(image_size=32, num_classes=10),
    "mobilenet_v2": lambda: mobilenet_v2(image_size=32, num_classes=10),
    "shufflenet": lambda: ShuffleNet(image_size=32, num_classes=10, groups=3, scale=0.5),
    "sspq": lambda: SSPQNet(image_size=32, num_classes=10, widths=(16, 32, 64), blocks=(3, 3, 3),
                            head=None),
    "resnet18": lambda: resnet(depth=18, image_size=32, num_classes=10),
}


@pytest.fixture(scope="module", params=list(NETS))
def net(request):
    torch.manual_seed(0)
    return NETS[request.param]()


def middle(model):
    names = [n for n, _ in sel.candidates(model)]
    return names[len(names) // 2]


def skips(model):
    return [[], ["first"], ["last"], ["first", "last"], ["first", "last", middle(model)]]


# --- presets == today's code ------------------------------------------------------------------

def test_skip_selects_the_layers_resolve_skip_leaves(net):
    for skip in skips(net):
        want = [n for n, _ in layers(net, skip)]
        assert sel.selected(sel.plan(net, sel.from_skip(skip))) == want, skip
    assert sel.selected(sel.plan(net, sel.parse(sel.DEFAULT_QUANT_RULES))) == \
        [n for n, _ in layers(net, ["first", "last"])]


@pytest.mark.parametrize("method", ["xnor", "sspq"])
def test_layers_all_and_pointwise_select_what_the_quant_methods_swap(net, method, make_method):
    """xnor: layers: all; sspq: layers: pointwise (1x1 convs, groups=1); both skip first, last."""
    quant = make_method(method)
    swapped = [n for n, m in quant.apply(copy.deepcopy(net)).named_modules() if isinstance(m, QLayer)]
    rules = sel.from_layers(quant.layers, quant.skip)
    assert sel.selected(sel.plan(net, rules)) == swapped


def test_pointwise_selects_1x1_convs_with_one_group_only(net):
    got = sel.selected(sel.plan(net, sel.from_layers("pointwise", [])))
    for n, m in sel.candidates(net):
        pw = isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1) and m.groups == 1
        assert (n in got) == pw
    if isinstance(net, ShuffleNet):  # grouped 1x1 convs are not pointwise
        assert any(m.groups > 1 and m.kernel_size == (1, 1) for _, m in sel.candidates(net))


@pytest.mark.parametrize("kinds", [["fc", "conv"], ["fc"], ["conv"], []])
def test_kinds_select_low_ranks_layers(net, kinds):
    """low_rank.apply: the layers not skipped whose kind (fc: Linear, conv: Conv2d) is listed."""
    for skip in skips(net):
        want = [n for n, m in layers(net, skip) if ("fc" if isinstance(m, nn.Linear) else "conv") in kinds]
        assert sel.selected(sel.plan(net, sel.from_kinds(kinds, skip))) == want
    LowRank(kinds=kinds)  # today's validation accepts the same lists


def test_kind_map_gives_share_and_deep_compression_bits(net):
    for bits in ({"conv": 8, "fc": 5}, {"conv": 2, "fc": 7}):
        sched = Share(bits=bits, skip=["first"])
        rules = sel.from_skip(sched.skip) + sel.from_kind_map(sched.bits, "bits.w", "method.share.bits")
        p = sel.plan(net, rules)
        got = {n: p[n]["bits"]["w"] for n in sel.selected(p)}
        assert got == {n: _bits_for(m, sched.bits) for n, m in layers(net, sched.skip)}
        gap = _gap_bits(bits, "method.code")  # index_bits: compressed_file takes gap["conv"] for a Conv2d, else "fc"
        p = sel.plan(net, sel.from_kind_map(gap, "index_bits", "method.index_bits"))
        assert {n: s["index_bits"] for n, s in p.items()} == \
            {n: gap["conv"] if isinstance(m, nn.Conv2d) else gap["fc"] for n, m in sel.candidates(net)}


def test_kind_map_gives_product_quants_block_size_names_overriding_kinds(net):
    names = [n for n, _ in sel.candidates(net)]
    linear = next(n for n, m in sel.candidates(net) if isinstance(m, nn.Linear))
    conv = next((n for n, m in sel.candidates(net)
                 if isinstance(m, nn.Conv2d) and m.weight[0].numel() % 2 == 0), None)
    nested = {}
    for n in filter(None, (linear, conv)):  # {classifier: {1: 2}}: a dotted name nests (pq's _flat)
        *head, leaf = n.split(".")
        d = nested
        for h in head:
            d = d.setdefault(h, {})
        d[leaf] = 2
    for block_size in ({"conv": "kernel", "fc": 1}, {"conv": 1, "fc": 1, **nested}):
        pq = ProductQuant(block_size=block_size, skip=[])
        p = sel.plan(net, sel.from_kind_map(block_size, "block_size", "method.block_size"))
        assert list(p) == names
        for n, m in sel.candidates(net):
            d = p[n]["block_size"]
            assert pq.block_of(n, m) == (m.weight[0, 0].numel() if d == "kernel" else d)


@pytest.mark.parametrize("value", [0.5, 0, [0.1, 0.2, 0.3, 0.4], {"default": 0.3, "net.3": 0.9},
                                   {"net.1": 0.1, "net.3": 0.2, "net.5": 0.3, "net.7": 0.4}])
def test_per_layer_gives_prunes_values(value):
    net = MLP(hidden=(16, 16, 16))
    names = [n for n, _ in layers(net, [])]
    p = sel.plan(net, sel.from_skip([]) + sel.from_per_layer(value, names))
    assert {n: p[n]["sparsity"] for n in names} == per_layer(value, names, "method.sparsity", 0.0, 1.0)


@pytest.mark.parametrize("value", [[0.1, 0.2], {"net.9": 0.5, "default": 0.1}, {"net.1": 0.5},
                                   1.5, "half", True, {"default": -0.1}])
def test_per_layer_errors_are_prunes_errors(value):
    names = [n for n, _ in layers(MLP(hidden=(16, 16, 16)), [])]
    with pytest.raises(ConfigError) as want:
        per_layer(value, names, "method.sparsity", 0.0, 1.0)
    with pytest.raises(ConfigError) as got:
        sel.from_per_layer(value, names)
    assert str(got.value) == str(want.value)


def test_quality_is_an_extra_setting_with_its_own_range():
    names = ["net.1", "net.3"]
    rules = sel.from_per_layer({"default": 40}, names, "quality", "method.quality", 0, 100)
    assert all(r.settings == {"quality": 40.0} for r in rules)


# --- the grammar ------------------------------------------------------------------------------

def test_later_rules_override_earlier_ones_key_by_key_and_bits_role_by_role():
    p = sel.plan(LeNet5(), sel.parse([
        {"type": ["conv", "linear"], "bits": {"w": 2, "a": 2, "g": 32}, "sparsity": 0.5},
        {"type": "conv", "bits": {"w": 4}},
        {"name": "classifier.*", "sparsity": 0.9, "block_size": 4},
        {"name": ["first", "last"], "quantize": False},
        {"name": "features.0", "quantize": True},
    ], extra=["block_size"]))
    assert p == {
        "features.0": {"quantize": True, "bits": {"w": 4, "a": 2, "g": 32}, "sparsity": 0.5},
        "features.2": {"quantize": True, "bits": {"w": 4, "a": 2, "g": 32}, "sparsity": 0.5},
        "classifier.1": {"quantize": True, "bits": {"w": 2, "a": 2, "g": 32}, "sparsity": 0.9,
                         "block_size": 4},
        "classifier.3": {"quantize": False, "bits": {"w": 2, "a": 2, "g": 32}, "sparsity": 0.9,
                         "block_size": 4},
    }


def test_name_and_type_both_must_match_and_unmatched_layers_are_absent():
    net = mobilenet_v2(image_size=32, num_classes=10)
    p = sel.plan(net, sel.parse([{"name": "features.1*", "type": "depthwise", "rank": 3}]))
    assert p and all(n.startswith("features.1") for n in p)
    mods = dict(net.named_modules())
    assert all(mods[n].groups == mods[n].in_channels > 1 for n in p)
    assert sel.plan(net, sel.parse([{"type": "Linear"}])) == {"classifier.1": {"quantize": True}}


def test_candidates_are_exact_conv_and_linear_or_the_given_list():
    net = LeNet5()
    p = sel.plan(net, sel.parse(sel.ALL), layers=[(n, m) for n, m in sel.candidates(net)
                                                   if isinstance(m, nn.Conv2d)])
    assert list(p) == ["features.0", "features.2"]  # first/last now refer to this list


@pytest.mark.parametrize("rules,msg", [
    ([{"name": "conv1"}, {"name": "foo*"}],
     "method.layers[1].name=foo*: matches no Conv2d/Linear layer; valid names: first, last, conv1, "),
    ([{"name": "fc", "type": "conv"}], "method.layers[0].name=fc: matches no conv layer"),
    ([{"nmae": "conv1"}], "method.layers[0].nmae: unknown key; valid: name, type, quantize, bits"),
    ([{"block_size": 4}], "method.layers[0].block_size: unknown key"),
    ([{"type": "attention"}], "method.layers[0].type=attention: valid: conv, linear"),
    ([{"bits": {"w": 0}}], "method.layers[0].bits.w=0: must be an integer in 1..32"),
    ([{"bits": {"w": 33}}], "method.layers[0].bits.w=33: must be an integer in 1..32"),
    ([{"bits": {"w": 2.5}}], "method.layers[0].bits.w=2.5"),
    ([{"bits": {"x": 2}}], "method.layers[0].bits={'x': 2}: must be a mapping of w, a, g"),
    ([{"sparsity": 1.01}], "method.layers[0].sparsity=1.01: must be a number in [0, 1]"),
    ([{"sparsity": -0.1}], "method.layers[0].sparsity=-0.1"),
    ([{"rank": 0}], "method.layers[0].rank=0: must be an integer >= 1"),
    ([{"rank": 1.5}], "method.layers[0].rank=1.5"),
    ([{"quantize": "no"}], "method.layers[0].quantize=no: must be true or false"),
    ([{"name": []}], "method.layers[0].name=[]: must be a string or a non-empty list"),
    ({"name": "conv1"}, "method.layers={'name': 'conv1'}: must be a list of rules"),
])
def test_bad_rules_are_one_line_config_errors_naming_the_key(rules, msg):
    with pytest.raises(ConfigError) as e:
        sel.plan(CifarResNet(depth=8), sel.parse(rules))
    assert str(e.value).startswith(msg) and "\n" not in str(e.value)


def test_valid_edges_and_preset_errors():
    net = CifarResNet(depth=8)
    p = sel.plan(net, sel.parse([{"bits": {"w": 1, "a": 32}, "sparsity": 1, "rank": 1.0}]))
    assert p["fc"] == {"quantize": True, "bits": {"w": 1, "a": 32}, "sparsity": 1, "rank": 1.0}
    assert sel.plan(LeNet5(), sel.parse([{"type": "pointwise", "quantize": True}])) == {}  # type only
    with pytest.raises(ConfigError, match=r"^method.skip\[1\]=layers.9.conv1: matches no Conv2d/Linear"):
        sel.plan(net, sel.from_skip(["first", "layers.9.conv1"]))
    with pytest.raises(ConfigError, match=r"^method.layers=some: valid: all, pointwise"):
        sel.from_layers("some")
    with pytest.raises(ConfigError, match=r"^method.kinds=fc: a list of fc, conv"):
        sel.from_kinds("fc")
    with pytest.raises(ConfigError, match=r"^method.block_size=\{'conv': 4\}: needs the keys conv and fc"):
        sel.from_kind_map({"conv": 4}, "block_size", "method.block_size")
    with pytest.raises(ConfigError, match=r"^method.block_size=fc9: matches no Conv2d/Linear layer"):
        sel.plan(net, sel.from_kind_map({"conv": 4, "fc": 4, "fc9": 2}, "block_size", "method.block_size"))
    with pytest.raises(ConfigError, match=r"^method.share.bits\[0\].bits.w=40"):
        sel.from_kind_map({"conv": 40, "fc": 4}, "bits.w", "method.share.bits")
