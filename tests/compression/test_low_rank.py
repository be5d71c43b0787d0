"""Low-rank approximation: SVD and Tucker-2 against the math (exact at full rank, Eckart-Young
error, parameter formulas), rank rules, real smaller layers (params, FlopCounterMode FLOPs),
init_from a trained run, the file, the harness."""
from pathlib import Path

import pytest
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from dc_helpers import outputs, sgd_steps
from lightning_modules.compression.errors import FileFormatError
from lightning_modules.compression.factorization.low_rank import (FactoredLinear, LowRank, Tucker2Conv,
                                                    choose_ranks, energy_rank, factor, factored_params,
                                                    svd_factors, tucker2_factors)
from lightning_modules.config_check import ConfigError
from lightning_modules.earlier_runs import resolve_references
from lightning_modules.models import CifarResNet, LeNet5, LeNet300
from tests.compression.test_distill import make_run


def resnet8():
    return CifarResNet(depth=8, in_channels=1, image_size=28)


NETS = {"lenet300": LeNet300, "lenet5": LeNet5, "resnet8": resnet8}


def n_params(net):
    return sum(p.numel() for p in net.parameters())


def counted_flops(net):
    net.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as c:
        net(torch.zeros(1, 1, 28, 28))
    return int(c.get_total_flops())


# --- the factorizations -------------------------------------------------------------------------

@pytest.mark.parametrize("bias", [True, False])
def test_svd_at_full_rank_is_the_layer_and_params_are_r_m_plus_n(bias):
    torch.manual_seed(0)
    layer, x = nn.Linear(30, 20, bias=bias), torch.randn(5, 30)
    for r in (20, 7):
        f = factor(layer, [r])
        assert isinstance(f, FactoredLinear) and f.ranks == [r]
        assert n_params(f) == r * (20 + 30) + 20 * bias == factored_params(layer, [r]) + 20 * bias
    assert torch.allclose(factor(layer, [20])(x), layer(x), atol=1e-5)


def test_truncated_svd_is_the_best_rank_r_approximation():
    torch.manual_seed(0)
    W = torch.randn(12, 9)
    s = torch.linalg.svdvals(W.double())
    for r in (1, 4, 9):
        first, second = svd_factors(W, r)
        err = ((W.double() - second @ first) ** 2).sum()
        assert err.item() == pytest.approx((s[r:] ** 2).sum().item(), abs=1e-9)  # Eckart-Young
        assert torch.allclose(first.norm(dim=1), second.norm(dim=0))  # S^1/2 on both sides


@pytest.mark.parametrize("geometry", [{}, {"stride": 2, "padding": 1},
                                      {"padding": 2, "dilation": 2, "bias": False}])
def test_tucker2_at_full_ranks_is_the_conv_and_params_follow_the_formula(geometry):
    torch.manual_seed(0)
    conv, x = nn.Conv2d(6, 8, 3, **geometry), torch.randn(2, 6, 11, 11)
    bias = conv.bias is not None
    f = factor(conv, [6, 8])
    assert isinstance(f, Tucker2Conv) and f.ranks == [6, 8]
    assert torch.allclose(f(x), conv(x), atol=1e-5)
    for r1, r2 in ((6, 8), (3, 4), (1, 1)):
        f = factor(conv, [r1, r2])
        assert n_params(f) == 6 * r1 + r1 * r2 * 9 + r2 * 8 + 8 * bias
        assert factored_params(conv, [r1, r2]) == 6 * r1 + r1 * r2 * 9 + r2 * 8


def test_truncated_tucker2_is_the_projection_onto_the_leading_mode_subspaces():
    torch.manual_seed(0)
    conv, x = nn.Conv2d(6, 8, 3, padding=1), torch.randn(2, 6, 7, 7)
    first, core, last = tucker2_factors(conv.weight, 3, 4)
    assert torch.allclose(first @ first.T, torch.eye(3, dtype=torch.float64), atol=1e-10)  # orthonormal
    assert torch.allclose(last.T @ last, torch.eye(4, dtype=torch.float64), atol=1e-10)
    W = conv.weight.detach().double()
    Pin, Pout = first.T @ first, last @ last.T
    want = torch.einsum("oikl,po,qi->pqkl", W, Pout, Pin)  # W x_out P_out x_in P_in
    assert torch.allclose(torch.einsum("rskl,or,si->oikl", core, last, first), want, atol=1e-10)
    f = factor(conv, [3, 4])
    ref = nn.functional.conv2d(x, want.float(), conv.bias, padding=1)
    assert torch.allclose(f(x), ref, atol=1e-5)


# --- ranks ----------------------------------------------------------------------------------------

def test_energy_rank_by_hand():
    s = torch.tensor([3.0, 2.0, 1.0])  # energies 9, 4, 1 of 14
    assert [energy_rank(s, e) for e in (0.5, 9 / 14, 0.9, 13 / 14, 0.95, 1.0)] == [1, 1, 2, 2, 3, 3]


