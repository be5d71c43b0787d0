"""The deploy step (lightning_modules/deploy/deploy.py) as a user meets it: `train.py` runs that
end with a deployed model on a real runtime (packed-bit binary kernels, ONNX Runtime's integer
kernels), its record keys, refusals before training, damaged deploy files, and a model the
runtime cannot run. Speed is never asserted; the contract is: what runs is what was trained."""
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, train

TINY = ["model=lenet5", "data.train_subset=512", "data.test_subset=600", "data.val_size=500",
        "trainer.limit_val_batches=1", "measure.warmup_steps=2", "deploy.rounds=2",
        "deploy.time_samples=256"]
DEPLOY_KEYS = ("deploy_backend", "deploy_file", "deploy_bytes", "deploy_top1", "deploy_top5",
               "deploy_agreement", "deploy_test_samples_s", "deploy_fp32_test_samples_s", "deploy_x_fp32")


def one_run(tmp_path_factory, name: str, args: list[str]) -> dict:
    out = tmp_path_factory.mktemp(name)
    p = train([*TINY, *args], out)
    assert p.returncode == 0, p.stderr[-3000:]
    return json.loads(next(out.rglob("record.json")).read_text())


@pytest.fixture(scope="module")
def xnor_run(tmp_path_factory):
    return one_run(tmp_path_factory, "xnor", ["method=xnor", "bits=w1a1g32"])


@pytest.fixture(scope="module")
def dorefa_run(tmp_path_factory):
    return one_run(tmp_path_factory, "dorefa", ["method=dorefa", "bits=w2a2g32"])


def check_common(rec: dict) -> None:
    assert rec["status"] == "ok"
    assert all(rec.get(k) is not None for k in DEPLOY_KEYS), {k: rec.get(k) for k in DEPLOY_KEYS}
    f = Path(rec["deploy_file"])
    assert f.is_file() and rec["deploy_bytes"] == f.stat().st_size
    # the deployed model's accuracy differs from the trained one's only where predictions differ
    assert abs(rec["deploy_top1"] - rec["top1"]) <= 1 - rec["deploy_agreement"] + 1e-9
    assert rec["deploy_samples"] == rec["test_samples"] == 600
    assert rec["deploy_x_fp32"] > 0 and rec["deploy_fp32_test_samples_s"] > 0


@pytest.mark.slow
def test_xnor_run_deploys_on_the_packed_bit_kernels_from_its_packed_export(xnor_run):
    rec = xnor_run
    check_common(rec)
    assert rec["deploy_backend"] == "binary"
    assert rec["deploy_file"] == rec["model_file"]  # the kernels' words are the export's 1-bit codes
    assert rec["deploy_agreement"] >= 0.999
    binary = [n for n, kind in rec["deploy_layers"].items() if kind == "binary"]
    quantized = [layer["name"] for layer in rec["layers"] if layer["bits"]["w"] == 1 and layer["bits"]["a"] == 1]
    assert binary and sorted(binary) == sorted(quantized)


@pytest.mark.slow
def test_dorefa_run_deploys_integer_onnx_with_integer_operators(dorefa_run):
    from lightning_modules.deploy.onnx_export import optimized_ops
    rec = dorefa_run
    check_common(rec)
    assert rec["deploy_backend"] == "onnx" and rec["deploy_file"].endswith("model.onnx")
    assert rec["deploy_agreement"] >= 0.995
    import onnxruntime as ort  # the provider that ran it is ONNX Runtime's first available one
    assert rec["deploy_provider"] == next(p for p in ("CUDAExecutionProvider", "CPUExecutionProvider")
                                          if p in ort.get_available_providers())
    int8 = [n for n, kind in rec["deploy_layers"].items() if kind == "int8"]
    assert len(int8) == sum(layer["bits"]["w"] == 2 for layer in rec["layers"]) > 0
    ops = optimized_ops(Path(rec["deploy_file"]))
    integer = sum(ops[o] for o in ("ConvInteger", "MatMulInteger", "QLinearConv", "QLinearMatMul"))
    assert integer == len(int8), ops


def test_deploy_kind_names_a_provider_other_than_the_cpu():
    from benchmarks.tables import deploy_kind
    rec = {"deploy_backend": "onnx", "deploy_layers": {"a": "int8", "b": "fp32"}}
    assert deploy_kind(rec) == "onnx int8"  # records before deploy_provider: the CPU
    assert deploy_kind(rec | {"deploy_provider": "CPUExecutionProvider"}) == "onnx int8"
    assert deploy_kind(rec | {"deploy_provider": "CUDAExecutionProvider"}) == "onnx int8 CUDA"
    assert deploy_kind({**rec, "deploy_layers": {"a": "fp32"}, "deploy_provider": "CUDAExecutionProvider"}) \
        == "onnx fp32 CUDA"
    assert deploy_kind({"deploy_backend": "binary", "deploy_isa": "avx2"}) == "binary avx2"


