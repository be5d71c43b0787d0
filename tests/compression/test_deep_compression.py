"""The Deep Compression methods and their file: identical predictions after export -> import,
zeros and codebooks preserved, sizes, clear errors on damaged files, the per-layer report, the
Lightning callback that runs the schedule (MethodHooks)."""
import io
from functools import partial

import pytest
import torch
from torch import nn

from dc_helpers import deep_compression, outputs, run_schedule
from lightning_modules.compression.coding.deep_compression import DeepCompressionFile
from lightning_modules.compression.errors import FileFormatError
from lightning_modules.config_check import ConfigError
from lightning_modules.models import LeNet5, LeNet300

NAMES = ["prune", "share", "prune_share", "deep_compression"]


def fp32_bytes(net):
    buf = io.BytesIO()
    torch.save(net.state_dict(), buf)
    return len(buf.getvalue())


def compressed(make_method, name, Net, seed=0, *overrides):
    """Trained by the schedule and finalized, as run.py does before the test and the export."""
    torch.manual_seed(seed)
    method = make_method(name, "w32a32g32", *overrides)
    return method, method.finalize(run_schedule(method, method.apply(Net())))


@pytest.mark.parametrize("Net", [LeNet300, LeNet5], ids=["lenet300", "lenet5"])
@pytest.mark.parametrize("name", NAMES)
def test_export_load_identical_predictions(make_method, name, Net, tmp_path):
    method, net = compressed(make_method, name, Net)
    assert method.name == name
    want = outputs(net)
    assert torch.isfinite(want).all()
    path = method.export(net, tmp_path / "model.dc")
    torch.manual_seed(99)  # a fresh net with other weights: everything comes from the file
    loaded = make_method(name, "w32a32g32").load(Net(), path)
    assert torch.equal(outputs(loaded), want)
    plain = dict(loaded.named_modules())
    for n, m in net.named_modules():
        if hasattr(m, "weight_mask"):  # pruned weights are still exactly zero
            assert (plain[n].weight[m.weight_mask == 0] == 0).all() and (m.weight_mask == 0).any()
    assert path.stat().st_size < fp32_bytes(Net())


def test_float16_storage_is_exact_and_smaller(make_method, tmp_path):
    """float_bits=16: finalize rounds every float to a float16 value, the file stores those
    (codebooks, biases), reloads to the same predictions and saves 2 bytes per float."""
    sizes = {}
    for fb in (32, 16):
        method, net = compressed(make_method, "deep_compression", LeNet5, 0, f"method.code.float_bits={fb}")
        for t in net.state_dict().values():
            if t.is_floating_point():
                assert fb == 32 or torch.equal(t, t.half().float())
        path = method.export(net, tmp_path / f"f{fb}.dc")
        assert torch.equal(outputs(method.load(LeNet5(), path)), outputs(net))
        sizes[fb] = path.stat().st_size
    floats = sum(m.bias.numel() for m in LeNet5().modules() if getattr(m, "bias", None) is not None)
    floats += 255 + 255 + 31 + 31  # the four codebooks (8-bit conv, 5-bit FC, code 0 = zero)
    assert sizes[32] - sizes[16] >= 2 * floats - 64  # (the deflated header differs a little)


def test_unknown_magic_is_refused(make_method, tmp_path):
    """(Files of formats 1 and 2 still load: tests/compression/test_container.py, from fixtures.)"""
    method, net = compressed(make_method, "deep_compression", LeNet300, 0, "method.code.float_bits=32")
    data = method.export(net, tmp_path / "v2.dc").read_bytes()
    bad = tmp_path / "bad.dc"
    bad.write_bytes(b"LWBDC9\r\n" + data[8:])
    with pytest.raises(FileFormatError, match="unknown magic"):
        method.load(LeNet300(), bad)


def test_float_bits_must_be_32_or_16():
    with pytest.raises(ConfigError, match=r"method.code.float_bits=8: valid: 32, 16"):
        DeepCompressionFile(float_bits=8)


def test_file_sizes_follow_the_stages(make_method, tmp_path):
    sizes = {}
    for name in NAMES:
        method, net = compressed(make_method, name, LeNet300)
        sizes[name] = method.export(net, tmp_path / f"{name}.dc").stat().st_size
    fp32 = fp32_bytes(LeNet300())
    assert sizes["deep_compression"] < sizes["prune_share"] < sizes["prune"] < fp32
    assert sizes["share"] < fp32 / 5  # 5-bit codes for 32-bit floats
    print("LeNet-300-100 file sizes:", sizes, "fp32", fp32)


def test_lenet300_8pct_6_5_bits_ratio(tmp_path):
    """The measurement asked for: random weights, 8 % kept, 6-bit weights, 5-bit indices."""
    torch.manual_seed(0)
    method = deep_compression(prune={"sparsity": 0.92, "start": 0, "end": 0},
                              share={"bits": {"conv": 8, "fc": 6}, "start": 1},
                              index_bits={"conv": 8, "fc": 5})
    net = run_schedule(method, method.apply(LeNet300()), steps=1)
    size = method.export(net, tmp_path / "m.dc").stat().st_size
    ratio = fp32_bytes(LeNet300()) / size
    rows = method.report(net)
    print(f"LeNet-300-100 8% / 6 / 5 bits: {size} B, fp32 ratio {ratio:.1f}x, report total "
          f"{rows[-1]['compression']:.1f}x")
    assert ratio > 35  # 41.9x measured on this machine with random weights
    # the report's total describes the file: its bits are the file's minus the header
    assert rows[-1]["compression"] == pytest.approx(32 * 266_610 / (8 * size), rel=0.08)
    assert rows[-1]["compression"] > ratio


