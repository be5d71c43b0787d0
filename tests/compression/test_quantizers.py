"""Quantizers against their math: levels, hand examples, pseudo-gradients, statistics, float32."""
from functools import partial

import pytest
import torch
import torch.nn.functional as F

from lightning_modules.compression.quantization import quantizers as Q
from lightning_modules.compression.quantization.learned import (LQQuantizer, TTQQuantizer, code_table,
                                                               lq_quantize)


def grad_of(fn, x, g=None):
    x = x.clone().requires_grad_(True)
    y = fn(x)
    y.backward(torch.ones_like(y) if g is None else g)
    return x.grad


def n_levels(t):
    return torch.unique(t).numel()


# --- binary ---------------------------------------------------------------------------------

def test_ste_sign_values_and_identity_gradient():
    x = torch.tensor([-2.0, -0.5, 0.0, 0.3, 2.0])
    assert Q.ste_sign(x).tolist() == [-1, -1, 1, 1, 1]
    assert grad_of(Q.ste_sign, x).tolist() == [1, 1, 1, 1, 1]  # BinaryConnect clips w instead


def test_bnn_sign_gradient_cancelled_outside_unit_interval():
    x = torch.tensor([-3.0, -1.0, -0.2, 0.0, 0.7, 1.0, 1.5])
    assert Q.bnn_sign(x).tolist() == [-1, -1, -1, 1, 1, 1, 1]
    assert grad_of(Q.bnn_sign, x).tolist() == [0, 1, 1, 1, 1, 1, 0]


def test_stochastic_sign_frequency_matches_hard_sigmoid():
    g = torch.Generator().manual_seed(0)
    w = torch.tensor([-1.5, -0.6, -0.2, 0.0, 0.3, 0.8, 1.2])
    n = 20000
    draws = Q.stochastic_sign(w.expand(n, -1).contiguous(), generator=g)
    assert set(draws.unique().tolist()) == {-1.0, 1.0}
    freq = (draws > 0).float().mean(0)
    p = Q.hard_sigmoid(w)
    assert p.tolist() == pytest.approx([0.0, 0.2, 0.4, 0.5, 0.65, 0.9, 1.0])
    sigma = (p * (1 - p) / n).sqrt()
    assert ((freq - p).abs() <= 4 * sigma + 1e-6).all(), (freq, p)
    assert grad_of(partial(Q.stochastic_sign, generator=g), w).tolist() == [1.0] * 7


def test_stochastic_sign_module_at_test_time():
    w = torch.linspace(-0.9, 0.9, 50)
    assert torch.equal(Q.StochasticSign("binary").eval()(w), Q.ste_sign(w))
    assert torch.equal(Q.StochasticSign("real").eval()(w), w)  # the paper's choice: noise removed
    train = Q.StochasticSign("real").train()(w)
    assert set(train.tolist()) == {-1.0, 1.0}  # still binary (and random) while training
    with pytest.raises(ValueError, match="test_time='float'"):
        Q.StochasticSign("float")


def test_bwn_alpha_per_output_channel_and_gradient():
    w = torch.tensor([[[[0.5, -1.5], [0.25, -0.25]]], [[[2.0, 0.0], [-1.0, 1.0]]]])  # (2,1,2,2)
    q = Q.bwn_weight(w)
    assert q[0].flatten().tolist() == [0.625, -0.625, 0.625, -0.625]  # alpha_0 = 2.5 / 4
    assert q[1].flatten().tolist() == [1.0, 1.0, -1.0, 1.0]           # alpha_1 = 4 / 4, sign(0)=+1
    g = torch.randn_like(w)
    got = grad_of(Q.bwn_weight, w, g)
    alpha = w.abs().mean(dim=(1, 2, 3), keepdim=True)
    s = torch.where(w >= 0, 1.0, -1.0)  # forward sign, sign(0) = +1
    n = w[0].numel()                     # d alpha / d w = sign(w) / n, 0 at w = 0
    want = alpha * (w.abs() <= 1) * g + torch.sign(w) / n * (s * g).sum(dim=(1, 2, 3), keepdim=True)
    torch.testing.assert_close(got, want)


