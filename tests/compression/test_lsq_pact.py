"""LSQ, LSQ+ and PACT against their papers: the step-size gradient (LSQ eq. 3) and its scale
1/sqrt(N Q_P), the initial steps, per-channel steps, the LSQ+ offset, PACT's alpha gradient and
decay, the STE inside the clip range; the packed file reloads bit-identically; bad bits."""
import math

import pytest
import torch
import torch.nn.functional as F

from lightning_modules.compression.errors import ConfigError
from lightning_modules.compression.method import Method
from lightning_modules.compression.quantization.lsq import LSQQuantizer, PACTQuantizer, lsq_range
from lightning_modules.compression.quantization.qlayers import QLayer
from lightning_modules.models import LeNet5
from tests.compression.conftest import build_method
from tests.conftest import FAST, only_record, train


def lsq_ref(v, s, qn, qp, beta=0.0):
    """The papers' formulas: v_q, dv_q/ds (LSQ eq. 3, in terms of u = (v - beta)/s), STE mask."""
    u = (v - beta) / s
    below, above = u <= -qn, u >= qp
    inside = ~(below | above)
    ds = torch.where(below, -float(qn), torch.where(above, float(qp), -u + torch.round(u)))
    return torch.round(u.clamp(-qn, qp)) * s + beta, ds, inside.float()


def backward(q, x, upstream):
    x = x.clone().requires_grad_(True)
    y = q(x)
    y.backward(upstream)
    return y.detach(), x.grad


@pytest.mark.parametrize("bits", [2, 3, 4])
def test_lsq_step_gradient_is_eq3_times_the_weight_scale(bits):
    torch.manual_seed(0)
    w = torch.randn(5, 7) * 0.4
    w[0, :2] = torch.tensor([5.0, -5.0])  # outliers: clipped at every width
    q = LSQQuantizer.for_weight(w, bits)
    s = q.step.detach().clone()
    up = torch.randn_like(w)
    y, gw = backward(q, w, up)
    qn, qp = lsq_range(bits, True)
    ref, ds, inside = lsq_ref(w, s, qn, qp)
    g = 1 / math.sqrt(w.numel() * qp)  # N = weights of the layer
    assert torch.equal(y, ref)
    assert torch.allclose(q.step.grad, g * (up * ds).sum(), atol=1e-6)
    assert torch.equal(gw, up * inside)  # STE inside (-Q_N, Q_P), 0 outside
    assert 0 < inside.mean() < 1  # both cases exercised
    assert torch.unique(y).numel() <= 2 ** bits


def test_lsq_activation_scale_uses_features_per_sample_and_unsigned_range():
    x = torch.rand(4, 3, 2, 2) * 3  # non-negative (after a ReLU): Q_N = 0, Q_P = 2^b - 1
    q = LSQQuantizer.for_activation(2).train()
    q(x)  # the first training batch initialises the step
    assert not bool(q.signed) and q.range() == (0, 3)
    x2 = torch.rand(4, 3, 2, 2) * 3
    up = torch.randn_like(x2)
    s = q.step.detach().clone()
    _, gx = backward(q, x2, up)
    _, ds, inside = lsq_ref(x2, s, 0, 3)
    g = 1 / math.sqrt(12 * 3)  # N = 3 * 2 * 2 features per sample, not the batch's 48
    assert torch.allclose(q.step.grad, g * (up * ds).sum(), atol=1e-6)
    assert torch.equal(gx, up * inside)


def test_lsq_initial_steps():
    torch.manual_seed(1)
    w = torch.randn(8, 4, 3, 3)
    for bits in (2, 4):
        qp = 2 ** (bits - 1) - 1
        q = LSQQuantizer.for_weight(w, bits)
        assert torch.allclose(q.step, 2 * w.abs().mean() / math.sqrt(qp))
    x = torch.randn(16, 10)  # signed first batch (a BatchNorm output): signed range
    a = LSQQuantizer.for_activation(3).train()
    a(x)
    assert bool(a.signed) and bool(a.initialized)
    assert torch.allclose(a.step, 2 * x.abs().mean() / math.sqrt(3))
    before = a.step.detach().clone()
    a(x * 10)  # later batches do not re-initialise
    assert torch.equal(a.step.detach(), before)
    fresh = LSQQuantizer.for_activation(3).eval()
    fresh(x)  # evaluation (Lightning's sanity check) does not initialise either
    assert not bool(fresh.initialized)


