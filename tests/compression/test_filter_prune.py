"""Filter pruning (Molchanov et al. 2017): the Taylor statistic, masks that hold, the linear FLOPs
ramp, physical removal (same predictions, FlopCounterMode FLOPs), the file, DDP, the harness."""
import io
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from dc_helpers import outputs, sgd_steps
from lightning_modules.compression.errors import FileFormatError
from lightning_modules.compression.pruning.channels import channel_groups
from lightning_modules.compression.pruning.filters import ChannelMask, FilterPrune, flops, masks
from lightning_modules.compression.pruning.magnitude import nonzero_params
from lightning_modules.config_check import ConfigError
from lightning_modules.models import MLP, CifarResNet, LeNet5, LeNet300, MobileNetV1, VGGSmall


def resnet8():
    return CifarResNet(depth=8, in_channels=1, image_size=28)


NETS = {"resnet8": resnet8, "lenet5": LeNet5}


def counted_flops(net):
    net.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as c:
        net(torch.zeros(1, 1, 28, 28))
    return int(c.get_total_flops())


def kept(net):
    return [int(cm.mask.sum()) for cm in masks(net, channel_groups(net))]


def pruned(name, seed=0, **kw):
    """A net of `name` pruned to flops_target on a 3-step schedule, with SGD steps between."""
    torch.manual_seed(seed)
    method = FilterPrune(**{"flops_target": 0.5, "interval": "step", "start": 1, "end": 5,
                            "frequency": 2, **kw})
    net = method.apply(NETS[name]())
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    for t in range(method.schedule.end + 1):
        method.on_time(net, t, "step")
        sgd_steps(net, steps=1, seed=t, optimizer=opt)
    return method, net


def fp32_bytes(net):
    buf = io.BytesIO()
    torch.save(net.state_dict(), buf)
    return len(buf.getvalue())


# --- the criterion ----------------------------------------------------------------------------

def test_taylor_statistic_is_mean_over_examples_of_abs_spatial_mean_of_z_times_grad():
    torch.manual_seed(0)
    cm = ChannelMask(3)
    want = torch.zeros(3)
    for _ in range(2):  # summed over batches
        z = torch.randn(4, 3, 5, 5, requires_grad=True)
        w = torch.randn(4, 3, 5, 5)  # loss = sum(out * w): dL/dz = w
        (cm(z) * w).sum().backward()
        want += (z.detach() * w).mean((2, 3)).abs().mean(0)  # Eq. 7 per example, mean over T
    assert torch.allclose(cm.score, want, atol=1e-6)
    assert torch.allclose(cm.take_score(), want, atol=1e-6) and cm.score is None  # reset
    cm.eval()
    z = torch.randn(2, 3, 4, 4, requires_grad=True)
    cm(z).sum().backward()
    assert cm.score is None  # eval forward: no statistic


@pytest.mark.parametrize("name,site", [("resnet8", "layers.1.bn1"), ("lenet5", "features.2")])
def test_statistic_is_taken_after_the_bn_on_the_real_feature_map(name, site):
    torch.manual_seed(0)
    net = FilterPrune().apply(NETS[name]())
    seen = {}

    def grab(module, args, out):  # registered after the mask's hook: sees the masked map
        out.retain_grad()
        seen["z"] = out
    net.get_submodule(site).register_forward_hook(grab)
    x, y = torch.randn(6, 1, 28, 28), torch.randint(0, 10, (6,))
    F.cross_entropy(net(x), y).backward()
    z, g = seen["z"].detach(), seen["z"].grad
    want = (z * g).mean((2, 3)).abs().mean(0)
    assert torch.allclose(net.get_submodule(site).channel_mask.score, want, rtol=1e-5, atol=1e-12)


# --- masks ------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", NETS)
def test_masked_channels_are_exactly_zero_and_stay_masked(name):
    method, net = pruned(name)
    groups = channel_groups(net)
    before = [cm.mask.clone() for cm in masks(net, groups)]
    assert all(0 < int(m.sum()) < m.numel() for m in before)
    seen = {}
    for g in groups:
        net.get_submodule(g.site).register_forward_hook(lambda m, a, o, n=g.site: seen.__setitem__(n, o))
    sgd_steps(net, steps=3, optimizer=torch.optim.Adam(net.parameters(), lr=1e-2))
    for g, m in zip(groups, before):
        assert torch.equal(net.get_submodule(g.site).channel_mask.mask, m)
        assert not seen[g.site][:, m == 0].any()  # exactly zero features
        assert seen[g.site][:, m == 1].any()