def test_xnor_input_and_scale_match_unfold_computation():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 6, 5)
    q, a = Q.xnor_input(x)
    assert set(q.unique().tolist()) == {-1.0, 1.0} and a.shape == (2, 1, 6, 5)
    torch.testing.assert_close(a, x.abs().mean(1, keepdim=True))
    k = Q.xnor_scale(a, (3, 2), stride=(2, 1), padding=(1, 1), dilation=1)
    patches = F.unfold(a, (3, 2), padding=(1, 1), stride=(2, 1))  # (N, 3*2, L)
    want = patches.mean(1).reshape(k.shape)
    torch.testing.assert_close(k, want)


# --- DoReFa ---------------------------------------------------------------------------------

@pytest.mark.parametrize("k", [1, 2, 3, 4, 8])
def test_quantize_k_levels_values_and_ste(k):
    r = torch.linspace(0, 1, 2001)
    q = Q.quantize_k(r, k)
    n = 2 ** k - 1
    assert n_levels(q) == 2 ** k
    assert torch.equal(q * n, torch.round(q * n))  # every value is j / (2^k - 1)
    assert (q - r).abs().max() <= 0.5 / n + 1e-6
    assert torch.equal(grad_of(lambda t: Q.quantize_k(t, k), r), torch.ones_like(r))


def test_quantize_k_hand_example():
    assert Q.quantize_k(torch.tensor([0.0, 0.2, 0.5, 0.9, 1.0]), 2).tolist() == \
        pytest.approx([0.0, 1 / 3, 2 / 3, 1.0, 1.0])  # round(0.6)=1, round(1.5)=2 (half to even)


@pytest.mark.parametrize("k", [2, 3, 4])
def test_dorefa_weight_k_bits(k):
    torch.manual_seed(0)
    w = torch.randn(16, 8, 3, 3)
    q = Q.dorefa_weight(w, k)
    assert n_levels(q) == 2 ** k
    assert q.min() == -1 and q.max() == 1
    t = torch.tanh(w)
    want = 2 * torch.round((t / (2 * t.abs().max()) + 0.5) * (2 ** k - 1)) / (2 ** k - 1) - 1
    torch.testing.assert_close(q, want)
    assert grad_of(lambda x: Q.dorefa_weight(x, k), w).abs().sum() > 0


def test_dorefa_weight_one_bit_is_mean_abs_times_sign():
    w = torch.tensor([[0.5, -1.5], [0.0, -1.0]])
    assert Q.dorefa_weight(w, 1).tolist() == [[0.75, -0.75], [0.75, -0.75]]
    assert Q.dorefa_weight(w, 32) is w


def test_dorefa_act_clip_levels_and_gradient():
    x = torch.tensor([-0.5, 0.0, 0.1, 0.5, 0.9, 1.0, 1.7])
    assert Q.dorefa_act(x, 1).tolist() == [0, 0, 0, 0, 1, 1, 1]  # round(0.5) = 0 (half to even)
    assert grad_of(lambda t: Q.dorefa_act(t, 2), x).tolist() == [0, 1, 1, 1, 1, 1, 0]
    assert n_levels(Q.dorefa_act(torch.linspace(-1, 2, 999), 3)) == 8


@pytest.mark.parametrize("k", [2, 4, 6])
def test_dorefa_grad_identity_forward_and_k_bit_per_sample_levels(k):
    torch.manual_seed(0)
    x = torch.randn(4, 3, 8, 8)
    assert torch.equal(Q.dorefa_grad(x, k), x)
    g = (2 * torch.rand(4, 3, 8, 8) - 1) * torch.tensor([1.0, 10.0, 0.1, 3.0]).view(4, 1, 1, 1)
    got = grad_of(lambda t: Q.dorefa_grad(t, k), x, g)
    n = 2 ** k - 1
    m = g.abs().amax(dim=(1, 2, 3), keepdim=True)
    j = (got / (2 * m) + 0.5) * n  # level index of each value, per sample
    torch.testing.assert_close(j, torch.round(j), atol=1e-3, rtol=0)
    for i in range(4):
        assert n_levels(got[i]) <= 2 ** k
    if k <= 4:
        assert all(n_levels(got[i]) == 2 ** k for i in range(4))


def test_dorefa_grad_unbiased():
    torch.manual_seed(0)
    g = torch.randn(2, 50)
    x = torch.zeros(2, 50, requires_grad=True)
    trials = 2000
    y = Q.dorefa_grad(x.expand(trials, 2, 50).reshape(trials * 2, 50), 2)
    y.backward(g.repeat(trials, 1))  # each sample keeps its own max
    mean = x.grad / trials
    half_step = g.abs().amax(1, keepdim=True) / 3  # 2 max / (2^k - 1) / 2
    # stochastic rounding: std <= half a step per draw, so the mean's error is ~ step / sqrt(trials)
    assert ((mean - g).abs() <= 5 * half_step / trials ** 0.5).all()


