"""Post-training quantization: each observer's range against the math (minmax exact, percentile
vs numpy, mse the best of a finer grid, entropy clips heavy tails), per-channel weights, AdaRound
(floor or ceil only, reconstruction no worse than nearest, the regulariser makes h(V) binary), an
8-bit PTQ net within the bound its quantization steps give, the packed file, bad input."""
import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from torch import nn

from lightning_modules.compression.errors import ConfigError
from lightning_modules.compression.method import Method
from lightning_modules.compression.quantization.pack import payload
from lightning_modules.compression.quantization.ptq import (PTQ, FakeQuant, Observer, act_grid, adaround,
                                                            init_v, qparams, rectified_sigmoid,
                                                            soft_weight, weight_grid)
from lightning_modules.compression.quantization.qlayers import QLayer, QLinear
from lightning_modules.earlier_runs import resolve_references
from lightning_modules.models import LeNet5
from tests.compression.conftest import build_method
from tests.compression.test_distill import make_run


def observed(kind, x, grid=act_grid, k=8, chunks=4, **kw):
    obs = Observer(kind, *grid(k), **kw)
    for c in x.chunk(chunks):
        obs.observe(c)
    return obs


def quant_mse(x, lo, hi, qmin, qmax):
    """Mean squared error of quantizing x on [qmin, qmax] with the range [lo, hi]."""
    q = FakeQuant(qmin, qmax)
    q.set_qparams(*qparams(torch.tensor(float(lo)), torch.tensor(float(hi)), qmin, qmax))
    return (q(x) - x).pow(2).mean().item()


def heavy_tail(n=50_000, seed=0):
    """|Student-t(2)|: a few values far beyond the bulk."""
    torch.manual_seed(seed)
    return torch.distributions.StudentT(2.0).sample((n,)).abs()


# --- observers ---------------------------------------------------------------------------------

@pytest.mark.parametrize("k", [8, 4])
def test_minmax_is_the_exact_range_and_torch_affine_qparams(k):
    torch.manual_seed(0)
    x = torch.randn(1000) * 3 + 1
    obs = observed("minmax", x, k=k)
    lo, hi = obs.range()
    assert lo == x.min() and hi == x.max()
    s, z = obs.qparams()
    n = 2 ** k - 1
    want_s = (x.max() - x.min()) / n
    assert s.item() == pytest.approx(want_s.item(), rel=1e-6)
    assert z.item() == torch.clamp(-torch.round(x.min() / want_s), 0, n).item()
    q = FakeQuant(*act_grid(k))
    q.set_qparams(s, z)
    xq = q(x)
    assert len(torch.unique(xq)) <= 2 ** k
    assert (xq - x).abs().max() <= s / 2 + 1e-5  # nothing clipped: only rounding error


def test_percentile_matches_numpy_within_a_histogram_bin():
    torch.manual_seed(0)
    x = torch.randn(200_000)
    for p in (99.0, 99.99):
        obs = observed("percentile", x, percentile=p, bins=2048)
        lo, hi = obs.range()
        cut = (100 - p) / 2
        want = np.percentile(x.numpy(), [cut, 100 - cut], method="inverted_cdf")
        width = 2 * x.abs().max().item() / 2048  # ORT's histogram spans [-max|x|, max|x|]
        assert abs(lo.item() - want[0]) <= 1.01 * width and abs(hi.item() - want[1]) <= 1.01 * width


@pytest.mark.parametrize("grid,k", [(act_grid, 4), (act_grid, 8), (weight_grid, 3)])
def test_mse_range_is_the_best_of_a_finer_grid(grid, k):
    """Its range's error is within 1% of the best range on a 400-point grid of clipping fractions
    of the data (the observer searches 100, on a histogram) and below minmax's on heavy tails."""
    torch.manual_seed(0)
    x = heavy_tail() if grid is act_grid else torch.distributions.Laplace(0.0, 1.0).sample((50_000,))
    qmin, qmax = grid(k)
    lo, hi = observed("mse", x, grid, k).range()
    got = quant_mse(x, lo, hi, qmin, qmax)
    top = x.max().item() if grid is act_grid else x.abs().max().item()
    errors = [quant_mse(x, -f * top if qmin < 0 else 0.0, f * top, qmin, qmax)
              for f in np.linspace(0.0025, 1, 400)]
    assert got <= 1.01 * min(errors)
    assert got < errors[-1]  # errors[-1]: the min-max range