def test_pruning_is_monotone_and_ramps_linearly():
    method, net = pruned("lenet5", flops_target=0.4)
    assert [h["t"] for h in method.history] == [1, 3, 5]
    for k, h in enumerate(method.history, 1):
        assert h["target"] == pytest.approx(1 - 0.6 * k / 3)
        assert h["target"] - 0.05 < h["flops_fraction"] <= h["target"]
    steps = []
    method2 = FilterPrune(flops_target=0.4, interval="step", start=1, end=5, frequency=2)
    torch.manual_seed(0)
    net2 = method2.apply(LeNet5())
    opt = torch.optim.SGD(net2.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    for t in range(6):
        method2.on_time(net2, t, "step")
        method2.on_time(net2, t, "epoch")  # the other interval: ignored
        steps.append(torch.cat([cm.mask for cm in masks(net2, channel_groups(net2))]))
        sgd_steps(net2, steps=1, seed=t, optimizer=opt)
    for a, b in zip(steps, steps[1:]):
        assert not (b.bool() & ~a.bool()).any()  # a removed channel never comes back
    assert method2.unfinished() is None


@pytest.mark.parametrize("name", NETS)
def test_schedule_reaches_the_target_within_one_channel(name):
    method, net = pruned(name, flops_target=0.5)
    limit = 0.5 * counted_flops(NETS[name]())
    assert flops(net) <= limit
    assert max(flops_with_one_more(net)) > limit  # the last channel removed was needed


def flops_with_one_more(net):
    out = []
    for cm in masks(net, channel_groups(net)):
        off = (cm.mask == 0).nonzero().flatten()
        if len(off):
            cm.mask[off[0]] = 1
            out.append(flops(net))
            cm.mask[off[0]] = 0
    return out


def test_min_channels_is_respected_and_an_unreachable_target_is_a_config_error():
    method, net = pruned("lenet5", flops_target=0.04, min_channels=3)
    assert min(kept(net)) == 3 and all(k >= 3 for k in kept(net))
    assert flops(net) <= 0.04 * counted_flops(LeNet5())
    with pytest.raises(ConfigError, match=r"method.flops_target=0.01: LeNet5 keeps at least") as e:
        pruned("lenet5", flops_target=0.01, min_channels=3)
    assert "\n" not in str(e.value)


# --- physical removal ---------------------------------------------------------------------------

@pytest.mark.parametrize("name", NETS)
def test_finalize_shrinks_the_layers_and_keeps_the_predictions(name):
    method, net = pruned(name)
    want, want_flops, counts = outputs(net), flops(net), kept(net)
    groups = channel_groups(net)
    net = method.finalize(net)
    for g, k in zip(groups, counts):
        prod, cons = net.get_submodule(g.producer), net.get_submodule(g.consumer)
        assert prod.weight.shape[0] == k and (prod.bias is None or prod.bias.shape == (k,))
        if g.norm:
            bn = net.get_submodule(g.norm)
            assert all(t.shape == (k,) for t in (bn.weight, bn.bias, bn.running_mean, bn.running_var))
        assert cons.weight.shape[1] == (k * 16 if g.consumer == "classifier.1" else k)
    assert not any(isinstance(m, ChannelMask) for m in net.modules())
    assert not any(m._forward_hooks for m in net.modules())
    assert torch.allclose(outputs(net), want, atol=1e-5)
    assert counted_flops(net) == want_flops  # analytic count == FlopCounterMode on the small net
    params = sum(p.numel() for p in net.parameters())
    assert params < sum(p.numel() for p in NETS[name]().parameters())
    assert 0.99 * params < nonzero_params(net) <= params  # a plain model: prune.py still reads it
    sgd_steps(net, steps=1)  # still trainable


@pytest.mark.parametrize("name", NETS)
def test_analytic_flops_of_the_unpruned_net_equal_flop_counter(name):
    net = FilterPrune().apply(NETS[name]())
    with pytest.raises(RuntimeError, match="run one forward pass"):
        flops(net)
    net.eval()(torch.zeros(2, 1, 28, 28))
    assert flops(net) == counted_flops(NETS[name]())


# --- the file -----------------------------------------------------------------------------------

@pytest.mark.parametrize("name", NETS)
def test_export_load_identical_predictions_and_smaller_file(name, tmp_path):
    method, net = pruned(name)
    path = method.export(net, tmp_path / "model.fp")  # from the masked net
    final = method.finalize(net)
    torch.manual_seed(99)  # a fresh full-size net with other weights: everything from the file
    loaded = FilterPrune().load(NETS[name](), path)
    assert torch.equal(outputs(loaded), outputs(final))
    assert [type(m) for m in loaded.modules()] == [type(m) for m in final.modules()]
    assert path.stat().st_size < fp32_bytes(NETS[name]())
    again = method.export(final, tmp_path / "again.fp")  # from the plain net: the same content
    assert torch.equal(outputs(FilterPrune().load(NETS[name](), again)), outputs(final))


def damaged(good, how):
    data = bytearray(good.read_bytes())
    if how == "truncated":
        return bytes(data[: len(data) // 2])
    if how == "one_byte_short":
        return bytes(data[:-1])
    if how == "empty":
        return b""
    data[{"header": 9, "payload": len(data) // 2, "checksum": len(data) - 2}[how]] ^= 0x5A
    return bytes(data)


@pytest.mark.parametrize("how", ["truncated", "one_byte_short", "empty", "header", "payload", "checksum"])
def test_damaged_file_gives_one_clear_error(tmp_path, how):
    method, net = pruned("lenet5")
    good = method.export(net, tmp_path / "model.fp")
    bad = tmp_path / "bad.fp"
    bad.write_bytes(damaged(good, how))
    fresh = LeNet5()
    before = {k: v.clone() for k, v in fresh.state_dict().items()}
    with pytest.raises(FileFormatError) as e:
        method.load(fresh, bad)
    assert str(bad) in str(e.value) and "\n" not in str(e.value) and isinstance(e.value, ValueError)
    assert all(torch.equal(before[k], v) for k, v in fresh.state_dict().items())  # untouched


def test_file_of_another_model_or_format(tmp_path):
    method, net = pruned("lenet5")
    path = method.export(net, tmp_path / "model.fp")
    with pytest.raises(FileFormatError, match="does not match the model"):
        method.load(resnet8(), path)
    with pytest.raises(FileFormatError, match="does not match the model"):
        method.load(LeNet5(num_classes=7), path)
    torch.save(LeNet5().state_dict(), tmp_path / "plain.pt")
    with pytest.raises(FileFormatError, match="not a filter_prune file"):
        method.load(LeNet5(), tmp_path / "plain.pt")


# --- config -------------------------------------------------------------------------------------

@pytest.mark.parametrize("kw,msg", [
    ({"flops_target": 0}, "method.flops_target=0: must be a number in (0, 1]"),
    ({"flops_target": 1.5}, "method.flops_target=1.5"),
    ({"flops_target": "half"}, "method.flops_target=half"),
    ({"start": 3, "end": 1}, "method.end=1: must be an integer >= 3"),
    ({"start": 0}, "method.start=0: must be an integer >= 1"),
    ({"frequency": 0}, "method.frequency=0"),
    ({"min_channels": 0}, "method.min_channels=0"),
    ({"interval": "batch"}, "method.interval=batch: valid: epoch, step"),
])
def test_bad_config_is_one_line(kw, msg):
    with pytest.raises(ConfigError) as e:
        FilterPrune(**kw)
    assert msg in str(e.value) and "\n" not in str(e.value)


def test_unsupported_model_is_a_config_error_naming_model():
    with pytest.raises(ConfigError, match=r"^model=MobileNetV1: filter pruning needs a model that "
                       r"declares its channel_groups\(\); supported: CifarResNet, LeNet300, LeNet5, MLP, VGGSmall"):
        FilterPrune().apply(MobileNetV1(in_channels=1, image_size=28))


# --- the models that declare their channel groups -----------------------------------------------

MORE = {"lenet300": LeNet300, "mlp": lambda: MLP(hidden=(64, 32), dropout_hidden=0.2),
        "vgg_small": lambda: VGGSmall(in_channels=1, image_size=28, width=8)}


@pytest.mark.parametrize("name", MORE)
def test_declared_groups_prune_shrink_and_reload_to_identical_predictions(name, monkeypatch, tmp_path):
    """fc -> fc (LeNet-300-100, MLP: a hidden unit is a channel) and conv -> BN -> conv ... -> fc
    (VGG-Small): masked channels are zero, the analytic FLOPs are FlopCounterMode's, finalize and
    export -> load give the same predictions from smaller layers."""
    monkeypatch.setitem(NETS, name, MORE[name])
    method, net = pruned(name)
    groups = channel_groups(net)
    full = [m.mask.numel() for m in masks(net, groups)]
    assert all(k >= 1 for k in kept(net)) and sum(kept(net)) < sum(full)
    want, want_flops, counts = outputs(net), flops(net), kept(net)
    assert want_flops <= 0.5 * counted_flops(MORE[name]()) + 1
    path = method.export(net, tmp_path / "model.fp")
    net = method.finalize(net)
    for g, k in zip(groups, counts):
        assert net.get_submodule(g.producer).weight.shape[0] == k
        assert net.get_submodule(g.consumer).weight.shape[1] % k == 0
    assert torch.allclose(outputs(net), want, atol=1e-5)
    assert counted_flops(net) == want_flops
    assert torch.equal(outputs(FilterPrune().load(MORE[name](), path)), outputs(net))


def test_yaml_builds_the_method(make_method):
    method = make_method("filter_prune", "w32a32g32")
    assert isinstance(method, FilterPrune) and method.flops_target == 0.5
    assert (method.schedule.interval, method.schedule.times) == ("epoch", [1])


# --- DDP: identical masks, from the statistics of every rank ------------------------------------

def _masks_after(batches):
    """LeNet-5 (seed 0), one backward per batch seed, then one pruning step: the masks."""
    torch.set_num_threads(1)
    torch.manual_seed(0)
    method = FilterPrune(flops_target=0.5, interval="step", start=1, end=1)
    net = method.apply(LeNet5())
    for seed in batches:
        g = torch.Generator().manual_seed(seed)
        x, y = torch.randn(8, 1, 28, 28, generator=g), torch.randint(0, 10, (8,), generator=g)
        F.cross_entropy(net(x), y).backward()
    method.on_time(net, 1, "step")
    return torch.cat([cm.mask for cm in masks(net, channel_groups(net))])


def _ddp_worker(rank, world, port, out):
    import torch.distributed as dist
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    m = _masks_after([rank])  # each rank its own batch
    gathered = [torch.zeros_like(m) for _ in range(world)]
    dist.all_gather(gathered, m)
    if rank == 0:
        torch.save(gathered, out)
    dist.destroy_process_group()


@pytest.mark.slow
def test_ddp_masks_identical_and_from_the_summed_statistics(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = str(tmp_path / "masks.pt")
    mp.spawn(_ddp_worker, args=(2, port, out), nprocs=2, join=True)
    a, b = torch.load(out)
    assert torch.equal(a, b)
    assert torch.equal(a, _masks_after([0, 1]))  # Theta summed over both ranks' batches
    assert not torch.equal(a, _masks_after([0]))  # not rank 0's statistic alone


# --- through the harness --------------------------------------------------------------------------

@pytest.mark.slow
def test_train_py_run_is_smaller_and_reloads(tmp_path, fmnist):
    from tests.conftest import only_record, train
    args = ["model=resnet8", "method=filter_prune", "trainer.max_epochs=2", "data.train_subset=512",
            "data.test_subset=500", "data.val_size=500", "trainer.limit_val_batches=1",
            "measure.warmup_steps=2", "method.interval=step", "method.start=4", "method.end=20",
            "method.frequency=8"]
    p = train(args, tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    rec = only_record(tmp_path)
    full = resnet8()
    assert rec["status"] == "ok" and rec["method_label"] == "Filter pruning (Taylor)"
    assert rec["params"] < sum(p.numel() for p in full.parameters())
    assert 0 < rec["flops"] <= 0.5 * counted_flops(full)
    assert rec["footprint_bytes"] < fp32_bytes(full)
    net = FilterPrune().load(resnet8(), rec["model_file"]).eval()
    assert sum(p.numel() for p in net.parameters()) == rec["params"]
    with torch.no_grad():
        pred = net(fmnist.x_test[:500]).argmax(1)
    assert (pred == fmnist.y_test[:500]).float().mean().item() == pytest.approx(rec["top1"], abs=1e-6)
