"""Group lasso (Wen et al. 2016): the penalty against a hand example, the proximal step against
the group soft-threshold, groups driven to exactly zero by training, their removal (smaller
layers, same outputs, FlopCounterMode FLOPs), the file, the harness."""
import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from dc_helpers import outputs, sgd_steps
from lightning_modules.compression.errors import FileFormatError
from lightning_modules.compression.pruning.channels import channel_groups
from lightning_modules.compression.pruning.group_lasso import GroupLasso, group_matrix, group_norms, penalty, prox
from lightning_modules.config_check import ConfigError
from lightning_modules.models import CifarResNet, LeNet5, MobileNetV1


def resnet8():
    return CifarResNet(depth=8, in_channels=1, image_size=28)


NETS = {"resnet8": resnet8, "lenet5": LeNet5}
STRENGTH = {"resnet8": 10.0, "lenet5": 5.0}  # some feature maps of some producers die in 30 steps


def n_params(net):
    return sum(p.numel() for p in net.parameters())


def counted_flops(net):
    net.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as c:
        net(torch.zeros(1, 1, 28, 28))
    return int(c.get_total_flops())


def sparse(name, steps=30, seed=0):
    """A net trained `steps` Adam steps (random data) with the proximal group lasso."""
    torch.manual_seed(seed)
    method = GroupLasso(strength=STRENGTH[name])
    net = method.apply(NETS[name]())
    sgd_steps(net, steps=steps, optimizer=torch.optim.Adam(net.parameters(), lr=1e-2), method=method)
    return method, net


# --- the regulariser --------------------------------------------------------------------------------

def test_penalty_equals_the_formula_on_a_hand_example():
    net = LeNet5()
    with torch.no_grad():
        for p in net.parameters():
            p.zero_()
        net.features[0].weight[0, 0, 0, 0] = 3.0  # conv1 feature map 0: filter ...
        net.features[0].bias[0] = 4.0             # ... its bias ...
        net.features[2].weight[1, 0, 2, 2] = 12.0  # ... and conv2's input channel 0 (also conv2's filter 1)
        net.classifier[1].weight[7, 1 * 16 + 5] = 5.0  # ip1's columns of conv2's feature map 1
    norms = group_norms(net)
    assert norms[0][0].item() == pytest.approx(13.0) and not norms[0][1:].any()  # sqrt(9 + 16 + 144)
    assert norms[1][1].item() == pytest.approx(13.0)  # sqrt(144 + 25)
    assert not torch.cat([norms[1][:1], norms[1][2:]]).any()
    assert penalty(net, 0.01).item() == pytest.approx(0.01 * (13 + 13))


def test_group_rows_hold_every_weight_of_the_feature_map():
    net = resnet8()
    g = channel_groups(net)[1]  # layers.1: conv1 16 -> 32, bn1, conv2 32 -> 32
    m = group_matrix(net, g)
    assert m.shape == (32, 16 * 9 + 2 + 32 * 9)
    c = 5
    want = torch.cat([net.layers[1].conv1.weight[c].flatten(), net.layers[1].bn1.weight[c:c + 1],
                      net.layers[1].bn1.bias[c:c + 1], net.layers[1].conv2.weight[:, c].flatten()])
    assert torch.equal(m[c], want)


def test_penalty_gradient_is_finite_at_a_zero_group():
    net = resnet8()
    with torch.no_grad():
        for t in (net.layers[0].conv1.weight[3], net.layers[0].conv2.weight[:, 3]):
            t.zero_()
        net.layers[0].bn1.weight[3] = 0
        net.layers[0].bn1.bias[3] = 0
    penalty(net, 1.0).backward()
    assert all(torch.isfinite(p.grad).all() for p in net.parameters() if p.grad is not None)
    assert not net.layers[0].conv1.weight.grad[3].any()  # subgradient 0 at the kink


def test_prox_is_the_group_soft_threshold():
    torch.manual_seed(0)
    net = resnet8()  # groups of different blocks do not overlap: the step is the exact prox
    before = [group_matrix(net, g).detach().clone() for g in channel_groups(net)]
    norms = [b.norm(dim=1) for b in before]
    t = float(torch.cat(norms).median())
    prox(net, t)
    for g, b, n in zip(channel_groups(net), before, norms):
        after = group_matrix(net, g).detach()
        assert torch.allclose(after.norm(dim=1), (n - t).clamp(min=0), atol=1e-6)
        assert not after[n <= t].any()  # exactly zero
        keep = n > t
        assert torch.allclose(after[keep], b[keep] * (1 - t / n[keep])[:, None], atol=1e-6)  # same direction


# --- training ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", NETS)
def test_training_drives_groups_exactly_to_zero_and_finalize_removes_them(name):
    method, net = sparse(name)
    dead = [int((n == 0).sum()) for n in group_norms(net)]
    assert sum(dead) > 0 and all(d < len(n) for d, n in zip(dead, group_norms(net)))
    want = outputs(net)
    full_flops = counted_flops(NETS[name]())
    net = method.finalize(net)
    assert method.removed == {g.producer: d for g, d in zip(channel_groups(NETS[name]()), dead)}
    full = NETS[name]()
    for g, d in zip(channel_groups(full), dead):
        assert net.get_submodule(g.producer).out_channels == full.get_submodule(g.producer).out_channels - d
    assert all(n.min() > 0 for n in group_norms(net))
    assert torch.allclose(outputs(net), want, atol=1e-5)  # the removed feature maps were exactly zero
    assert n_params(net) < n_params(NETS[name]()) and counted_flops(net) < full_flops
    sgd_steps(net, steps=1)  # a plain model, still trainable