def test_entropy_clips_a_heavy_tail_tighter_than_minmax_but_not_a_uniform():
    """4-bit activations: exponential values with 0.1% outliers at 50 -> a threshold well inside
    the min-max range (but above the bulk); uniform values -> their whole range."""
    torch.manual_seed(0)
    tail = torch.cat([torch.distributions.Exponential(1.0).sample((20_000,)), torch.full((20,), 50.0)])
    tail, flat = tail[torch.randperm(len(tail))], torch.rand(20_000) * 5
    hi_tail = observed("entropy", tail, k=4).range()[1]
    assert np.percentile(tail.numpy(), 95) < hi_tail < 0.5 * tail.max()
    hi_flat = observed("entropy", flat, k=4).range()[1]
    assert hi_flat >= 0.9 * flat.max()


@pytest.mark.parametrize("kind", ["minmax", "mse"])
def test_per_channel_weight_scales_are_per_output_channel(kind):
    torch.manual_seed(0)
    w = torch.randn(6, 4, 3, 3) * torch.linspace(0.1, 3, 6)[:, None, None, None]
    qmin, qmax = weight_grid(4)
    obs = observed(kind, w, weight_grid, 4, chunks=1, per_channel=True)
    s, z = obs.qparams()
    assert s.shape == (6,) and torch.all(z == 0)
    if kind == "minmax":
        assert torch.allclose(s, w.abs().amax(dim=(1, 2, 3)) / qmax, rtol=1e-6)
    q = FakeQuant(qmin, qmax, channels=6, dims=4)
    q.set_qparams(s, z)
    wq = q(w)
    for c in range(6):
        codes = torch.round(wq[c] / s[c])
        assert len(torch.unique(wq[c])) <= 2 ** 4 - 1 and codes.abs().max() <= qmax
    per_tensor = observed(kind, w, weight_grid, 4, chunks=1, per_channel=False).qparams()[0]
    assert per_tensor.dim() == 0
    qt = FakeQuant(qmin, qmax)
    qt.set_qparams(per_tensor, torch.tensor(0.0))
    assert (wq - w).pow(2).sum() < (qt(w) - w).pow(2).sum()  # channels of very different sizes


# --- AdaRound ----------------------------------------------------------------------------------

def small_layer(k=3, seed=0):
    torch.manual_seed(seed)
    layer = QLinear(16, 8, weight_quant=FakeQuant(*weight_grid(k), channels=8, dims=2))
    obs = observed("minmax", layer.weight.detach(), weight_grid, k, chunks=1, per_channel=True)
    layer.weight_quant.set_qparams(*obs.qparams())
    x = torch.randn(512, 16) @ torch.randn(16, 16)  # correlated inputs: nearest is not optimal
    return layer, x


def rec_error(layer, x, w):
    return (x @ w.t() - x @ layer.weight.detach().t()).pow(2).sum(1).mean().item()


def test_adaround_rounds_each_weight_down_or_up_and_reconstructs_no_worse_than_nearest():
    layer, x = small_layer()
    q, w = layer.weight_quant, layer.weight.detach()
    v = adaround(layer, x, iterations=600, lr=1e-2, batch_size=64, lam=0.01, beta_start=20.0,
                 beta_end=2.0, warmup=0.2, generator=torch.Generator().manual_seed(0))
    wq = soft_weight(w, v, q, hard=True)
    codes = wq / q.scale
    floor = torch.floor(w / q.scale)
    assert torch.equal(torch.round(codes), torch.clamp(torch.round(codes), q.qmin, q.qmax))
    assert torch.all((torch.round(codes) == torch.clamp(floor, q.qmin, q.qmax))
                     | (torch.round(codes) == torch.clamp(floor + 1, q.qmin, q.qmax)))
    nearest = q(w)
    assert rec_error(layer, x, wq) <= rec_error(layer, x, nearest)
    assert not torch.equal(wq, nearest)  # it learned something other than nearest


