"""The fused quantizers (fused.py) against the reference bodies in quantizers.py / learned.py:
forward values and every gradient equal (torch.equal: bit for bit, up to the sign of a zero),
on random inputs seeded with the values where the STE masks, signs and roundings switch."""
import copy
from functools import partial

import pytest
import torch

from lightning_modules.compression.quantization import fused
from lightning_modules.compression.quantization import quantizers as Q
from lightning_modules.compression.quantization.learned import LQQuantizer
from lightning_modules.compression.quantization.qlayers import QConv2d, QLinear

# the values where something switches: 0 and -0 (sign), +-1 (BNN clip), 0 and 1 (DoReFa clip),
# 1.5 * 2^e (powers-of-two ties), exact multiples of 1/3 (2-bit rounding ties after scaling)
EDGES = torch.tensor([0.0, -0.0, 1.0, -1.0, 0.5, -0.5, 1.5, -1.5, 0.375, -0.375, 0.75, -0.75,
                      1 / 3, 2 / 3, 1e-30, -1e-30, 3.0, -3.0])


def _input(shape, scale=1.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g) * scale
    flat = x.view(-1)
    flat[: len(EDGES)] = EDGES[: flat.numel()]
    return x


def _run(fn, x, reference, seed=1):
    """Outputs and d(outputs . G)/dx for random G, in the reference or the fused mode."""
    x = x.clone().requires_grad_(True)
    with Q.reference_quantizers(reference):
        torch.manual_seed(seed)
        out = fn(x)
        outs = out if isinstance(out, tuple) else (out,)
        g = torch.Generator().manual_seed(seed)
        loss = sum((o * torch.randn(o.shape, generator=g)).sum() for o in outs)
        loss.backward()
    return [o.detach() for o in outs], x.grad


def _assert_same(fn, x):
    ref_out, ref_grad = _run(fn, x, True)
    out, grad = _run(fn, x, False)
    for r, o in zip(ref_out, out):
        assert torch.equal(r, o), f"forward differs: max |diff| {(r - o).abs().max()}"
    assert torch.equal(ref_grad, grad), f"gradient differs: max |diff| {(ref_grad - grad).abs().max()}"


QUANTIZERS = {
    "ste_sign": Q.ste_sign, "bnn_sign": Q.bnn_sign, "bwn_weight": Q.bwn_weight,
    "xnor_input": Q.xnor_input, "xnor_input_dim0": partial(Q.xnor_input, dim=0),
    "stochastic_sign": Q.stochastic_sign,
    "quantize_k2": lambda x: Q.quantize_k(x.clamp(0, 1), 2),
    "dorefa_weight1": partial(Q.dorefa_weight, k=1), "dorefa_weight2": partial(Q.dorefa_weight, k=2),
    "dorefa_weight4": partial(Q.dorefa_weight, k=4),
    "dorefa_act2": partial(Q.dorefa_act, k=2), "dorefa_act32": partial(Q.dorefa_act, k=32),
    "dorefa_grad6": lambda x: Q.dorefa_grad(x * 1.0, 6),
    "twn_weight": Q.twn_weight,
    "pow2_weight2": partial(Q.pow2_weight, levels=2), "pow2_weight6": partial(Q.pow2_weight, levels=6),
    "pow2_unscaled": partial(Q.pow2_weight, levels=2, scale=False),
    "uniform_weight1": partial(Q.uniform_weight, k=1), "uniform_weight4": partial(Q.uniform_weight, k=4),
}
SHAPES = [(8, 4, 3, 3), (20, 30), (7,)]


@pytest.mark.parametrize("name", list(QUANTIZERS))
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("scale", [0.3, 2.0])
def test_fused_matches_reference(name, shape, scale):
    if name == "xnor_input" and len(shape) == 1:
        pytest.skip("xnor_input needs a channel dim 1")
    _assert_same(QUANTIZERS[name], _input(shape, scale))


def test_fused_is_what_runs_and_reference_switches_back():
    """The public names dispatch: fused by default, the reference bodies inside the context."""
    x = torch.randn(50).requires_grad_(True)
    fused_graph = Q.bnn_sign(x).grad_fn
    with Q.reference_quantizers():
        ref_graph = Q.bnn_sign(x).grad_fn
    assert type(fused_graph).__name__.startswith("_StraightThrough")
    assert not type(ref_graph).__name__.startswith("_StraightThrough")
    assert Q.bnn_sign.reference is not None