def test_after_step_is_the_proximal_step_at_lr_times_lambda():
    torch.manual_seed(0)
    method = GroupLasso(strength=1e6)
    net = method.apply(LeNet5())
    other = LeNet5()
    sgd_steps(other, steps=1, optimizer=torch.optim.SGD(other.parameters(), lr=0.1))  # no method
    assert all(n.min() > 0 for n in group_norms(net)) and all(n.min() > 0 for n in group_norms(other))
    sgd_steps(net, steps=1, optimizer=torch.optim.SGD(net.parameters(), lr=0.1), method=method)
    assert all(not n.any() for n in group_norms(net))  # lr * lambda beyond every norm: all zero
    assert all(n.min() > 0 for n in group_norms(other))
    torch.manual_seed(0)
    small = GroupLasso(strength=1e-3)
    net = small.apply(resnet8())  # groups that do not overlap: the step is the exact prox
    before = [n.detach().clone() for n in group_norms(net)]
    small.after_step(net, 0.5)  # one prox step of t = 0.5e-3: every norm shrinks by exactly t
    for b, a in zip(before, group_norms(net)):
        assert torch.allclose(a, (b - 0.5e-3).clamp(min=0), atol=1e-6)


def test_subgradient_mode_adds_the_penalty_to_the_loss():
    torch.manual_seed(0)
    method = GroupLasso(strength=0.5, proximal=False)
    net = method.apply(LeNet5())
    x, y = torch.randn(4, 1, 28, 28), torch.randint(0, 10, (4,))
    logits = net(x)
    assert torch.allclose(method.loss(logits, y, (x, y)), F.cross_entropy(logits, y) + penalty(net, 0.5))
    assert GroupLasso().loss(logits, y, (x, y)) is None  # proximal: the plain cross-entropy


def test_threshold_and_min_channels():
    method, net = sparse("lenet5")
    norms = group_norms(net)
    cut = float(norms[1][norms[1] > 0].median().detach())
    method.threshold, method.min_channels = cut, 3
    keep = method.keep(net)
    assert len(keep["features.2"]) == int((norms[1] > cut).sum())
    method.threshold = 1e9  # everything below: the 3 largest feature maps stay
    keep = method.keep(net)
    for idx, n in zip(keep.values(), norms):
        assert torch.equal(idx, torch.sort(torch.argsort(n, descending=True, stable=True)[:3]).values)


# --- the file ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", NETS)
def test_export_load_identical_predictions(tmp_path, name):
    method, net = sparse(name)
    path = method.export(net, tmp_path / "model.gl")  # from the training net: a finalized copy
    final = method.finalize(net)
    torch.manual_seed(99)
    loaded = GroupLasso().load(NETS[name](), path)
    assert torch.equal(outputs(loaded), outputs(final))
    assert n_params(loaded) == n_params(final)


def test_damaged_file_gives_one_clear_error(tmp_path):
    method, net = sparse("lenet5", steps=3)
    good = method.export(net, tmp_path / "model.gl")
    bad = tmp_path / "bad.gl"
    data = bytearray(good.read_bytes())
    data[len(data) // 2] ^= 0x5A
    bad.write_bytes(bytes(data))
    with pytest.raises(FileFormatError, match="checksum mismatch") as e:
        GroupLasso().load(LeNet5(), bad)
    assert str(bad) in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(FileFormatError, match="does not match the model"):
        GroupLasso().load(resnet8(), good)


# --- config -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("kw,msg", [
    ({"strength": -1}, "method.strength=-1: must be a number >= 0"),
    ({"strength": "big"}, "method.strength=big"),
    ({"threshold": -0.1}, "method.threshold=-0.1: must be a number >= 0"),
    ({"min_channels": 0}, "method.min_channels=0: must be an integer >= 1"),
])
def test_bad_config_is_one_line(kw, msg):
    with pytest.raises(ConfigError) as e:
        GroupLasso(**kw)
    assert msg in str(e.value) and "\n" not in str(e.value)


def test_unsupported_model_is_a_config_error_naming_model():
    with pytest.raises(ConfigError, match=r"^model=MobileNetV1: filter pruning needs a model"):
        GroupLasso().apply(MobileNetV1(in_channels=1, image_size=28))


def test_yaml_builds_the_method(make_method):
    method = make_method("group_lasso", "w32a32g32")
    assert isinstance(method, GroupLasso) and method.proximal and method.threshold == 0.0


# --- through the harness ------------------------------------------------------------------------------

@pytest.mark.slow
def test_train_py_run_removes_feature_maps_and_reloads(tmp_path, fmnist):
    from tests.conftest import only_record, train
    args = ["model=lenet5", "method=group_lasso", "method.strength=50", "trainer.max_epochs=2",
            "data.train_subset=512", "data.test_subset=500", "data.val_size=500",
            "trainer.limit_val_batches=1", "measure.warmup_steps=2"]
    p = train(args, tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    rec = only_record(tmp_path)
    assert rec["status"] == "ok" and rec["method_label"] == "Group lasso (SSL)"
    assert rec["params"] < n_params(LeNet5()) and rec["flops"] < counted_flops(LeNet5())
    net = GroupLasso().load(LeNet5(), rec["model_file"]).eval()
    assert n_params(net) == rec["params"]
    with torch.no_grad():
        pred = net(fmnist.x_test[:500]).argmax(1)
    assert (pred == fmnist.y_test[:500]).float().mean().item() == pytest.approx(rec["top1"], abs=1e-6)