def test_lsq_per_channel_steps():
    torch.manual_seed(2)
    w = torch.randn(6, 3, 3, 3) * torch.linspace(0.1, 2.0, 6).reshape(6, 1, 1, 1)
    q = LSQQuantizer.for_weight(w, 3, per_channel=True)
    assert q.step.shape == (6,)
    assert torch.allclose(q.step, 2 * w.abs().mean(dim=(1, 2, 3)) / math.sqrt(3))
    up = torch.randn_like(w)
    y, _ = backward(q, w, up)
    s = q.step.detach().reshape(6, 1, 1, 1)
    _, ds, _ = lsq_ref(w, s, 4, 3)
    g = 1 / math.sqrt(27 * 3)  # N = weights per step (one output channel)
    assert q.step.grad.shape == (6,)
    assert torch.allclose(q.step.grad, g * (up * ds).sum(dim=(1, 2, 3)), atol=1e-6)
    for c in range(6):  # each row on its own grid of 2^3 levels k s_c
        k = y[c] / s[c]
        assert torch.unique(y[c]).numel() <= 8 and torch.allclose(k, k.round(), atol=1e-5)


def test_lsq_plus_offset_init_values_and_gradient():
    torch.manual_seed(3)
    x = torch.randn(8, 5) - 0.3  # a Swish/BN-like signed input
    q = LSQQuantizer.for_activation(2, offset=True).train()
    q(x)
    lo, hi = x.min(), x.max()
    assert torch.allclose(q.step, (hi - lo) / 3) and torch.allclose(q.offset, lo)  # min-max init
    x2 = torch.randn(8, 5) * 1.5
    up = torch.randn_like(x2)
    s, b = q.step.detach().clone(), q.offset.detach().clone()
    y, gx = backward(q, x2, up)
    ref, ds, inside = lsq_ref(x2, s, 0, 3, b)
    g = 1 / math.sqrt(5 * 3)
    assert torch.allclose(y, ref)
    assert torch.allclose(q.step.grad, g * (up * ds).sum(), atol=1e-6)
    assert torch.allclose(q.offset.grad, g * (up * (1 - inside)).sum(), atol=1e-6)  # 1 outside
    assert torch.equal(gx, up * inside)
    w = torch.randn(10, 20) * 0.3 + 0.05  # LSQ+ weight init: max(|mu -+ 3 sigma|) / 2^(b-1)
    qw = LSQQuantizer.for_weight(w, 4, init="lsq_plus")
    mu, sd = w.mean(), w.std()
    assert torch.allclose(qw.step, torch.maximum((mu - 3 * sd).abs(), (mu + 3 * sd).abs()) / 8)


def test_pact_values_alpha_gradient_and_ste():
    q = PACTQuantizer(2, alpha=2.0)
    x = torch.tensor([-1.0, 0.0, 0.4, 1.1, 1.9, 2.0, 3.5])
    up = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0])
    y, gx = backward(q, x, up)
    n = 3
    assert torch.equal(y, torch.round(x.clamp(0, 2.0) * n / 2.0) * (2.0 / n))
    assert torch.equal(gx, up * ((x >= 0) & (x < 2.0)))  # STE inside [0, alpha), 0 outside
    assert q.alpha.grad.item() == pytest.approx((up * (x >= 2.0)).sum().item())  # 6 + 7


def test_pact_method_decays_alpha_after_each_step():
    method = build_method("pact", "w2a2g32", "method.alpha=4.0", "method.alpha_decay=0.01")
    model = method.apply(LeNet5())
    alphas = [m for m in model.modules() if isinstance(m, PACTQuantizer)]
    assert len(alphas) == 2 and all(a.alpha.item() == 4.0 for a in alphas)
    assert all(any(p is a.alpha for p in model.parameters()) for a in alphas)  # the optimizer sees it
    method.after_step(model, lr=0.5)
    assert all(a.alpha.item() == pytest.approx(4.0 * (1 - 0.5 * 0.01)) for a in alphas)


