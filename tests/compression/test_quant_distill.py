"""Polino et al. 2018: the bucketed uniform quantizer against the math (2^b levels per bucket,
each bucket's own scale, hand-computed rounding, unbiased stochastic rounding), learned points
that receive gradients and move, and the three methods' packed files round-tripping to identical
predictions at a fraction of the float32 size."""
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from lightning_modules.compression.method import FullPrecision
from lightning_modules.compression.quantization.qlayers import QLayer, QLinear
from lightning_modules.compression.quantization.polino import (PointsQuantizer, UniformQuantizer,
                                                                buckets, polino_uniform)
from lightning_modules.compression.quantization.polino_methods import PolinoQuant
from lightning_modules.config_check import ConfigError
from lightning_modules.models import MLP
from hydra.errors import InstantiationException
from hydra.utils import instantiate

from lightning_modules.earlier_runs import resolve_references
from tests.compression.test_distill import make_run

PARTS = "lightning_modules.compression"


def PMQuant(bits, bucket_size=None):
    """method=pm_quant (conf/method/pm_quant.yaml): PolinoQuant quantizing after training."""
    return PolinoQuant(bits, bucket_size=bucket_size, at="end", name="pm_quant")


def _composed(name, quant, teacher, results_dir, suite, alpha=0.7, temperature=2.0):
    """Compose(kd, quant) as conf/method/<name>.yaml builds it, run references built by the app."""
    cfg = {"_target_": f"{PARTS}.method.Compose", "name": name,
           "kd": {"_target_": f"{PARTS}.distillation.distill.KnowledgeDistillation", "teacher": teacher,
                  "alpha": alpha, "temperature": temperature, "key": "method.kd"},
           "quant": {"key": "method.quant", "name": name, **quant}}
    try:
        return instantiate(resolve_references(cfg, results_dir, suite, (1, 28, 10)), _convert_="all")
    except InstantiationException as e:  # a part's ConfigError, as run.build_method passes it on
        raise e.__cause__ from None


def QuantizedDistillation(bits, teacher=None, results_dir="results", suite=None, **quant):
    return _composed("quantized_distillation",
                     {"_target_": f"{PARTS}.quantization.polino_methods.PolinoQuant", "bits": bits,
                      "at": "train", **quant},
                     teacher, results_dir, suite)


def DifferentiableQuantization(bits, teacher=None, results_dir="results", suite=None, **quant):
    return _composed("differentiable_quantization",
                     {"_target_": f"{PARTS}.quantization.polino_methods.LearnedPoints", "bits": bits, **quant},
                     teacher, results_dir, suite)

CONF = Path(__file__).resolve().parents[2] / "conf"
W4 = {"w": 4, "a": 32, "g": 32}


def bits(w):
    return {"w": w, "a": 32, "g": 32}


# --- the uniform quantizer -------------------------------------------------------------------

def spread_buckets(n_buckets: int, d: int) -> torch.Tensor:
    """n_buckets buckets of d values, each a shuffled linspace over its own range."""
    torch.manual_seed(0)
    rows = [torch.linspace(-1.0 - i, 0.5 + 2 * i, d)[torch.randperm(d)] for i in range(n_buckets)]
    return torch.cat(rows)


@pytest.mark.parametrize("b", [1, 2, 3, 4, 8])
def test_two_to_the_b_levels_per_bucket_on_its_own_grid(b):
    d, nb = 300, 4
    w = spread_buckets(nb, d)
    q = polino_uniform(w, b, bucket_size=d).reshape(nb, d)
    n = 2 ** b - 1
    for i, row in enumerate(q):
        lo, hi = w.reshape(nb, d)[i].min(), w.reshape(nb, d)[i].max()
        assert torch.unique(row).numel() == 2 ** b  # every level used: the values span the bucket
        k = (row - lo) / (hi - lo) * n  # the bucket's own scale: integer grid positions 0..n
        assert torch.allclose(k, k.round(), atol=1e-4) and k.round().min() == 0 and k.round().max() == n
    # whole tensor (bucket_size null): one grid over all buckets' range, still 2^b values
    assert torch.unique(polino_uniform(w, b)).numel() == 2 ** b


def test_partial_last_bucket_has_its_own_scale():
    w = torch.tensor([0.0, 1.2, 2.0, 3.0, 10.0, 11.0, 13.0])  # buckets of 3: [0,1.2,2] [3,10,11] [13]
    v, alpha, beta = buckets(w, 3)
    assert alpha.flatten().tolist() == [2.0, 8.0, 1.0]  # constant bucket: alpha = 1 (no division by 0)
    assert beta.flatten().tolist() == [0.0, 3.0, 13.0]
    q = polino_uniform(w, 1, bucket_size=3)
    assert q.tolist() == [0.0, 2.0, 2.0, 3.0, 11.0, 11.0, 13.0]