@pytest.mark.slow
def test_float_run_deploys_to_onnx_runtime_fp32(tmp_path_factory):
    rec = one_run(tmp_path_factory, "fp32", [])
    check_common(rec)
    assert rec["deploy_backend"] == "onnx" and set(rec["deploy_layers"].values()) <= {"fp32"}
    assert rec["deploy_agreement"] >= 0.999


@pytest.mark.slow
@pytest.mark.parametrize("args", [["method=dorefa", "bits=w2a2g32"], ["method=xnor", "bits=w1a32g32"],
                                  ["method=fp32"]])
def test_deploy_binary_is_refused_before_training_naming_method_and_bits(tmp_path, args):
    p = train([*TINY, *args, "deploy=binary"], tmp_path / "res")
    assert p.returncode != 0
    lines = [ln for ln in p.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: deploy=binary"), p.stderr
    method = args[0].split("=")[1] if args[0].startswith("method=") else "fp32"
    bits = {"method=dorefa": "W2A2", "method=xnor": "W1A32"}.get(args[0], "W32A32")
    assert method in lines[0] and bits in lines[0]
    assert not (tmp_path / "res").exists()  # nothing written


def test_deploy_choice_check_names_the_valid_ones():
    from lightning_modules.compression.errors import ConfigError
    from lightning_modules.deploy.deploy import check
    with pytest.raises(ConfigError, match=r"^deploy=fast: valid: auto, onnx, binary, none$"):
        check("fast", "xnor", {"w": 1, "a": 1})
    check("binary", "bnn", {"w": 1, "a": 1})  # W1A1: accepted


@pytest.mark.slow
def test_a_model_the_runtime_cannot_run_records_none_with_the_reason(tmp_path):
    """torchvision's AlexNet at 32x32 pools 1x1 maps to 6x6: the ONNX exporter has no such
    adaptive pooling; the run is still ok."""
    args = ["model=alexnet", "data=synthetic", "data.image_size=32", "data.num_classes=10",
            "data.batch_size=4", "data.eval_batch_size=4", "data.num_batches=2", "data.eval_batches=1",
            "data.pool=1", "trainer.limit_val_batches=1", "measure.warmup_steps=0"]
    p = train(args, tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    rec = json.loads(next(tmp_path.rglob("record.json")).read_text())
    assert rec["status"] == "ok" and rec["deploy_backend"] == "none"
    assert "adaptive_avg_pool2d" in rec["deploy_reason"]
    assert not list(tmp_path.rglob("*.onnx"))


def run_dir_cmd(run_dir: Path):
    return subprocess.run([sys.executable, "-m", "benchmarks.deploy_speed", "--run-dir", str(run_dir),
                           "--rounds", "1"], cwd=REPO, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
@pytest.mark.parametrize("fixture", ["dorefa_run", "xnor_run"])
def test_run_dir_measures_the_deployed_model_and_refuses_a_damaged_file(request, tmp_path, fixture):
    rec = request.getfixturevalue(fixture)
    src = Path(rec["deploy_file"]).parent
    run_dir = tmp_path / "runs" / "adhoc" / src.name
    shutil.copytree(src, run_dir)
    record = json.loads((run_dir / "record.json").read_text())
    record["deploy_file"] = str(run_dir / Path(rec["deploy_file"]).name)
    record["model_file"] = str(run_dir / Path(rec["model_file"]).name)
    (run_dir / "record.json").write_text(json.dumps(record))

    p = run_dir_cmd(run_dir)
    assert p.returncode == 0, p.stderr[-2000:]
    line = json.loads(p.stdout.strip().splitlines()[-1])
    assert line["backend"] == rec["deploy_backend"] and line["x_fp32"] > 0

    f = Path(record["deploy_file"])
    data = f.read_bytes()
    f.write_bytes(data[: len(data) // 2])  # truncated: the command says so in one line
    p = run_dir_cmd(run_dir)
    assert p.returncode == 1
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and str(f) in lines[0], p.stderr
    f.write_bytes(data[:100] + bytes([data[100] ^ 0x10]) + data[101:])  # one bit flipped: the loader refuses it
    from lightning_modules.compression.errors import FileFormatError
    from lightning_modules.deploy.deploy import load_deployed
    with pytest.raises(FileFormatError, match="^" + re.escape(f"{f}: deploy file corrupted")):
        load_deployed(record, lambda: None)