@pytest.mark.parametrize("name", ["lsq", "lsq_plus", "pact"])
def test_export_reloads_bit_identically_and_is_smaller(name, tmp_path):
    torch.manual_seed(0)
    method = build_method(name, "w2a2g32")
    model = method.apply(LeNet5())
    learned = [k for k, _ in model.named_parameters() if k.endswith((".step", ".offset", ".alpha"))]
    assert learned and all(k in model.state_dict() for k in learned)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x, y = torch.randn(16, 1, 28, 28), torch.randint(0, 10, (16,))
    for _ in range(3):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
        method.after_step(model, 1e-3)
    model.eval()
    with torch.no_grad():
        logits = model(x)
        for m in model.modules():
            if isinstance(m, QLayer) and m.weight_quant is not None:
                assert torch.unique(m.quantized_weight()).numel() <= 4
    path = method.export(model, tmp_path / "m.pt")
    fp32 = Method().export(LeNet5(), tmp_path / "fp32.pt")
    assert path.stat().st_size < fp32.stat().st_size / 4
    loaded = build_method(name, "w2a2g32").load(LeNet5(), path).eval()
    with torch.no_grad():
        assert torch.equal(loaded(x), logits)
        steps = {k: v.clone() for k, v in loaded.state_dict().items() if k.endswith((".step", ".offset"))}
        loaded.train()(x)  # a reloaded (or resumed) activation quantizer is not initialised again
        assert all(torch.equal(loaded.state_dict()[k], v) for k, v in steps.items())


@pytest.mark.parametrize("name,bits,key", [
    ("lsq", {"w": 1, "a": 2, "g": 32}, "bits.w=1: not valid for method lsq; valid: 2..8, 32"),
    ("lsq_plus", {"w": 2, "a": 9, "g": 32}, "bits.a=9: not valid for method lsq_plus; valid: 2..8, 32"),
    ("pact", {"w": 2, "a": 2, "g": 8}, "bits.g=8: not valid for method pact; valid: 32"),
])
def test_bad_bits_one_line(name, bits, key):
    with pytest.raises(Exception) as e:
        build_method(name, bits)
    err = e.value if isinstance(e.value, ConfigError) else e.value.__cause__  # hydra wraps it
    assert isinstance(err, ConfigError) and str(err) == key


def test_bad_rule_bits_and_unmatched_rule_one_line():
    with pytest.raises(Exception) as e:
        build_method("lsq", "w2a2g32", "method.layers=[{type: [conv, linear]}, {name: last, bits: {w: 1}}]")
    err = e.value if isinstance(e.value, ConfigError) else e.value.__cause__
    assert str(err).startswith("method.layers[1].bits.w=1: not valid for method lsq") and "\n" not in str(err)
    method = build_method("lsq", "w2a2g32", "method.layers=[{name: 'nosuch*', bits: {w: 4}}]")
    with pytest.raises(ConfigError, match=r"^method\.layers\[0\]\.name") as e:
        method.apply(LeNet5())
    assert "\n" not in str(e.value)


@pytest.mark.slow
def test_lsq_trains_through_train_py(tmp_path):
    """... and deploys on ONNX Runtime's integer kernels with the torch model's accuracy."""
    args = [a for a in FAST if a != "deploy=none"]
    p = train([*args, "method=lsq", "bits=w2a2g32", "trainer.max_epochs=1", "deploy=onnx"], tmp_path / "results")
    assert p.returncode == 0, p.stderr[-3000:]
    rec = only_record(tmp_path / "results")
    assert rec["status"] == "ok" and rec["method"] == "lsq" and rec["bits"]["w"] == 2
    assert rec["deploy_backend"] == "onnx" and rec["deploy_layers"]
    assert set(rec["deploy_layers"].values()) == {"int8"}, rec.get("deploy_reason")
    assert abs(rec["deploy_top1"] - rec["top1"]) <= 0.001


@pytest.mark.slow
def test_train_py_refuses_bad_lsq_bits_in_one_line(tmp_path):
    p = train(["method=lsq", "bits=w1a2g6"], tmp_path / "results")
    lines = [line for line in p.stderr.splitlines() if line.strip()]
    assert p.returncode == 2 and len(lines) == 1, p.stderr[-2000:]
    assert lines[0].startswith("error: bits.w=1: not valid for method lsq; valid: 2..8, 32")
    assert not (tmp_path / "results").exists()


@pytest.mark.slow
def test_lsq_killed_mid_run_resumes_to_the_uninterrupted_result(tmp_path):
    """The activation steps are initialised once, from the first batch: a resumed run takes them
    (and `initialized`) from the checkpoint instead of re-initialising from the resumed batch."""
    from tests.test_resume import BASE, finish, same_result
    args = [*BASE, "method=lsq_plus", "bits=w2a2g32", "trainer.max_epochs=2"]
    ref, other = tmp_path / "ref", tmp_path / "killed"
    p = train(args + ["checkpoint.every_n_steps=null"], ref)
    assert p.returncode == 0, p.stderr[-3000:]
    assert finish(args, other, ["step:5"])["resumed_from_step"] is not None
    same_result(ref, other)
