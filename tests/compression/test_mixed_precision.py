"""Mixed precision is a config: a `layers` rule with its own bits gives its layers their own triple,
and those bits reach the quantizers, the record's per-layer rows (cost.py: BOPs at each layer's
bits), the packed file (each layer coded at its own bits) and the reloaded model."""
import pytest
import torch

from lightning_modules.compression import container
from lightning_modules.compression.cost import cost
from lightning_modules.compression.errors import ConfigError
from lightning_modules.compression.quantization.methods import DoReFa, XNOR
from lightning_modules.compression.quantization.polino_methods import PolinoQuant
from lightning_modules.compression.select import DEFAULT_QUANT_RULES
from lightning_modules.models import LeNet5

W2A2 = {"w": 2, "a": 2, "g": 32}
MIXED = [*DEFAULT_QUANT_RULES, {"name": "classifier.1", "bits": {"w": 4, "a": 8}}]


def levels_per_row(w: torch.Tensor) -> int:
    return max(len(torch.unique(r)) for r in w.detach().reshape(w.shape[0], -1))


def test_a_rule_gives_its_layer_its_own_bits_everywhere(tmp_path):
    torch.manual_seed(0)
    method = DoReFa(W2A2, layers=MIXED)
    model = method.apply(LeNet5()).eval()
    bits = method.layer_bits(model)
    assert bits == {"features.2": {"w": 2, "a": 2, "g": 32}, "classifier.1": {"w": 4, "a": 8, "g": 32}}
    with torch.no_grad():
        w2 = model.features[2].quantized_weight()
        w4 = model.classifier[1].quantized_weight()
    assert levels_per_row(w2) <= 4 < levels_per_row(w4) <= 16  # DoReFa k-bit weights: 2^k levels

    # BOPs per layer at its own bits: MACs x W x A
    c = cost(model, (1, 28, 28), bits, flops=0)
    rows = {r["name"]: r for r in c["layers"]}
    assert rows["features.2"]["bops"] == rows["features.2"]["macs"] * 2 * 2
    assert rows["classifier.1"]["bops"] == rows["classifier.1"]["macs"] * 4 * 8
    assert rows["features.0"]["bops"] == 0 and rows["features.0"]["bits"]["w"] == 32
    assert c["bops"] == rows["features.2"]["bops"] + rows["classifier.1"]["bops"]

    # the packed file codes each layer at its own bits, and reloads to the same predictions
    path = method.export(model, tmp_path / "mixed.pt")
    coded = {m["name"]: m["bits"] for m in container.read(path, "packed")["layers"]}
    assert coded["features.2"] <= 2 < coded["classifier.1"] <= 4
    x = torch.randn(4, 1, 28, 28)
    loaded = DoReFa(W2A2, layers=MIXED).load(LeNet5(), path).eval()
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    uniform = DoReFa(W2A2).apply(LeNet5()).eval()
    assert method.export(uniform, tmp_path / "w2.pt").stat().st_size < path.stat().st_size


def test_polino_weight_bits_per_layer():
    torch.manual_seed(0)
    method = PolinoQuant({"w": 2, "a": 32, "g": 32}, layers=[{"name": "*"}, {"name": "last", "bits": {"w": 6}}])
    model = method.apply(LeNet5())
    bits = method.layer_bits(model)
    assert bits["classifier.3"]["w"] == 6 and {b["w"] for n, b in bits.items() if n != "classifier.3"} == {2}
    assert levels_per_row(model.classifier[3].quantized_weight()) > 4


@pytest.mark.parametrize("method,rules,msg", [
    (XNOR, [*DEFAULT_QUANT_RULES, {"name": "classifier.1", "bits": {"w": 2}}],
     r"^method.layers\[3\].bits.w=2: not valid for method xnor; valid: 1"),
    (DoReFa, [{"type": "conv", "bits": {"w": 40}}], r"^method.layers\[0\].bits.w=40: must be"),
    (DoReFa, [{"name": "features.9"}], r"^method.layers\[0\].name=features.9: matches no"),
])
def test_bad_rules_are_one_line_errors(method, rules, msg):
    with pytest.raises(ConfigError, match=msg) as e:
        method({"w": 1, "a": 1, "g": 32}, layers=rules).apply(LeNet5())
    assert "\n" not in str(e.value)