def test_adaround_regulariser_drives_h_to_zero_or_one():
    layer, x = small_layer()
    w, q = layer.weight.detach(), layer.weight_quant
    start = rectified_sigmoid(init_v(w, q.scale))
    assert torch.allclose(soft_weight(w, init_v(w, q.scale), q), w.clamp(q.qmin * q.scale, q.qmax * q.scale),
                          atol=1e-4)  # V starts at W
    soft = lambda h: ((h > 0.01) & (h < 0.99)).float().mean().item()  # noqa: E731
    v = adaround(layer, x, iterations=1000, lr=3e-2, batch_size=64, lam=1.0, beta_start=20.0, beta_end=2.0,
                 warmup=0.2, generator=torch.Generator().manual_seed(0))
    assert soft(start) > 0.9 and soft(rectified_sigmoid(v)) < 0.02
    # without the regulariser nothing moves: W~ = W at the start, the reconstruction gradient is 0
    v0 = adaround(layer, x, iterations=50, lr=3e-2, batch_size=64, lam=1e-12, beta_start=20.0, beta_end=2.0,
                  warmup=0.2, generator=torch.Generator().manual_seed(0))
    assert soft(rectified_sigmoid(v0)) > 0.9


# --- the method on a net -----------------------------------------------------------------------

class MLP(nn.Sequential):
    """first and last stay float (the default rules): only `mid` and its input are quantized."""

    def __init__(self):
        super().__init__(nn.Linear(12, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 5))