# --- ternary and fixed codebooks -------------------------------------------------------------

def test_twn_hand_example():
    w = torch.tensor([0.1, -0.9, 0.5, -0.05, 1.0])  # E|w| = 0.51, Delta = 0.357, alpha = 0.8
    assert Q.twn_weight(w).tolist() == pytest.approx([0.0, -0.8, 0.8, 0.0, 0.8])
    assert grad_of(Q.twn_weight, w).tolist() == [1.0] * 5
    assert n_levels(Q.twn_weight(torch.randn(1000))) == 3


def test_ttq_forward_gradients_and_update():
    q = TTQQuantizer(wp=2.0, wn=0.5, t=0.25)  # Delta = 0.25 * max|w| = 0.25
    w = torch.tensor([0.1, 0.9, -0.5, 1.0, -0.2, -0.3], requires_grad=True)
    y = q(w)
    assert y.tolist() == [0.0, 2.0, -0.5, 2.0, 0.0, -0.5]
    g = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    y.backward(g)
    assert q.wp.grad.item() == 6.0              # sum over I_p
    assert q.wn.grad.item() == -9.0             # W_t = -W^n on I_n
    assert w.grad.tolist() == [1.0, 4.0, 1.5, 8.0, 5.0, 3.0]  # W^p g, 1 g, W^n g
    before = [q.wp.item(), q.wn.item()]
    torch.optim.SGD(q.parameters(), lr=0.1).step()
    assert [q.wp.item(), q.wn.item()] != before


def test_ttq_from_weight_starts_at_mean_magnitudes():
    w = torch.tensor([0.02, 0.4, 0.6, -1.0, -0.5, 0.01])
    q = TTQQuantizer.from_weight(w, t=0.05)
    assert (q.wp.item(), q.wn.item()) == pytest.approx((0.5, 0.75))
    assert dict(q.named_parameters()).keys() == {"wp", "wn"}


def test_pow2_codebook_nearest_value():
    cb = Q.pow2_codebook(2)
    assert sorted(cb.tolist()) == [-1, -0.5, -0.25, 0, 0.25, 0.5, 1]
    w = torch.tensor([0.1, 0.13, 0.3, 0.74, 0.76, 3.0, -0.4, -0.01])
    assert Q.pow2_weight(w, 2, scale=False).tolist() == [0, 0.25, 0.25, 0.5, 1, 1, -0.5, 0]
    w = torch.randn(64, 64) * 0.05
    q = Q.pow2_weight(w, 6)
    top = torch.floor(torch.log2(4 * w.abs().max() / 3))
    allowed = set(Q.pow2_codebook(6, top).tolist())
    assert set(q.unique().tolist()) <= allowed and len(allowed) == 2 * 7 + 1
    assert q.abs().max() == 2 ** top
    assert torch.equal(grad_of(lambda x: Q.pow2_weight(x, 6), w), torch.ones_like(w))


@pytest.mark.parametrize("k", [1, 2, 3, 4])
def test_uniform_weight_symmetric_levels(k):
    torch.manual_seed(0)
    w = 2 * torch.rand(4, 300) - 1  # both extremes of each row are hit
    q = Q.uniform_weight(w, k)
    s = w.abs().amax(1, keepdim=True)
    for i in range(4):
        assert n_levels(q[i]) == 2 ** k
        assert set((-q[i]).unique().tolist()) == set(q[i].unique().tolist())
    assert torch.equal(q.abs().amax(1, keepdim=True), s)
    assert Q.uniform_weight(torch.tensor([[0.9, -0.3, 0.1, -0.9]]), 2)[0].tolist() == \
        pytest.approx([0.9, -0.3, 0.3, -0.9])


# --- LQ-Nets ----------------------------------------------------------------------------------

