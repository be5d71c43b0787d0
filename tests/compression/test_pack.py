"""Packed export: bit packing, exact round trip to identical predictions, size near theory."""
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lightning_modules.compression.quantization.pack import factor_rows, pack_bits, payload, unpack_bits
from lightning_modules.compression.quantization.qlayers import QLayer
from lightning_modules.models import LeNet5

CONF = Path(__file__).resolve().parents[2] / "conf"
# every quantization method in conf/method (the ones built on quant_methods.py)
METHODS = sorted(p.stem for p in (CONF / "method").glob("*.yaml")
                 if "compression.quantization.methods." in p.read_text())


@pytest.mark.parametrize("k", [1, 2, 3, 4, 5, 7, 8, 12])
def test_pack_bits_round_trip_and_size(k):
    rng = np.random.default_rng(k)
    codes = rng.integers(0, 2 ** k, size=1001)
    packed = pack_bits(codes, k)
    assert packed.dtype == np.uint8 and packed.size == math.ceil(1001 * k / 8)
    assert np.array_equal(unpack_bits(packed, k, 1001), codes)


def test_one_bit_codes_are_numpy_packbits():
    codes = np.array([1, 0, 1, 1, 0, 0, 0, 1, 1, 1])
    assert np.array_equal(pack_bits(codes, 1), np.packbits(codes.astype(np.uint8)))
    assert pack_bits(codes, 1).tolist() == [0b10110001, 0b11000000]


def test_factor_rows_is_exact():
    w = torch.tensor([[0.5, -0.5, 0.5, 0.5], [0.0, 2.0, -1.0, 2.0]])
    codes, table = factor_rows(w)
    assert table.tolist() == [[-0.5, 0.5, 0.5], [-1.0, 0.0, 2.0]]  # row 0 padded with its max
    assert codes.tolist() == [[1, 0, 1, 1], [1, 2, 0, 2]]
    assert torch.equal(table.gather(1, codes), w)


def trained(make_method, name, steps=2):
    """LeNet-5 under method `name` after a few SGD steps (TTQ scales, LQ bases have moved)."""
    torch.manual_seed(0)
    method = make_method(name)
    model = method.apply(LeNet5())
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    for _ in range(steps):
        x, y = torch.randn(8, 1, 28, 28), torch.randint(0, 10, (8,))
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
        method.after_step(model, 0.05)
    return method, model


@pytest.mark.parametrize("name", METHODS)
def test_export_load_identical_predictions(name, tmp_path, make_method):
    method, model = trained(make_method, name)
    model.train()
    path = method.export(model, tmp_path / "model.pt")
    assert model.training  # export leaves the mode as it was
    x = torch.randn(16, 1, 28, 28)
    model.eval()
    with torch.no_grad():
        want = model(x)
    torch.manual_seed(123)  # a fresh net with other weights: everything must come from the file
    loaded = make_method(name).load(LeNet5(), path).eval()
    with torch.no_grad():
        got = loaded(x)
    assert torch.equal(got, want)
    # the loaded layers hold the quantized weights themselves, at most 2^w values per channel
    w_bits = make_method(name).bits["w"]
    real = getattr(method, "test_time", None) == "real" and method.stochastic  # stored raw
    for m in loaded.modules():
        if isinstance(m, QLayer):
            assert m.weight_quant is None
            if real:
                continue
            rows = m.weight.reshape(m.weight.shape[0], -1)
            assert max(torch.unique(r).numel() for r in rows) <= 2 ** w_bits


def test_xnor_lenet5_file_size_near_theory(tmp_path, make_method):
    method, model = trained(make_method, "xnor", steps=1)
    path = method.export(model, tmp_path / "model.pt")
    # binary: conv2 20*50*5*5 and ip1 800*500 weights at 1 bit, one alpha per output channel;
    # float32: conv1 (500 + 20), ip2 (5000 + 10) and the biases of conv2 (50) and ip1 (500)
    # and the input BatchNorm of the two binary layers (weight, bias, running mean and var per
    # channel of conv1's 20 and conv2's 50 maps: 4 x (20 + 50) floats; XNOR-Net's block order
    # BN -> BinActiv -> BinConv)
    binary, alphas, fp = 25_000 + 400_000, 50 + 500, 520 + 5010 + 50 + 500 + 4 * (20 + 50)
    theory = binary // 8 + 4 * (alphas + fp)
    p = payload(path)
    assert p["codes"] == binary // 8 and p["codebooks"] == 4 * alphas and p["floats"] == 4 * fp
    overhead = p["file"] - (p["codes"] + p["codebooks"] + p["floats"])
    assert 0 < overhead < 4096  # container.py: the prelude and the deflated header
    assert p["file"] <= 1.10 * theory
    print(f"xnor LeNet-5: file {p['file']} B, theory {theory} B, container {overhead} B, "
          f"ratio {p['file'] / theory:.4f}")


def test_xnor_lenet5_file_at_least_20x_smaller_than_fp32(tmp_path, make_method):
    from lightning_modules.compression.method import FullPrecision
    fp32 = FullPrecision().export(LeNet5(), tmp_path / "fp32.pt").stat().st_size
    method, model = trained(make_method, "xnor", steps=1)
    xnor = method.export(model, tmp_path / "xnor.pt").stat().st_size
    assert fp32 / xnor >= 20, (fp32, xnor)


def test_binaryconnect_lenet5_codes_are_one_bit(tmp_path, make_method):
    method, model = trained(make_method, "binaryconnect", steps=1)
    p = payload(method.export(model, tmp_path / "model.pt"))
    assert p["codes"] == 425_000 // 8 and p["codebooks"] <= 4 * 2  # {-1, +1}: one float per layer


def test_stochastic_binaryconnect_test_time_weights(tmp_path):
    """The paper's stochastic BC tests with the real-valued weights (stored raw float32, the file
    as large as FP32's); test_time=binary deploys the deterministic sign at 1 bit."""
    from tests.compression.conftest import build_method
    sizes = {}
    for test_time in ("real", "binary"):
        torch.manual_seed(0)
        method = build_method("binaryconnect_stochastic")
        method.test_time = test_time
        model = method.apply(LeNet5()).eval()
        p = payload(method.export(model, tmp_path / f"{test_time}.pt"))
        sizes[test_time] = p
        x = torch.randn(4, 1, 28, 28)
        loaded = build_method("binaryconnect_stochastic").load(LeNet5(), tmp_path / f"{test_time}.pt")
        with torch.no_grad():
            assert torch.equal(loaded.eval()(x), model(x))
    assert sizes["real"]["codes"] == 0 and sizes["real"]["floats"] >= 4 * 425_000
    assert sizes["binary"]["codes"] == 425_000 // 8


def test_load_rejects_other_files(tmp_path, make_method):
    torch.save({"weight": torch.zeros(1)}, tmp_path / "plain.pt")
    with pytest.raises(ValueError, match="not a packed file"):
        make_method("xnor").load(LeNet5(), tmp_path / "plain.pt")