def trained_ish(net, x, steps=60):
    torch.manual_seed(1)
    y = torch.randint(0, 5, (x.shape[0],))
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(steps):
        loss = nn.functional.cross_entropy(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net


def test_8bit_ptq_changes_the_logits_by_at_most_the_quantization_step_bound():
    torch.manual_seed(0)
    x = torch.randn(256, 12)
    net = trained_ish(MLP(), x).eval()
    with torch.no_grad():
        ref, h = net(x), net[1](net[0](x))
    method = PTQ({"w": 8, "a": 8, "g": 32}, init_from=net.state_dict())
    q = method.calibrate(method.apply(MLP()), [(c, None) for c in x.chunk(4)]).eval()
    mid = q[2]
    assert isinstance(mid, QLayer) and not isinstance(q[0], QLayer) and not isinstance(q[4], QLayer)
    s_a, s_w = mid.act_quant.scale, mid.weight_quant.scale.flatten()
    with torch.no_grad():
        got = q(x)
        # |dy| <= |W| s_a / 2 + s_w / 2 |x_q| per output (no clipping: minmax on these inputs),
        # through ReLU (1-Lipschitz) and the float classifier: |d logits| <= |W_3| |dy|
        dy = mid.weight.abs().sum(1) * s_a / 2 + (s_w / 2)[None] * mid.act_quant(h).abs().sum(1, keepdim=True)
        bound = dy @ q[4].weight.abs().t()
    diff = (got - ref).abs()
    assert torch.all(diff <= bound + 1e-5)
    assert diff.max() < 0.05 * ref.abs().max() and (got.argmax(1) == ref.argmax(1)).float().mean() >= 0.97


@pytest.mark.parametrize("rounding", ["nearest", "adaround"])
def test_export_reloads_to_identical_predictions_and_a_smaller_file(rounding, tmp_path):
    torch.manual_seed(0)
    x = torch.randn(64, 1, 28, 28)
    trained = LeNet5()
    method = build_method("ptq", {"w": 4, "a": 8, "g": 32}, f"method.rounding={rounding}",
                          "method.adaround.iterations=20", "method.observer=percentile",
                          "method.histogram_bins=256", "method.calibration_batches=2")
    method.init_from = trained.state_dict()
    model = method.calibrate(method.apply(LeNet5()), [(c, None) for c in x.chunk(2)]).eval()
    bits = method.layer_bits(model)
    assert bits and all(b == {"w": 4, "a": 8, "g": 32} for b in bits.values())
    with torch.no_grad():
        logits = model(x)
    path = method.export(model, tmp_path / "model.pt")
    fp32 = Method().export(trained, tmp_path / "fp32.pt")
    fresh = build_method("ptq", {"w": 4, "a": 8, "g": 32})  # a later process: init_from null
    loaded = fresh.load(LeNet5(), path).eval()
    with torch.no_grad():
        assert torch.equal(loaded(x), logits)
    for name in bits:
        a, b = model.get_submodule(name).act_quant, loaded.get_submodule(name).act_quant
        assert torch.equal(a.scale, b.scale) and torch.equal(a.zero_point, b.zero_point) and a.scale != 1
        w = loaded.get_submodule(name).weight
        assert len(torch.unique(w[0])) <= 2 ** 4 - 1
    assert path.stat().st_size < fp32.stat().st_size
    codes = payload(path)["codes"]
    quantized = sum(model.get_submodule(n).weight.numel() for n in bits)
    assert codes <= quantized * 4 / 8 + len(bits)  # 4-bit codes


# --- bad input ---------------------------------------------------------------------------------

@pytest.mark.parametrize("override,words", [
    ("method.calibration_batches=0", "method.calibration_batches=0"),
    ("method.calibration_batches=-3", "method.calibration_batches=-3"),
    ("method.observer=kl", "method.observer=kl: valid: minmax, percentile, mse, entropy"),
    ("method.weight_observer=entropy", "method.weight_observer=entropy: valid: minmax, mse"),
    ("method.rounding=stochastic", "method.rounding=stochastic: valid: nearest, adaround"),
    ("method.percentile=120", "method.percentile=120"),
    ("method.adaround.iters=5", "method.adaround.iters: unknown key"),
    ("method.layers=[{name: convX}]", "method.layers[0].name=convX: matches no"),
    ("method.layers=[{type: conv, bits: {w: 40}}]", "method.layers[0].bits.w=40: must be an integer in 1..32"),
    ("method.layers=[{type: conv, bits: {w: 12}}]", "method.layers[0].bits.w=12: not valid for method ptq; valid: 2..8, 32"),
])
def test_bad_settings_are_one_line(override, words):
    with pytest.raises(Exception) as e:
        m = build_method("ptq", {"w": 8, "a": 8, "g": 32}, override)
        m.init_from = LeNet5().state_dict()
        m.apply(LeNet5())
    err = e.value.__cause__ if not isinstance(e.value, ConfigError) else e.value
    assert isinstance(err, ConfigError) and words in str(err) and "\n" not in str(err)


@pytest.mark.parametrize("bits,words", [({"w": 1, "a": 8, "g": 32}, "bits.w=1: not valid for method ptq; valid: 2..8, 32"),
                                        ({"w": 8, "a": 16, "g": 32}, "bits.a=16: not valid for method ptq")])
def test_bits_outside_the_grids_are_one_line(bits, words):
    with pytest.raises(ConfigError, match=words):
        PTQ(bits, init_from={})


def test_no_fp32_run_to_start_from_is_one_line(tmp_path):
    with pytest.raises(ConfigError, match=r"^method.init_from=None: ptq quantizes a trained net .*fp32 run$"):
        build_method("ptq", {"w": 8, "a": 8, "g": 32}).apply(LeNet5())
    with pytest.raises(ConfigError, match="do not fit model LeNet5"):
        PTQ({"w": 8, "a": 8, "g": 32}, init_from=MLP().state_dict()).apply(LeNet5())


def test_init_from_names_a_finished_fp32_run(tmp_path):
    """As run.build_method builds it: the run reference becomes the run's float state dict."""
    torch.manual_seed(0)
    trained = LeNet5()
    make_run(tmp_path, "ref", net=trained, model="lenet5", hparams=False)
    cfg = {"_target_": "lightning_modules.compression.quantization.ptq.PTQ", "bits": {"w": 8, "a": 8, "g": 32},
           "init_from": "ref"}
    method = instantiate(resolve_references(cfg, tmp_path, "s", (1, 28, 10)), _convert_="all")
    net = method.apply(LeNet5())
    assert torch.equal(net.features[2].weight, trained.features[2].weight)
    with pytest.raises(ConfigError, match="method.init_from=nothing: no such file"):
        resolve_references({**cfg, "init_from": "nothing"}, tmp_path, "s", (1, 28, 10))


def test_run_refuses_more_calibration_batches_than_the_split_holds():
    from omegaconf import OmegaConf
    from lightning_modules.run import check_calibration

    class Data:
        def train_dataloader(self):
            return [None] * 39
    cfg = OmegaConf.create({"method": {"calibration_batches": 40}, "data": {"batch_size": 128}})
    with pytest.raises(ConfigError, match=r"^method.calibration_batches=40: must be an integer in 1..39"):
        check_calibration(cfg, Data())
    check_calibration(OmegaConf.create({"method": {"calibration_batches": 39}, "data": {"batch_size": 128}}), Data())


# --- through the harness -------------------------------------------------------------------------

@pytest.mark.slow
def test_train_py_quantizes_a_finished_fp32_run_without_training(tmp_path, fmnist):
    """fp32 LeNet-5 (1 epoch on 2048 images) -> ptq W8A8: no optimizer step, the calibration keys in
    the record, the test accuracy within a point of FP32's, the file reloads to it, deploy agrees;
    then the bad inputs: one line, exit 2, nothing written."""
    import json
    from tests.conftest import only_record, train
    common = ["model=lenet5", "trainer.max_epochs=1", "data.train_subset=2048", "data.test_subset=1000",
              "data.val_size=500", "trainer.limit_val_batches=1", "measure.warmup_steps=2"]
    p = train([*common, "method=fp32", "deploy=none"], tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    ref = only_record(tmp_path)
    ref_dir = next(tmp_path.rglob("record.json")).parent
    p = train([*common, "method=ptq", "bits=w4a4g32", "bits.w=8", "bits.a=8", f"method.init_from={ref['run_name']}",
               "method.calibration_batches=4"], tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    recs = {r["method"]: r for r in (json.loads(f.read_text()) for f in tmp_path.rglob("record.json"))}
    rec = recs["ptq"]
    assert rec["status"] == "ok" and rec["calibration_batches"] == 4 and rec["calibration_seed"] == 0
    assert abs(rec["top1"] - ref["top1"]) <= 0.01 and rec["footprint_bytes"] < ref["footprint_bytes"]
    print(f"fp32 top1 {ref['top1']:.4f}, ptq W8A8 top1 {rec['top1']:.4f}, files {ref.get('footprint_bytes')} -> "
          f"{rec.get('footprint_bytes')} B, deploy {rec.get('deploy_backend')} agreement {rec.get('deploy_agreement')}")
    net = build_method("ptq", {"w": 8, "a": 8, "g": 32}).load(LeNet5(), rec["model_file"]).eval()
    with torch.no_grad():
        pred = net(fmnist.x_test[:1000]).argmax(1)
    assert (pred == fmnist.y_test[:1000]).float().mean().item() == pytest.approx(rec["top1"], abs=1e-6)
    assert rec.get("deploy_agreement", 1.0) >= 0.99
    # the conv on ORT's integer kernels; the QLinear's 8-bit codes x 8-bit weights could overflow
    # AVX2's int16 pair sums, so it stays float (onnx_export.py); the accuracy is torch's
    assert rec["deploy_backend"] == "onnx" and rec["deploy_layers"] == {"features.2": "int8", "classifier.1": "fp32"}
    assert abs(rec["deploy_top1"] - rec["top1"]) <= 0.001
    for bad, words in ((["method.init_from=null"], "method.init_from=None"),
                       (["method.init_from=no-such-run"], "method.init_from=no-such-run: no such file"),
                       ([f"method.init_from={ref_dir}", "method.calibration_batches=100000"],
                        "method.calibration_batches=100000: must be an integer in 1.."),
                       ([f"method.init_from={ref_dir}", "method.layers=[{name: conv9}]"],
                        "method.layers[0].name=conv9: matches no")):
        p = train([*common, "method=ptq", "bits=w4a4g32", "bits.w=8", "bits.a=8", *bad], tmp_path / "bad")
        assert p.returncode == 2 and words in p.stderr, p.stderr[-2000:]
        assert not (tmp_path / "bad" / "runs").exists()  # nothing written


def test_per_channel_8bit_file_stores_row_scales_not_a_codebook_per_row(tmp_path):
    """Per-channel 8-bit rows are s_c q: the packed file keeps one table of q's and C scales (a
    codebook per row would cost up to 255 floats a row, more than the row's 8-bit codes)."""
    from lightning_modules.compression.quantization.pack import decode, encode, row_scales
    torch.manual_seed(0)
    net, x = LeNet5(), torch.randn(64, 1, 28, 28)
    method = PTQ({"w": 8, "a": 8, "g": 32}, per_channel=True, init_from=net.state_dict())
    model = method.calibrate(method.apply(LeNet5()), [(x, None)]).eval()
    sizes = payload(method.export(model, tmp_path / "model.pt"))
    assert sizes["codebooks"] < 0.02 * sizes["codes"]
    layer = model.classifier[1]
    wq = layer.quantized_weight().detach()
    packed, stored, meta = encode(wq, layer.weight_quant.scale)
    assert meta["scaled"] and meta["bits"] == 8 and torch.equal(decode(packed, stored, meta), wq)
    assert row_scales(torch.randn(4, 9)) is None  # not multiples of a row scale: the codebooks as before
