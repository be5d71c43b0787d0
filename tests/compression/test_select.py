"""The layer-selection grammar (compression/select.py): what the methods select with it (quantized
layers, factored ranks, shared bits, PQ block sizes, pruning sparsities), on our nets and
torchvision's; override order; errors."""
import copy

import pytest
import torch
from torch import nn

from lightning_modules.compression import select as sel
from lightning_modules.compression.errors import ConfigError
from lightning_modules.compression.factorization.low_rank import LowRank
from lightning_modules.compression.quantization.pq import ProductQuant
from lightning_modules.compression.pruning.magnitude import Prune
from lightning_modules.compression.quantization.qlayers import QLayer
from lightning_modules.compression.coding.share import Share, sharing
from lightning_modules.compression.quantization.product import pq_of
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


# --- the methods select layers by these rules --------------------------------------------------

def test_default_quant_rules_keep_the_first_and_last_layer_float(net):
    names = [n for n, _ in sel.candidates(net)]
    assert sel.selected(sel.plan(net, sel.parse(sel.DEFAULT_QUANT_RULES))) == names[1:-1]
    keep = ["first", "last", middle(net)]
    rules = sel.ALL + [{"name": k, "quantize": False} for k in keep]
    assert sel.selected(sel.plan(net, rules)) == [n for n in names[1:-1] if n != middle(net)]


@pytest.mark.parametrize("method", ["xnor", "sspq"])
def test_quant_methods_swap_exactly_the_layers_their_yaml_rules_choose(net, method, make_method):
    """xnor: every Conv2d/Linear; sspq: the 1x1 convs with one group; both keep first, last float."""
    quant = make_method(method)
    swapped = [n for n, m in quant.apply(copy.deepcopy(net)).named_modules() if isinstance(m, QLayer)]
    names = [n for n, m in sel.candidates(net)][1:-1]
    if method == "sspq":
        names = [n for n in names if sel.is_type(net.get_submodule(n), "pointwise")]
    assert swapped == names


def test_pointwise_selects_1x1_convs_with_one_group_only(net):
    got = sel.selected(sel.plan(net, [{"type": "pointwise"}]))
    for n, m in sel.candidates(net):
        pw = isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1) and m.groups == 1
        assert (n in got) == pw
    if isinstance(net, ShuffleNet):  # grouped 1x1 convs are not pointwise
        assert any(m.groups > 1 and m.kernel_size == (1, 1) for _, m in sel.candidates(net))


@pytest.mark.parametrize("types", [["linear", "conv"], ["linear"]])
def test_low_rank_factors_only_the_layers_its_rules_choose(types):
    torch.manual_seed(0)
    net = LeNet5()
    method = LowRank(energy=None, params_ratio=0.3, layers=[{"type": types}, {"name": "last", "quantize": False}])
    method.apply(net)
    want = [n for n, m in sel.candidates(LeNet5())[:-1] if any(sel.is_type(m, t) for t in types)]
    assert list(method.ranks) == want


def test_a_rank_rule_fixes_that_layers_rank():
    torch.manual_seed(0)
    method = LowRank(layers=[{"type": ["linear", "conv"]}, {"name": "classifier.1", "rank": 7},
                             {"name": "features.2", "rank": 3}])
    method.apply(LeNet5())
    assert method.ranks["classifier.1"] == [7] and method.ranks["features.2"] == [3, 3]


def test_share_bits_per_kind_and_a_rule_for_one_layer(net):
    torch.manual_seed(0)
    names = [n for n, _ in sel.candidates(net)]
    method = Share(bits={"conv": 6, "fc": 3}, layers=[{"name": "*"}, {"name": "first", "quantize": False},
                                                       {"name": "last", "bits": {"w": 2}}])
    shared = method.apply(copy.deepcopy(net))
    assert method.names == names[1:]
    for n in names[1:]:
        m = shared.get_submodule(n)
        want = 2 if n == names[-1] else 6 if isinstance(m, nn.Conv2d) else 3
        assert sharing(m).centroids.numel() == 2 ** want, n


