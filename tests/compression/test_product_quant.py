"""Product quantization (Stock et al. 2020): the EM objective against its definition, monotone
EM, the weighted E- and M-steps, codebook fine-tuning with fixed assignments, distillation, the
packed file (log2(k)-bit assignments, float16 codebooks, identical predictions), the harness."""
import copy
import functools
import io
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dc_helpers import outputs, sgd_steps
from lightning_modules.compression.errors import FileFormatError
from lightning_modules.compression.quantization.pq import ProductQuant, payload
from lightning_modules.compression.quantization.product import (CALIBRATION, block_gram, em, objective, pq_of, rows,
                                                                 subvectors)
from lightning_modules.config_check import ConfigError
from lightning_modules.models import CifarResNet, LeNet5

SUITE_BLOCKS = {"conv": 5, "fc": 4, "classifier.1": 8}  # conf/suite/product_quantization.yaml


def correlated(n, D, seed=0):
    """Inputs with correlated columns (as real activations are)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, D, generator=g) @ torch.randn(D, D, generator=g) / math.sqrt(D)


@functools.lru_cache(maxsize=None)
def _quantized(k, blocks):
    torch.manual_seed(0)
    method = ProductQuant(centroids=k, block_size=dict(blocks), interval="step", start=3, em_iters=5)
    net = method.apply(LeNet5())
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    for t in range(4):
        method.on_time(net, t, "step")
        sgd_steps(net, steps=1, seed=t, optimizer=opt)
    return method, net


def quantized(k=16, blocks=None):
    """(method, LeNet-5) trained a few steps, quantized at step 3 (calibration = those batches),
    one more step of fine-tuning; a fresh copy of one cached run."""
    return copy.deepcopy(_quantized(k, tuple((blocks or SUITE_BLOCKS).items())))


def fp32_bytes(net):
    buf = io.BytesIO()
    torch.save(net.state_dict(), buf)
    return len(buf.getvalue())


# --- the objective and EM -------------------------------------------------------------------------

@pytest.mark.parametrize("d", [4, 24])
def test_em_objective_is_the_blockwise_output_error_and_never_increases(d):
    torch.manual_seed(0)
    W, x = torch.randn(64, 24), correlated(200, 24)
    V, H = subvectors(W, d), block_gram(x, d)
    C, a, history = em(V, H, k=8, iters=30)
    assert len(history) >= 3
    assert all(b <= a_ * (1 + 1e-12) for a_, b in zip(history, history[1:]))  # EM is monotone
    assert history[-1] < history[0]
    Wq = C.float()[a].reshape(W.shape)
    blockwise = sum(((x[:, j:j + d] @ (W - Wq)[:, j:j + d].T) ** 2).sum().item() for j in range(0, 24, d))
    assert history[-1] == pytest.approx(blockwise, rel=1e-4)
    assert objective(V, H, C, a) == pytest.approx(history[-1], rel=1e-9)
    if d == 24:  # one block: J is the layer's output error ||x (W - q(W))^T||^2 itself
        assert history[-1] == pytest.approx(((x @ (W - Wq).T) ** 2).sum().item(), rel=1e-4)


def test_e_step_is_the_weighted_argmin_and_m_step_the_weighted_centroid():
    torch.manual_seed(1)
    V, H = subvectors(torch.randn(10, 12), 3), block_gram(correlated(100, 12, seed=1), 3)
    C, a, _ = em(V, H, k=6, iters=50)
    E = V.double()[:, :, None, :] - C[None, None]  # (C_out, m, k, d)
    dist = torch.einsum("cjkd,jde,cjke->cjk", E, H, E)
    assert torch.equal(a, dist.argmin(2))  # the last step of em is an E-step
    C1, a1, _ = em(V, H, k=1, iters=1)  # one codeword: the H-weighted mean of all sub-vectors
    want = torch.linalg.solve(H.sum(0) * V.shape[0], torch.einsum("jde,cje->d", H, V.double()))
    assert torch.allclose(C1[0], want, rtol=1e-6, atol=1e-9) and not a1.any()


def test_rows_are_the_conv_input_in_the_weights_sub_vector_order():
    torch.manual_seed(0)
    conv, x = nn.Conv2d(3, 5, 3, stride=2, padding=1), torch.randn(2, 3, 9, 9)
    y = (rows(conv, x) @ conv.weight.reshape(5, -1).T).reshape(2, -1, 5).transpose(1, 2)
    assert torch.allclose(y.reshape(2, 5, 5, 5), conv(x) - conv.bias.view(1, 5, 1, 1), atol=1e-5)


# --- quantized layers ---------------------------------------------------------------------------

def test_weights_are_codewords_and_fine_tuning_moves_only_the_codebooks():
    method, net = quantized()
    assert set(method.history) == {"features.2", "classifier.1", "classifier.3"}  # first: skipped
    for name in method.history:
        m, pq = net.get_submodule(name), pq_of(net.get_submodule(name))
        assert bool(pq.active) and pq.codebook.shape == (16, m.weight[0].numel() // pq.assign.shape[1])
        assert torch.equal(subvectors(m.weight, pq.codebook.shape[1]), pq.codebook[pq.assign])
    before = {n: pq_of(net.get_submodule(n)).assign.clone() for n in method.history}
    books = {n: pq_of(net.get_submodule(n)).codebook.detach().clone() for n in method.history}
    net.zero_grad()
    sgd_steps(net, steps=2)
    for n in method.history:
        m, pq = net.get_submodule(n), pq_of(net.get_submodule(n))
        assert torch.equal(pq.assign, before[n])  # assignments fixed
        assert not torch.equal(pq.codebook, books[n])  # codebooks learn
        assert not m.parametrizations.weight.original.grad.any()  # W itself is unused now
        assert torch.equal(subvectors(m.weight, pq.codebook.shape[1]), pq.codebook[pq.assign])


def test_small_layers_get_the_largest_power_of_two_below_their_sub_vectors():
    method = ProductQuant(centroids=256, layers=[{"name": "*"}])
    net = method.apply(LeNet5())
    assert pq_of(net.features[0]).codebook.shape == (16, 25)  # 20 kernels of 5x5 -> k = 16
    assert pq_of(net.features[2]).codebook.shape == (256, 25)  # 1000 kernels
    assert pq_of(net.classifier[3]).codebook.shape == (256, 4)  # 1250 sub-vectors of 4


def test_teacher_is_the_net_at_start_frozen_and_the_loss_is_the_distillation_kl():
    torch.manual_seed(0)
    method = ProductQuant(centroids=16, block_size=SUITE_BLOCKS, interval="step", start=1, em_iters=3)
    net = method.apply(LeNet5())
    sgd_steps(net, steps=2)
    assert method.loss(net(torch.randn(2, 1, 28, 28)), None, None) is None  # before start: cross-entropy
    want_teacher = outputs(net)
    method.on_time(net, 1, "step")
    teacher = method.teacher
    assert torch.equal(outputs(teacher), want_teacher)
    assert not torch.equal(outputs(net), want_teacher)  # the student is quantized
    assert not any(pq_of(m) for m in teacher.modules())  # a plain frozen copy
    assert not any(p.requires_grad for p in teacher.parameters())
    x = torch.randn(8, 1, 28, 28)
    student = net(x)
    want = F.kl_div(F.log_softmax(student, 1), F.log_softmax(teacher(x), 1), log_target=True,
                    reduction="batchmean")
    assert torch.allclose(method.loss(student, None, (x, None)), want)
    method.temperature = 4.0
    want4 = F.kl_div(F.log_softmax(student / 4, 1), F.log_softmax(teacher(x) / 4, 1),
                     log_target=True, reduction="batchmean") * 16
    assert torch.allclose(method.loss(student, None, (x, None)), want4)
    assert ProductQuant(distill=False).loss(student, torch.zeros(8, dtype=torch.long), (x, None)) is None


def test_resnet_layers_quantize_and_run():
    torch.manual_seed(0)
    method = ProductQuant(centroids=32, interval="step", start=1, em_iters=3)
    net = method.apply(CifarResNet(depth=8, in_channels=1, image_size=28))
    sgd_steps(net, steps=1)
    method.on_time(net, 1, "step")
    assert all(bool(pq_of(net.get_submodule(n)).active) for n in method.history)
    assert net.get_submodule("conv1") is not None and pq_of(net.conv1) is None  # first: skipped
    sgd_steps(net, steps=1)


# --- the file -------------------------------------------------------------------------------------

def test_export_load_identical_predictions_and_exact_assignment_bytes(tmp_path):
    method, net = quantized(k=256)
    path = method.export(net, tmp_path / "model.pq")  # from the training net: finalized on a copy
    final = method.finalize(net)
    assert not any(pq_of(m) for m in final.modules()) and method.teacher is None
    torch.manual_seed(99)  # a fresh net with other weights: everything comes from the file
    loaded = ProductQuant().load(LeNet5(), path)
    assert torch.equal(outputs(loaded), outputs(final))
    sizes = payload(path)
    for name, code in ((n, m.pq_code) for n, m in final.named_modules() if hasattr(m, "pq_code")):
        k, d = code.codebook.shape
        n_sub = code.assign.numel()
        assert sizes["layers"][name]["codes"] == math.ceil(n_sub * math.log2(k) / 8)  # log2(k) bits each
        assert sizes["layers"][name]["codebook"] == k * d * 2  # float16
        assert torch.equal(code.codebook, code.codebook.half().float())
        assert torch.equal(loaded.get_submodule(name).pq_code.assign, code.assign)
    assert sizes["layers"]["classifier.1"]["codes"] == 500 * 800 // 8  # 50,000 sub-vectors, 8 bits
    assert path.stat().st_size * 15 <= fp32_bytes(LeNet5())  # >= 15x smaller than FP32
    again = method.export(final, tmp_path / "again.pq")  # from the plain net: the same content
    assert torch.equal(outputs(ProductQuant().load(LeNet5(), again)), outputs(final))


def test_assignments_of_other_bit_widths_are_packed_exactly(tmp_path):
    method, net = quantized(k=8, blocks={"conv": "kernel", "fc": 4})
    path = method.export(net, tmp_path / "model.pq")
    for name, row in payload(path)["layers"].items():
        assert row["bits"] == 3 and row["codes"] == math.ceil(row["n"] * 3 / 8)
    assert torch.equal(outputs(ProductQuant().load(LeNet5(), path)), outputs(method.finalize(net)))


@pytest.mark.parametrize("how", ["truncated", "empty", "header", "payload", "checksum"])
def test_damaged_file_gives_one_clear_error(tmp_path, how):
    method, net = quantized()
    good = method.export(net, tmp_path / "model.pq")
    data = bytearray(good.read_bytes())
    if how == "truncated":
        data = data[: len(data) // 2]
    elif how == "empty":
        data = b""
    else:
        data[{"header": 9, "payload": len(data) // 2, "checksum": len(data) - 2}[how]] ^= 0x5A
    bad = tmp_path / "bad.pq"
    bad.write_bytes(bytes(data))
    fresh = LeNet5()
    before = {k: v.clone() for k, v in fresh.state_dict().items()}
    with pytest.raises(FileFormatError) as e:
        ProductQuant().load(fresh, bad)
    assert str(bad) in str(e.value) and "\n" not in str(e.value)
    assert all(torch.equal(before[k], v) for k, v in fresh.state_dict().items())


def test_file_of_another_model_or_format(tmp_path):
    method, net = quantized()
    path = method.export(net, tmp_path / "model.pq")
    with pytest.raises(FileFormatError, match="does not match the model"):
        ProductQuant().load(CifarResNet(depth=8, in_channels=1, image_size=28), path)
    with pytest.raises(FileFormatError, match="does not match the model"):
        ProductQuant().load(LeNet5(num_classes=7), path)
    torch.save(LeNet5().state_dict(), tmp_path / "plain.pt")
    with pytest.raises(FileFormatError, match="not a pq file"):
        ProductQuant().load(LeNet5(), tmp_path / "plain.pt")


# --- config ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("kw,msg", [
    ({"centroids": 300}, "method.centroids=300: must be a power of two"),
    ({"centroids": 1}, "method.centroids=1"),
    ({"block_size": {"conv": 9}}, "method.block_size={'conv': 9}: needs the keys conv and fc"),
    ({"block_size": {"conv": "kernel", "fc": 0}}, "method.block_size.fc=0: must be a positive integer"),
    ({"block_size": {"conv": "kernel", "fc": "kernel"}}, "method.block_size.fc=kernel"),
    ({"start": 0}, "method.start=0: must be an integer >= 1"),
    ({"interval": "batch"}, "method.interval=batch: valid: epoch, step"),
    ({"temperature": 0}, "method.temperature=0: must be a number > 0"),
    ({"em_iters": 0}, "method.em_iters=0"),
])
def test_bad_config_is_one_line(kw, msg):
    with pytest.raises(ConfigError) as e:
        ProductQuant(**kw)
    assert msg in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("blocks,msg", [
    ({"conv": "kernel", "fc": 8}, "method.block_size.fc=8: must divide the row length of classifier.3 (500"),
    ({"conv": 7, "fc": 4}, "method.block_size.conv=7: must divide the row length of features.2 (500"),
    ({"conv": "kernel", "fc": 4, "classifier": {"9": 4}},
     "method.block_size.classifier.9: not a Conv2d/Linear"),
])
def test_block_sizes_that_do_not_fit_the_model_are_config_errors(blocks, msg):
    with pytest.raises(ConfigError) as e:
        ProductQuant(block_size=blocks).apply(LeNet5())
    assert msg in str(e.value) and "\n" not in str(e.value)


def test_yaml_builds_the_method(make_method):
    method = make_method("pq", "w32a32g32")
    assert isinstance(method, ProductQuant) and method.k == 256 and method.distill
    assert (method.schedule.interval, method.schedule.times) == ("epoch", [1])


# --- through the harness ----------------------------------------------------------------------------

@pytest.mark.slow
def test_train_py_run_quantizes_and_reloads(tmp_path, fmnist):
    from tests.conftest import only_record, train
    args = ["model=lenet5", "method=pq", "trainer.max_epochs=2", "data.train_subset=512",
            "data.test_subset=500", "data.val_size=500", "trainer.limit_val_batches=1",
            "measure.warmup_steps=2", "method.start=1", "method.calibration_batches=4",
            "method.em_iters=5", "method.block_size.conv=5", "+method.block_size.classifier.1=8"]
    p = train(args, tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    rec = only_record(tmp_path)
    assert rec["status"] == "ok" and rec["method"] == "pq" and rec["method_label"] == "PQ (Stock et al.)"
    assert rec["params"] == sum(p.numel() for p in LeNet5().parameters())  # weights shared, not removed
    assert rec["footprint_bytes"] * 15 <= fp32_bytes(LeNet5())
    net = ProductQuant().load(LeNet5(), rec["model_file"]).eval()
    with torch.no_grad():
        pred = net(fmnist.x_test[:500]).argmax(1)
    assert (pred == fmnist.y_test[:500]).float().mean().item() == pytest.approx(rec["top1"], abs=1e-6)
    assert math.isfinite(rec["test_it_s"])


def test_method_state_holds_the_calibration_inputs_and_the_teacher_through_weights_only():
    """A mid-run checkpoint's method state: before the EM step the calibration inputs gathered so
    far, after it the teacher (the net as it was at the step), both restored onto a fresh run's net
    from a weights_only load."""
    def fresh():
        m = ProductQuant(centroids=16, interval="step", start=3, em_iters=3, calibration_batches=2)
        return m, m.apply(LeNet5())

    def through_file(state):
        buf = io.BytesIO()
        torch.save(state, buf)
        buf.seek(0)
        return torch.load(buf, weights_only=True)

    torch.manual_seed(0)
    method, net = fresh()
    seen = [torch.randn(4, 1, 28, 28) for _ in range(3)]
    for x in seen:
        net(x)
    before = through_file(method.state_dict())
    assert [torch.equal(a, b) for a, b in zip(before["calibration"], seen[1:])] == [True, True]
    m2, net2 = fresh()
    m2.load_state_dict(before)
    kept = getattr(net2, CALIBRATION)
    assert kept.maxlen == 2 and all(torch.equal(a, b) for a, b in zip(kept, seen[1:]))

    method.on_time(net, 3, "step")  # the EM step: teacher copied, inputs dropped
    after = through_file(method.state_dict())
    assert after["teacher"] is not None and after["calibration"] == [] and after["history"]
    m3, net3 = fresh()
    net3.load_state_dict(net.state_dict())
    m3.load_state_dict(after)
    x = torch.randn(5, 1, 28, 28)
    assert torch.equal(m3.teacher(x), method.teacher(x)) and m3.done == method.done
    assert m3.loss(net3(x), None, (x, None)) is not None
    missing = dict(after)
    del missing["teacher"]
    with pytest.raises(FileFormatError, match="teacher"):
        fresh()[0].load_state_dict(missing)