def test_deterministic_rounding_hand_example():
    # 2 bits: levels k/3 of the range; one bucket [-1, 1]: levels -1, -1/3, 1/3, 1
    w = torch.tensor([-1.0, -0.8, -0.2, 0.1, 0.5, 0.7, 1.0])
    # v = (w + 1) / 2 = 0, .1, .4, .55, .75, .85, 1 -> 3v = 0, .3, 1.2, 1.65, 2.25, 2.55, 3
    want = torch.tensor([-1.0, -1.0, -1 / 3, 1 / 3, 1 / 3, 1.0, 1.0])
    assert torch.allclose(polino_uniform(w, 2), want, atol=1e-6)
    # buckets of 4: [-1, -0.8, -0.2, 0.1] (range 1.1) and [0.5, 0.7, 1.0] (range 0.5)
    # 3v = 0, 0.545, 2.18, 3 -> 0, 1, 2, 3; 3v = 0, 1.2, 3 -> 0, 1, 3
    want = torch.tensor([-1.0, -1 + 1.1 / 3, -1 + 2.2 / 3, 0.1, 0.5, 0.5 + 0.5 / 3, 1.0])
    assert torch.allclose(polino_uniform(w, 2, bucket_size=4), want, atol=1e-6)


def test_stochastic_rounding_is_unbiased_and_uses_neighbouring_levels():
    torch.manual_seed(0)
    n_draws, b = 4000, 2
    w = torch.rand(50) * 4 - 2
    w[0], w[1] = -2.0, 2.0  # the range: step (max - min) / 3
    step = 4.0 / 3
    # n_draws copies, each its own bucket with the same min/max: n_draws independent roundings
    q = polino_uniform(w.repeat(n_draws), b, bucket_size=50, stochastic=True).reshape(n_draws, 50)
    below = torch.floor((w + 2) / step) * step - 2
    assert torch.all(torch.isclose(q, below, atol=1e-5) | torch.isclose(q, below + step, atol=1e-5))
    # E[Q(w)] = w: the mean of 4000 draws within 0.05 steps (the std of the mean is < 0.008 steps)
    assert (q.mean(0) - w).abs().max() < 0.05 * step
    # deterministic rounding is biased for the same weights (its error is up to half a step)
    assert (polino_uniform(w, b) - w).abs().max() > 0.2 * step


def test_shadow_weights_get_the_gradient_of_the_quantized_ones():
    w = torch.randn(6, 5, requires_grad=True)
    g = torch.randn(6, 5)
    (polino_uniform(w, 3, bucket_size=7, stochastic=True) * g).sum().backward()
    assert torch.equal(w.grad, g)


def test_quantizer_rounds_stochastically_only_while_training():
    torch.manual_seed(0)
    w = torch.randn(1000)
    qz = UniformQuantizer(2, 100, stochastic=True)
    assert not torch.equal(qz(w), qz(w))  # training: fresh noise each call
    qz.eval()
    assert torch.equal(qz(w), polino_uniform(w, 2, 100))


# --- differentiable quantization -------------------------------------------------------------

def test_points_init_uniform_and_quantiles():
    w = torch.randn(40, 30)
    u = PointsQuantizer.for_weight(w, 2, init="uniform")
    assert torch.allclose(u.points, torch.tensor([0.0, 1 / 3, 2 / 3, 1.0]))
    qt = PointsQuantizer.for_weight(w, 2, bucket_size=None, init="quantiles")
    v = (w - w.min()) / (w.max() - w.min())
    assert torch.allclose(qt.points, torch.quantile(v.flatten(), torch.tensor([0, 1 / 3, 2 / 3, 1.0])))