@pytest.mark.parametrize("ratio", [0.5, 0.2])
def test_params_ratio_bounds_each_layers_weights(ratio):
    torch.manual_seed(0)
    for layer in (nn.Linear(300, 100), nn.Conv2d(20, 50, 5), nn.Conv2d(16, 32, 3)):
        ranks = choose_ranks(layer, None, ratio)
        assert factored_params(layer, ranks) <= ratio * layer.weight.numel()
        bigger = [r + 1 for r in ranks]  # one more of every rank exceeds the budget
        assert factored_params(layer, bigger) > ratio * layer.weight.numel()


def test_energy_ranks_are_the_mode_ranks_of_the_weights():
    torch.manual_seed(0)
    conv = nn.Conv2d(8, 12, 3)
    with torch.no_grad():  # mode-in rank 3, mode-out rank 5: a Tucker core of 5 x 3 is exact
        conv.weight.copy_(torch.einsum("rskl,or,is->oikl", torch.randn(5, 3, 3, 3), torch.randn(12, 5),
                                       torch.randn(8, 3)))
    assert choose_ranks(conv, 1.0 - 1e-9, None) == [3, 5]
    x = torch.randn(2, 8, 6, 6)
    assert torch.allclose(factor(conv, [3, 5])(x), conv(x), atol=1e-4)


# --- the method on whole nets ---------------------------------------------------------------------

@pytest.mark.parametrize("name", NETS)
def test_apply_makes_real_smaller_layers(name):
    torch.manual_seed(0)
    full = NETS[name]()
    method = LowRank(energy=None, params_ratio=0.3)
    net = method.apply(NETS[name]())
    assert method.ranks and set(method.ranks) <= {n for n, m in full.named_modules()
                                                  if isinstance(m, (nn.Linear, nn.Conv2d))}
    assert n_params(net) < n_params(full)
    assert counted_flops(net) < counted_flops(full)
    sgd_steps(net, steps=1)  # trainable


def test_a_layer_that_would_not_shrink_is_kept():
    method = LowRank(energy=1.0)
    net = method.apply(LeNet300())  # random weights: full rank everywhere
    assert method.ranks == {} and all(type(m) is not FactoredLinear for m in net.modules())
    method = LowRank(energy=None, params_ratio=0.5,
                     layers=[{"type": "conv"}, {"name": "features.2", "quantize": False}])
    net = method.apply(LeNet5())
    assert list(method.ranks) == ["features.0"] and type(net.classifier[1]) is nn.Linear


def low_rank(init, results_dir, suite="s", **kw):
    """method=low_rank as run.build_method builds it: init_from's run found and loaded by the app."""
    cfg = {"_target_": "lightning_modules.compression.factorization.low_rank.LowRank", "init_from": init, **kw}
    try:
        return instantiate(resolve_references(cfg, results_dir, suite, (1, 28, 10)), _convert_="all")
    except InstantiationException as e:
        raise e.__cause__ from None


def test_init_from_a_file_a_run_directory_or_a_run_name(tmp_path):
    torch.manual_seed(0)
    trained = LeNet300()
    run = make_run(tmp_path, "lenet300-fp32-W32A32G32-32-s0", net=trained, suite="some_suite",
                   model="lenet300", hparams=False)
    for init in (str(run / "model.pt"), str(run), run.name):
        method = low_rank(init, tmp_path, energy=None, params_ratio=0.5)
        assert torch.equal(method.init_from["net.1.weight"], trained.net[1].weight)
        net = method.apply(LeNet300())  # other random weights: replaced by the run's before factoring
        want = factor(trained.net[1], method.ranks["net.1"])
        assert torch.equal(net.net[1][0].weight, want[0].weight)


@pytest.mark.parametrize("init,msg", [
    ("no-such-run", "method.init_from=no-such-run: no such file, run directory or run under"),
    ("lenet5", "method.init_from: its weights do not fit model LeNet300"),
    ("junk", "method.init_from=junk: cannot load"),
])
def test_bad_init_from_is_one_line(tmp_path, init, msg):
    make_run(tmp_path, "lenet5", net=LeNet5(), model="lenet5", hparams=False)
    junk = make_run(tmp_path, "junk", net=LeNet300(), model="lenet300", hparams=False)
    (junk / "model.pt").write_bytes(b"not a model file")
    with pytest.raises(ConfigError) as e:
        low_rank(init, tmp_path).apply(LeNet300())
    assert msg in str(e.value) and "\n" not in str(e.value)