def test_pow2_ties_go_to_the_larger_value():
    """At a midpoint 1.5 * 2^e the reference's `nearest` picks the larger value: up in magnitude
    for w > 0, down for w < 0; below half the smallest level, 0."""
    w = torch.tensor([1.5, -1.5, 0.75, -0.75, 0.125, -0.125, 0.1, 5.0, -5.0])
    q = Q.pow2_weight(w, levels=2, scale=False)  # codebook {0, +-1/4, +-1/2, +-1}
    assert q.tolist() == [1.0, -1.0, 1.0, -0.5, 0.25, 0.0, 0.0, 1.0, -1.0]
    with Q.reference_quantizers():
        assert torch.equal(Q.pow2_weight(w, levels=2, scale=False), q)


def test_lq_positions_equal_searchsorted():
    g = torch.Generator().manual_seed(0)
    bounds = torch.randn(5, 7, generator=g).sort(dim=1).values
    x = torch.randn(5, 300, generator=g)
    x[:, :7] = bounds  # exactly on a bound: searchsorted (left) puts it below
    assert torch.equal(fused.lq_positions(x, bounds), torch.searchsorted(bounds, x.contiguous()))


@pytest.mark.parametrize("signed,bits", [(True, 2), (False, 2), (True, 3), (False, 4)])
def test_lq_quantizer_matches_reference(signed, bits):
    """Forward, gradient to the input and the QEM basis update after two training steps."""
    x0 = _input((16, 3, 3, 3), 0.5)
    x0 = x0 if signed else x0.abs()
    results = []
    for reference in (True, False):
        q = LQQuantizer.for_weight(x0, bits) if signed else LQQuantizer.for_activation(bits)
        q.train()
        results.append((_run(q, x0, reference), _run(q, x0 * 1.1, reference), q.basis.clone()))
    (ref1, ref2, ref_basis), (out1, out2, basis) = results
    for r, o in ((ref1, out1), (ref2, out2)):
        assert torch.equal(r[0][0], o[0][0]) and torch.equal(r[1], o[1])
    assert torch.equal(ref_basis, basis)


def _layer_grads(layer, x, reference):
    layer = layer.train()
    for p in layer.parameters():
        p.grad = None
    x = x.clone().requires_grad_(True)
    with Q.reference_quantizers(reference):
        torch.manual_seed(0)
        y = layer(x)
        (y * torch.linspace(-1, 1, y.numel()).reshape(y.shape)).sum().backward()
    return [y.detach(), x.grad] + [p.grad for p in layer.parameters()]


@pytest.mark.parametrize("roles", [
    {"weight_quant": Q.bwn_weight, "act_quant": Q.xnor_input, "input_bn": True},
    {"weight_quant": partial(Q.dorefa_weight, k=1), "act_quant": partial(Q.dorefa_act, k=2),
     "grad_quant": partial(Q.dorefa_grad, k=6), "input_bn": True},
    {"weight_quant": partial(Q.pow2_weight, levels=6), "act_quant": partial(Q.dorefa_act, k=4)},
], ids=["xnor", "dorefa", "pow2"])
def test_qlayers_match_reference(roles):
    """A whole QConv2d / QLinear step: output, input gradient and every parameter's gradient."""
    for layer, x in ((QConv2d(4, 6, 3, padding=1, **roles), _input((5, 4, 7, 7))),
                     (QLinear(12, 5, **roles), _input((6, 12)))):
        ref, out = _layer_grads(layer, x, True), _layer_grads(layer, x, False)
        for r, o in zip(ref, out):
            assert torch.equal(r, o)


@pytest.mark.slow
def test_compile_quantized_matches_eager():
    """compile_quantized compiles only the quantized layers (in place) and trains the same:
    outputs and gradients within float32 reassociation of eager (inductor fuses the ops)."""
    from lightning_modules.compression.quantization.qlayers import compile_quantized
    torch.manual_seed(0)
    eager = torch.nn.Sequential(torch.nn.Linear(12, 10), torch.nn.ReLU(),
                                QLinear(10, 6, weight_quant=Q.bwn_weight, act_quant=Q.xnor_input))
    compiled = copy.deepcopy(eager)
    assert compile_quantized(compiled) is compiled
    assert compiled[2]._compiled_call_impl is not None and compiled[0]._compiled_call_impl is None
    x = torch.randn(8, 12)
    for net in (eager, compiled):
        net(x).square().sum().backward()
    assert torch.allclose(eager(x), compiled(x), rtol=1e-5, atol=1e-6)
    for pe, pc in zip(eager.parameters(), compiled.parameters()):
        assert torch.allclose(pe.grad, pc.grad, rtol=1e-5, atol=1e-6)