def test_product_quant_block_sizes_by_kind_name_and_rule(net):
    """The block-size map (per kind, a dotted layer name nested as a Hydra override nests it), then
    the `layers` rules (later: they override the map)."""
    linears = [n for n, m in sel.candidates(net) if isinstance(m, nn.Linear)]
    first_linear, last = linears[0], sel.candidates(net)[-1][0]
    *head, leaf = first_linear.split(".")
    nested = {leaf: 1}
    for h in reversed(head):  # {classifier: {1: 1}}
        nested = {h: nested}
    method = ProductQuant(centroids=2, block_size={"conv": "kernel", "fc": 2, **nested},
                          layers=[{"name": "*"}, {"name": "last", "block_size": 1}])
    quantized = method.apply(copy.deepcopy(net))
    for n, m in sel.candidates(net):
        d = 1 if n in (first_linear, last) else 2 if isinstance(m, nn.Linear) else m.weight[0, 0].numel()
        assert pq_of(quantized.get_submodule(n)).codebook.shape[1] == d, n


@pytest.mark.parametrize("value,want", [
    (0.5, [0.5, 0.5, 0.5, 0.5]), (0, [0.0, 0.0, 0.0, 0.0]), ([0.1, 0.2, 0.3, 0.4], [0.1, 0.2, 0.3, 0.4]),
    ({"default": 0.3, "net.3": 0.9}, [0.3, 0.9, 0.3, 0.3]),
    ({"net.1": 0.1, "net.3": 0.2, "net.5": 0.3, "net.7": 0.4}, [0.1, 0.2, 0.3, 0.4])])
def test_per_layer_sparsity_a_number_a_list_or_a_map(value, want):
    net = MLP(hidden=(16, 16, 16))
    names = [n for n, _ in sel.candidates(net)]
    p = sel.plan(net, sel.from_per_layer(value, names))
    assert [p[n]["sparsity"] for n in names] == want
    method = Prune(sparsity=value, layers=[{"name": "*"}, {"name": "net.5", "sparsity": 0.75}])
    method.apply(net)
    assert list(method.targets.values()) == [*want[:2], 0.75, want[3]]  # the rule overrides


@pytest.mark.parametrize("value,msg", [
    ([0.1, 0.2], r"method.sparsity=\[0.1, 0.2\]: needs 4 values, one per layer"),
    ({"net.9": 0.5, "default": 0.1}, "method.sparsity.net.9: not a pruned layer"),
    ({"net.1": 0.5}, "give every layer"), (1.5, r"method.sparsity=1.5 \(layer net.1\): must be a number in"),
    ("half", "method.sparsity=half"), (True, "method.sparsity=True"), ({"default": -0.1}, "-0.1")])
def test_per_layer_errors(value, msg):
    names = [n for n, _ in sel.candidates(MLP(hidden=(16, 16, 16)))]
    with pytest.raises(ConfigError, match=msg) as e:
        sel.from_per_layer(value, names)
    assert "\n" not in str(e.value)


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
    with pytest.raises(ConfigError, match=r"^method.layers\[1\].name=layers.9.conv1: matches no Conv2d/Linear"):
        sel.plan(net, sel.parse([{"name": "first"}, {"name": "layers.9.conv1", "quantize": False}]))
    with pytest.raises(ConfigError, match=r"^method.block_size=\{'conv': 4\}: needs the keys conv and fc"):
        sel.from_kind_map({"conv": 4}, "block_size", "method.block_size")
    with pytest.raises(ConfigError, match=r"^method.block_size=fc9: matches no Conv2d/Linear layer"):
        sel.plan(net, sel.from_kind_map({"conv": 4, "fc": 4, "fc9": 2}, "block_size", "method.block_size"))
    with pytest.raises(ConfigError, match=r"^method.share.bits\[0\].bits.w=40"):
        sel.from_kind_map({"conv": 40, "fc": 4}, "bits.w", "method.share.bits")