# --- the file -------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", NETS)
def test_export_load_identical_predictions(tmp_path, name):
    torch.manual_seed(0)
    method = LowRank(energy=None, params_ratio=0.4)
    net = method.apply(NETS[name]())
    sgd_steps(net, steps=1)
    path = method.export(net, tmp_path / "model.lr")
    torch.manual_seed(99)
    loaded = LowRank().load(NETS[name](), path)
    assert torch.equal(outputs(loaded), outputs(net))
    assert [type(m) for m in loaded.modules()] == [type(m) for m in net.modules()]
    assert n_params(loaded) == n_params(net)


@pytest.mark.parametrize("how", ["truncated", "empty", "header", "payload", "checksum"])
def test_damaged_file_gives_one_clear_error(tmp_path, how):
    method = LowRank(energy=None, params_ratio=0.4)
    good = method.export(method.apply(LeNet5()), tmp_path / "model.lr")
    data = bytearray(good.read_bytes())
    if how == "truncated":
        data = data[: len(data) // 2]
    elif how == "empty":
        data = b""
    else:
        data[{"header": 9, "payload": len(data) // 2, "checksum": len(data) - 2}[how]] ^= 0x5A
    bad = tmp_path / "bad.lr"
    bad.write_bytes(bytes(data))
    fresh = LeNet5()
    before = {k: v.clone() for k, v in fresh.state_dict().items()}
    with pytest.raises(FileFormatError) as e:
        LowRank().load(fresh, bad)
    assert str(bad) in str(e.value) and "\n" not in str(e.value)
    assert all(torch.equal(before[k], v) for k, v in fresh.state_dict().items())


def test_file_of_another_model_or_format(tmp_path):
    method = LowRank(energy=None, params_ratio=0.4)
    path = method.export(method.apply(LeNet5()), tmp_path / "model.lr")
    with pytest.raises(FileFormatError, match="does not match the model"):
        LowRank().load(LeNet300(), path)
    with pytest.raises(FileFormatError, match="does not match the model"):
        LowRank().load(LeNet5(num_classes=7), path)
    torch.save(LeNet5().state_dict(), tmp_path / "plain.pt")
    with pytest.raises(FileFormatError, match="not a low_rank file"):
        LowRank().load(LeNet5(), tmp_path / "plain.pt")


# --- config ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("kw,msg", [
    ({"energy": 0.9, "params_ratio": 0.5}, "set exactly one of them"),
    ({"energy": None}, "method.energy=None, method.params_ratio=None: set exactly one"),
    ({"energy": 0}, "method.energy=0: must be a number in (0, 1]"),
    ({"energy": 1.5}, "method.energy=1.5"),
    ({"energy": None, "params_ratio": 2}, "method.params_ratio=2: must be a number in (0, 1]"),
    ({"layers": [{"type": ["linear", "attention"]}]}, "method.layers[0].type=attention: valid: conv, linear"),
    ({"layers": {"type": "linear"}}, "method.layers={'type': 'linear'}: must be a list of rules"),
])
def test_bad_config_is_one_line(kw, msg):
    with pytest.raises(ConfigError) as e:
        LowRank(**kw)
    assert msg in str(e.value) and "\n" not in str(e.value)


def test_yaml_builds_the_method():
    from hydra import compose, initialize_config_dir
    from lightning_modules.run import build_method
    with initialize_config_dir(str(Path(__file__).resolve().parents[2] / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=["method=low_rank", "results_dir=/somewhere"])
    method = build_method(cfg)
    assert isinstance(method, LowRank) and method.energy == 0.9 and method.init_from is None


# --- through the harness ----------------------------------------------------------------------------

@pytest.mark.slow
def test_train_py_fine_tunes_a_trained_run_factored(tmp_path, fmnist):
    from tests.conftest import only_record, train
    import json
    common = ["model=lenet5", "trainer.max_epochs=1", "data.train_subset=512", "data.test_subset=500",
              "data.val_size=500", "trainer.limit_val_batches=1", "measure.warmup_steps=2"]
    p = train([*common, "method=fp32"], tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    ref = only_record(tmp_path)
    p = train([*common, "method=low_rank", f"method.init_from={ref['run_name']}", "method.energy=0.8"],
              tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    recs = {r["method"]: r for r in (json.loads(f.read_text()) for f in tmp_path.rglob("record.json"))}
    rec = recs["low_rank"]
    assert rec["status"] == "ok" and rec["method_label"] == "Low rank (SVD / Tucker-2)"
    assert rec["params"] < ref["params"] and rec["flops"] < ref["flops"]
    net = LowRank().load(LeNet5(), rec["model_file"]).eval()
    assert n_params(net) == rec["params"]
    with torch.no_grad():
        pred = net(fmnist.x_test[:500]).argmax(1)
    assert (pred == fmnist.y_test[:500]).float().mean().item() == pytest.approx(rec["top1"], abs=1e-6)
    p = train([*common, "method=low_rank", "method.init_from=no-such-run"], tmp_path / "bad")
    assert p.returncode == 2 and "method.init_from=no-such-run" in p.stderr
    assert not (tmp_path / "bad" / "runs").exists()  # nothing written