def test_points_receive_gradients_and_change_after_a_step():
    torch.manual_seed(0)
    layer = QLinear(30, 8, weight_quant=None)
    qz = PointsQuantizer.for_weight(layer.weight, 2, bucket_size=64, init="uniform")
    layer.weight_quant = qz
    layer.weight.requires_grad_(False)
    wq = layer.quantized_weight()
    # forward: every weight is alpha p_idx + beta of its bucket, the nearest point
    v, alpha, beta = buckets(layer.weight, 64)
    idx = (v.unsqueeze(-1) - qz.points).abs().argmin(-1)
    assert torch.allclose(wq.reshape(-1), (alpha * qz.points[idx] + beta).reshape(-1)[:240], atol=1e-6)
    # backward: dL/dp_j = sum over the weights on p_j of alpha * dL/dw_q
    g = torch.randn(8, 30)
    (wq * g).sum().backward()
    g_b = F.pad(g.reshape(-1), (0, 256 - 240)).reshape(4, 64)
    # (the padding of the last bucket gets g = 0: no gradient from it)
    want = torch.stack([(alpha * g_b * (idx == j)).sum() for j in range(4)])
    assert torch.allclose(qz.points.grad, want, atol=1e-5)
    assert layer.weight.grad is None  # the weights stay fixed
    before = qz.points.detach().clone()
    torch.optim.SGD([qz.points], lr=0.01).step()
    assert not torch.equal(qz.points, before)
    # a layer's forward pass sends its loss to the points
    qz.points.grad = None
    x = torch.randn(5, 30)
    F.mse_loss(layer(x), torch.randn(5, 8)).backward()
    assert qz.points.grad is not None and qz.points.grad.abs().sum() > 0


def test_points_with_train_weights_pass_the_gradient_to_the_weights():
    w = torch.randn(4, 9, requires_grad=True)
    qz = PointsQuantizer.for_weight(w, 2, train_weights=True)
    g = torch.randn(4, 9)
    (qz(w) * g).sum().backward()
    assert torch.equal(w.grad, g)


# --- the methods -----------------------------------------------------------------------------

def _steps(model, method=None, n=3, lr=0.05):
    torch.manual_seed(1)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=lr)
    for _ in range(n):
        x, y = torch.randn(16, 1, 28, 28), torch.randint(0, 10, (16,))
        logits = model(x)
        loss = method.loss(logits, y, (x, y)) if method is not None else None
        loss = F.cross_entropy(logits, y) if loss is None else loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model


def _round_trip(method, model, fresh, tmp_path, levels: int):
    model.eval()
    path = method.export(model, tmp_path / "model.pt")
    x = torch.randn(32, 1, 28, 28)
    with torch.no_grad():
        want = model(x)
        got = method.load(fresh, path).eval()(x)
    assert torch.equal(got, want)
    for m in fresh.modules():
        if isinstance(m, QLayer):
            assert m.weight_quant is None
            assert max(torch.unique(r).numel() for r in m.weight.reshape(m.weight.shape[0], -1)) <= levels
    return path


