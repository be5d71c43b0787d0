"""The one checked file container (compression/container.py): round trip, refusals, atomic
writes; every method's file refuses damage (seeded fuzz); files of the formats before it (the
committed fixtures in tests/fixtures/formats/) still load to the logits they were saved with."""
import importlib.util
import random
from pathlib import Path

import pytest
import torch

from lightning_modules.compression import container
from lightning_modules.compression.errors import ConfigError, FileFormatError

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "formats"
_spec = importlib.util.spec_from_file_location("make_fixtures", FIXTURES / "make_fixtures.py")
fixtures = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fixtures)


def payload():
    return {"state": {"w": torch.randn(3, 4), "n": torch.tensor(7), "empty": torch.zeros(0, 5),
                      "bf": torch.randn(5).bfloat16(), "mask": torch.tensor([True, False, True]),
                      "t": torch.arange(6, dtype=torch.int16).reshape(2, 3).t()},  # not contiguous
            "layers": [{"name": "fc", "shape": (2, 3), "bits": 3, "scale": 0.5, "raw": None}],
            "blobs": [b"\x00\x01\x02", b""], "model": "MLP"}


def test_round_trip_keeps_every_value_dtype_and_shape(tmp_path):
    want = payload()
    got = container.read(container.write(tmp_path / "f.bin", "test", want), "test")
    assert got.keys() == want.keys() and got["model"] == "MLP" and got["blobs"] == want["blobs"]
    assert got["layers"] == [{"name": "fc", "shape": [2, 3], "bits": 3, "scale": 0.5, "raw": None}]
    for k, v in want["state"].items():
        assert got["state"][k].dtype == v.dtype and torch.equal(got["state"][k], v), k


def test_overhead_is_the_prelude_kind_and_deflated_header(tmp_path):
    state = {"w": torch.randn(100, 10), "b": torch.randn(100)}
    path = container.write(tmp_path / "f.bin", "state_dict", state)
    data = path.read_bytes()
    _, version, klen, hlen, blen = container._PRELUDE.unpack_from(data)
    assert (version, klen, blen) == (container.VERSION, len("state_dict"), 4 * 1100)
    assert len(data) == 27 + klen + hlen + blen and hlen < 100


def test_refusals_name_the_file_and_the_reason(tmp_path):
    path = container.write(tmp_path / "f.bin", "pq", {"x": torch.ones(2)})
    data = path.read_bytes()
    cases = {"not a low_rank file (a pq file)": (data, "low_rank"),
             "truncated": (data[:-1], "pq"), "padded": (data + b"\0", "pq"),
             "not a pq file (unknown magic": (b"junk" + data[4:], "pq"),
             "checksum mismatch": (data[:-5] + bytes([data[-5] ^ 1]) + data[-4:], "pq")}
    for why, (content, kind) in cases.items():
        bad = tmp_path / "bad.bin"
        bad.write_bytes(content)
        with pytest.raises(FileFormatError) as e:
            container.read(bad, kind)
        assert str(e.value).startswith(f"{bad}: ") and why in str(e.value) and "\n" not in str(e.value)
        assert isinstance(e.value, ConfigError)
    with pytest.raises(FileFormatError, match="cannot read"):
        container.read(tmp_path / "missing.bin", "pq")


def test_a_newer_version_is_told_apart_from_corruption(tmp_path, monkeypatch):
    monkeypatch.setattr(container, "VERSION", 2)
    path = container.write(tmp_path / "f.bin", "pq", {"x": torch.ones(2)})
    monkeypatch.setattr(container, "VERSION", 1)
    with pytest.raises(FileFormatError, match="container format 2, written by a newer version"):
        container.read(path, "pq")


def test_write_is_atomic(tmp_path):
    path = container.write(tmp_path / "f.bin", "pq", {"x": torch.ones(2)})
    before = path.read_bytes()
    with pytest.raises(TypeError, match="a object in the payload"):
        container.write(path, "pq", {"x": torch.zeros(3), "bad": object()})
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["f.bin"]


# --- every method's file ------------------------------------------------------------------------

def _logits(model) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(fixtures.inputs())


@pytest.mark.parametrize("name", list(fixtures.CASES))
def test_files_of_the_formats_before_the_container_still_load(name):
    """Written by tests/fixtures/formats/make_fixtures.py with the code of dd7f58e."""
    make_model, make_method = fixtures.CASES[name]
    torch.manual_seed(123)  # a fresh model with other weights: everything comes from the file
    loaded = make_method().load(make_model(), FIXTURES / name)
    assert torch.equal(_logits(loaded), torch.load(FIXTURES / "logits.pt")[name])


NEW = [n for n in fixtures.CASES if not n.endswith("_v1.dc")]  # one file per kind


@pytest.mark.parametrize("name", NEW)
def test_every_damaged_file_is_refused(name, tmp_path):
    """50 random truncations and 50 random bit flips (seeded) of a file written today: each is
    refused with FileFormatError naming the file, none loads."""
    model, method = fixtures.build(name)
    good = method.export(model, tmp_path / name).read_bytes()
    assert good.startswith(container.MAGIC)
    make_model, make_method = fixtures.CASES[name]
    assert torch.equal(_logits(make_method().load(make_model(), tmp_path / name)), _logits(model))
    rng = random.Random(name)
    bad = tmp_path / f"bad-{name}"
    for i in range(100):
        data = bytearray(good)
        if i < 50:
            data = data[:rng.randrange(len(good))]
        else:
            data[rng.randrange(len(good))] ^= 1 << rng.randrange(8)
        bad.write_bytes(bytes(data))
        with pytest.raises(FileFormatError) as e:
            make_method().load(make_model(), bad)
        assert str(bad) in str(e.value) and "\n" not in str(e.value), (i, str(e.value))