def test_report_rows(make_method):
    method, net = compressed(make_method, "deep_compression", LeNet5)
    rows = method.report(net)
    assert [r["layer"] for r in rows] == ["features.0", "features.2", "classifier.1", "classifier.3", "total"]
    for r, bits in zip(rows, (8, 8, 5, 5)):
        assert r["weights"] in (500, 25_000, 400_000, 5_000)
        assert r["kept_pct"] == pytest.approx(8.0, abs=0.05)
        assert r["weight_bits_pq"] == bits and r["weight_bits_pqh"] <= bits
        assert r["index_bits_pq"] == (8 if r["layer"].startswith("features") else 5)
        assert r["index_bits_pqh"] <= r["index_bits_pq"]
        assert r["compression"] > 1
    assert rows[2]["compression"] > 32 / (5 + 5) * 100 / 8 * 0.9  # FC: ~(1/8 kept) x 32/(~7 bits)


def damaged(path, how):
    data = bytearray(path.read_bytes())
    if how == "truncated":
        return bytes(data[: len(data) // 2])
    if how == "one_byte_short":
        return bytes(data[:-1])
    if how == "empty":
        return b""
    pos = {"header": 20, "payload": len(data) // 2, "checksum": len(data) - 2}[how]
    data[pos] ^= 0x5A
    return bytes(data)


@pytest.mark.parametrize("how", ["truncated", "one_byte_short", "empty", "header", "payload", "checksum"])
def test_damaged_file_gives_one_clear_error(make_method, tmp_path, how):
    method, net = compressed(make_method, "deep_compression", LeNet300)
    good = method.export(net, tmp_path / "model.dc")
    bad = tmp_path / "bad.dc"
    bad.write_bytes(damaged(good, how))
    fresh = LeNet300()
    before = {k: v.clone() for k, v in fresh.state_dict().items()}
    with pytest.raises(FileFormatError) as e:
        method.load(fresh, bad)
    assert str(bad) in str(e.value) and "\n" not in str(e.value) and isinstance(e.value, ValueError)
    assert all(torch.equal(before[k], v) for k, v in fresh.state_dict().items())  # untouched


def test_file_of_another_model_or_format(make_method, tmp_path):
    method, net = compressed(make_method, "deep_compression", LeNet300)
    path = method.export(net, tmp_path / "model.dc")
    with pytest.raises(FileFormatError, match="does not match the model"):
        method.load(LeNet5(), path)
    torch.save(LeNet300().state_dict(), tmp_path / "plain.pt")
    with pytest.raises(FileFormatError, match="not a deep_compression file"):
        method.load(LeNet300(), tmp_path / "plain.pt")


@pytest.mark.parametrize("bad,msg", [
    ({"prune": {"sparsity": 0.9, "start": 1, "end": 2}, "share": {"start": 2}},
     r"method.share.start=2: must be after the last step of method.prune \(method.prune.end=2\)"),
    ({"prune": {"sparsity": 0.9}, "share": {"start": 3, "interval": "step"}},
     "method.share.interval=step: must equal method.prune.interval=epoch"),
    ({"prune": {"sparsity": 0.9}, "index_bits": {"conv": 8, "fc": 0}}, "method.code.index_bits.fc=0"),
])
def test_bad_method_config(bad, msg):
    with pytest.raises(ConfigError, match=msg):
        deep_compression(**bad)


def _tiny_fit(method, max_epochs):
    import pytorch_lightning as pl
    from torch.utils.data import DataLoader, TensorDataset

    from lightning_modules.module import CompressionModule
    torch.manual_seed(0)
    module = CompressionModule(LeNet300(hidden=(32, 16)), method, num_classes=10,
                               optimizer=partial(torch.optim.SGD, lr=0.05))
    data = DataLoader(TensorDataset(torch.randn(32, 1, 28, 28), torch.randint(0, 10, (32,))), batch_size=8)
    trainer = pl.Trainer(max_epochs=max_epochs, limit_train_batches=2, limit_val_batches=0, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, accelerator="cpu", devices=1)
    trainer.fit(module, train_dataloaders=data)
    return module.net


@pytest.mark.slow
def test_lightning_callback_runs_the_schedule(make_method):
    method = make_method("deep_compression", "w32a32g32")  # prune at epoch 1, share at 2
    net = _tiny_fit(method, max_epochs=3)
    for m in net.modules():
        if isinstance(m, nn.Linear):
            w = m.weight_orig * m.weight_mask
            assert float((w == 0).float().mean()) == pytest.approx(0.92, abs=0.01)
            assert w.unique().numel() <= 32
    with pytest.raises(ConfigError, match=r"method.share.start=2: must be < trainer.max_epochs=2"):
        _tiny_fit(make_method("deep_compression", "w32a32g32"), max_epochs=2)