@pytest.mark.parametrize("w,bucket", [(2, None), (4, None), (4, 256), (8, 256)])
def test_pm_quant_finalize_export_load_identical_and_small(w, bucket, tmp_path):
    torch.manual_seed(0)
    method = PMQuant(bits(w), bucket_size=bucket)
    model = method.apply(MLP(hidden=(128, 128)))
    assert not any(isinstance(m, QLayer) for m in model.modules())  # trains in full precision
    _steps(model)
    fp32 = FullPrecision().export(model, tmp_path / "fp32.pt").stat().st_size
    x = torch.randn(8, 1, 28, 28)
    fp_out = model.eval()(x)
    model = method.finalize(model)
    assert all(isinstance(m, QLinear) for m in model.modules() if isinstance(m, torch.nn.Linear))
    # the test-time weights are the trained ones quantized: the closer, the more bits
    err = (model(x) - fp_out).abs().max()
    assert err < {2: 10.0, 4: 1.0, 8: 0.1}[w]
    path = _round_trip(method, model, MLP(hidden=(128, 128)), tmp_path, _levels(w, bucket))
    # the file: w-bit codes, alpha and beta per bucket, 2^w levels per layer; biases float32
    n_w, n_b = 784 * 128 + 128 * 128 + 128 * 10, 128 + 128 + 10
    buckets_ = sum(-(-n // (bucket or n)) for n in (784 * 128, 128 * 128, 128 * 10))
    theory = n_w * w / 8 + 4 * (2 * buckets_ + 3 * 2 ** w + n_b)
    size = path.stat().st_size
    assert theory < size < theory + 4096, (size, theory)  # + container.py's header
    assert size < {2: 1 / 12, 4: 1 / 7, 8: 1 / 3.5}[w] * fp32, (size, fp32)
    print(f"pm_quant W{w} bucket {bucket}: {size} B, theory {theory:.0f} B, fp32 {fp32} B "
          f"({fp32 / size:.1f}x smaller)")


def _levels(w: int, bucket: int | None) -> int:
    """Distinct values a row of 784 weights can hold: 2^w per bucket it spans."""
    return 2 ** w * (1 if bucket is None else 784 // bucket + 2)


@pytest.fixture
def teacher_run(tmp_path):
    return make_run(tmp_path, "teacher", hidden=(64, 64))


def test_quantized_distillation_trains_shadow_weights_and_round_trips(teacher_run, tmp_path):
    torch.manual_seed(0)
    method = QuantizedDistillation(W4, teacher="teacher", results_dir=str(tmp_path), suite="s",
                                   bucket_size=256, stochastic=True)
    model = method.apply(MLP(hidden=(32, 32)))
    layers = [m for m in model.modules() if isinstance(m, QLinear)]
    assert len(layers) == 3 and all(isinstance(m.weight_quant, UniformQuantizer) for m in layers)
    before = [m.weight.detach().clone() for m in layers]
    model.train()
    _steps(model, method)
    assert all(not torch.equal(m.weight, b) for m, b in zip(layers, before))  # shadow weights moved
    # the forward pass uses the quantized weights: <= 2^4 values per bucket of 256
    model.eval()
    wq = layers[1].quantized_weight().reshape(-1)
    assert all(torch.unique(c).numel() <= 16 for c in F.pad(wq, (0, -wq.numel() % 256)).reshape(-1, 256))
    assert not any(p is q for p in method.parts['kd'].teacher.parameters() for q in model.parameters())
    fresh = QuantizedDistillation(W4).load(MLP(hidden=(32, 32)), method.export(model, tmp_path / "m.pt"))
    x = torch.randn(8, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(fresh.eval()(x), model(x))


def test_differentiable_quantization_from_trained_student(teacher_run, tmp_path):
    torch.manual_seed(0)
    student = MLP(hidden=(32, 32))
    make_run(tmp_path, "student", net=student, hidden=(32, 32))
    method = DifferentiableQuantization(bits(2), teacher="teacher", results_dir=str(tmp_path), suite="s",
                                        start_from="student", bucket_size=256)
    model = method.apply(MLP(hidden=(32, 32)))
    layers = [m for m in model.modules() if isinstance(m, QLinear)]
    assert all(torch.equal(m.weight, s.weight) for m, s in
               zip(layers, [student.net[1], student.net[3], student.net[5]]))  # the run's weights
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable == [f"net.{i}.weight_quant.points" for i in (1, 3, 5)]
    points = [m.weight_quant.points.detach().clone() for m in layers]
    weights = [m.weight.detach().clone() for m in layers]
    model.train()
    _steps(model, method, lr=0.01)
    assert all(not torch.equal(m.weight_quant.points, p) for m, p in zip(layers, points))
    assert all(torch.equal(m.weight, w) for m, w in zip(layers, weights))
    _round_trip(DifferentiableQuantization(bits(2)), model, MLP(hidden=(32, 32)), tmp_path,
                levels=_levels(2, 256))


def test_config_errors_name_the_key(tmp_path):
    with pytest.raises(ConfigError, match="bits.w=32: not valid for method pm_quant"):
        PMQuant(bits(32))
    with pytest.raises(ConfigError, match="method.bucket_size=0: must be null"):
        PMQuant(W4, bucket_size=0)
    with pytest.raises(ConfigError, match="method.quant.points_init=kmeans"):
        DifferentiableQuantization(W4, points_init="kmeans")
    make_run(tmp_path, "teacher")
    with pytest.raises(ConfigError, match="method.quant.start_from=null"):
        DifferentiableQuantization(W4, teacher="teacher", results_dir=str(tmp_path), suite="s"
                                   ).apply(MLP(hidden=(32, 32)))
    with pytest.raises(ConfigError, match="method.quant.start_from=gone: no such file"):
        DifferentiableQuantization(W4, teacher="teacher", results_dir=str(tmp_path), suite="s",
                                   start_from="gone").apply(MLP(hidden=(32, 32)))
    with pytest.raises(ConfigError, match="method.kd.teacher=null"):
        QuantizedDistillation(W4).apply(MLP(hidden=(8, 8)))


@pytest.mark.parametrize("name", ["kd", "pm_quant", "quantized_distillation", "differentiable_quantization"])
def test_method_yamls_compose_and_build(name):
    from hydra import compose, initialize_config_dir
    from lightning_modules.run import build_method
    with initialize_config_dir(str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=[f"method={name}", "bits.w=4", "method.quant.train_weights=true"]
                      if name == "differentiable_quantization" else [f"method={name}", "bits.w=4"])
    assert cfg.method.name == name and cfg.method.label
    method = build_method(cfg)
    assert method.name == name