@pytest.mark.parametrize("bits", [1, 2, 3])
def test_lq_weight_levels_are_basis_combinations(bits):
    torch.manual_seed(0)
    w = torch.randn(6, 4, 3, 3)
    lq = LQQuantizer.for_weight(w, bits).eval()
    q = lq(w)
    levels = lq.basis @ code_table(bits, signed=True).T  # (6, 2^K)
    for c in range(6):
        assert n_levels(q[c]) <= 2 ** bits
        assert set(q[c].unique().tolist()) <= set(levels[c].tolist())
    # nearest level: no level is closer than the chosen one
    d = (w.reshape(6, -1, 1) - levels[:, None, :]).abs()
    torch.testing.assert_close((w - q).abs().reshape(6, -1), d.min(-1).values)


def test_lq_qem_solves_least_squares_and_only_while_training():
    torch.manual_seed(0)
    w = torch.randn(3, 200)
    lq = LQQuantizer.for_weight(w, 2, momentum=0.0)
    before = lq.basis.clone()
    lq.eval()(w)
    assert torch.equal(lq.basis, before)  # eval: no update
    codes = code_table(2, signed=True)
    _, idx = lq_quantize(w, before, codes)
    err_before = ((lq_quantize(w, before, codes)[0] - w) ** 2).sum()
    lq.train()(w)
    for c in range(3):
        b = codes[idx[c]]  # (n, K)
        want = torch.linalg.lstsq(b, w[c:c + 1].T).solution.squeeze(1)
        torch.testing.assert_close(lq.basis[c], want, rtol=1e-3, atol=1e-5)
    err_after = ((lq_quantize(w, lq.basis, codes)[0] - w) ** 2).sum()
    assert err_after <= err_before


def test_lq_activation_codes_and_clipped_ste():
    lq = LQQuantizer.for_activation(2).eval()
    levels = lq.levels()[0]
    assert levels[0] == 0 and n_levels(levels) == 4  # {0,1} codes: 0 is a level
    x = torch.tensor([-1.0, 0.2, 0.7, 5.0])
    q = lq(x)
    assert set(q.tolist()) <= set(levels.tolist())
    assert grad_of(lq, x).tolist() == [0.0, 1.0, 1.0, 0.0]


def test_lq_weight_gets_gradient_and_basis_moves_in_training():
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(8, 16))
    lq = LQQuantizer.for_weight(w, 2)
    before = lq.basis.clone()
    loss = (lq(w) ** 2).sum()
    loss.backward()
    assert w.grad is not None and w.grad.abs().sum() > 0
    assert not torch.equal(lq.basis, before)
    assert "basis" in lq.state_dict()


# --- float32 under autocast -----------------------------------------------------------------

QUANTIZERS = {
    "ste_sign": Q.ste_sign, "stochastic_sign": Q.stochastic_sign, "bnn_sign": Q.bnn_sign,
    "bwn_weight": Q.bwn_weight, "xnor_input": lambda x: Q.xnor_input(x)[1],
    "quantize_k": lambda x: Q.quantize_k(x, 3), "dorefa_weight": lambda x: Q.dorefa_weight(x, 3),
    "dorefa_act": lambda x: Q.dorefa_act(x, 2), "dorefa_grad": lambda x: Q.dorefa_grad(x, 4),
    "twn_weight": Q.twn_weight, "pow2_weight": lambda x: Q.pow2_weight(x, 4),
    "uniform_weight": lambda x: Q.uniform_weight(x, 3), "ttq": TTQQuantizer(t=0.05),
    "lq_weight": LQQuantizer(2, channels=4), "lq_act": LQQuantizer.for_activation(3),
}


@pytest.mark.parametrize("name", sorted(QUANTIZERS))
def test_float32_under_autocast(name):
    torch.manual_seed(0)
    q = QUANTIZERS[name]
    x16 = torch.randn(4, 3, 5, 5).half().requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.float16):
        torch.manual_seed(1)
        y = q(x16)
    assert y.dtype == torch.float32
    torch.manual_seed(1)
    want = q(x16.detach().float())  # the same math on the same (float16-valued) inputs, in float32
    if name not in ("lq_weight", "lq_act"):  # those moved their basis in the first call
        torch.testing.assert_close(y, want, rtol=0, atol=0)
    y.sum().backward()
    assert x16.grad is not None and x16.grad.dtype == torch.float16


def test_xnor_scale_float32_under_autocast():
    a = torch.rand(2, 1, 6, 6).half()
    with torch.autocast("cpu", dtype=torch.float16):
        k = Q.xnor_scale(a, 3, padding=1)
    assert k.dtype == torch.float32
