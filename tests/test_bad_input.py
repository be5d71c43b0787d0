"""Bad input: one line naming key, value and what is valid; exit 2; nothing written."""
import pytest

from tests.conftest import train

CASES = [
    (["model=foo"], "model=foo: unknown model; valid: active_shift_resnet20, alexnet, densenet_bc, "
                    "efficientnet_b0, efficientnet_b1, efficientnet_b2, efficientnet_b3, lenet300, lenet5, "
                    "mlp2x1200, mlp2x800, mobilenet_v1, mobilenet_v2, resnet18, resnet20, resnet50, resnet8, "
                    "resnet_dilated, shift_resnet20, shift_resnet56, shufflenet, sspq, sspq_small, vgg16, "
                    "vgg_small"),
    (["method=foo"], "method=foo: unknown method; valid: "),
    (["data=foo"], "data=foo: unknown data; valid: "),
    (["precision=fp8"], "precision=fp8: unknown precision; valid: 16-mixed, 16-mixed-noscale, 32, bf16-mixed"),
    (["bits.w=0"], "bits.w=0: must be an integer in 1..32"),
    (["bits.a=33"], "bits.a=33: must be an integer in 1..32"),
    (["bits.g=x"], "bits.g=x: must be an integer in 1..32"),
    (["data.batch_size=0"], "data.batch_size=0: must be an integer >= 1"),
    (["data.batch_size=-5"], "data.batch_size=-5: must be an integer >= 1"),
    (["trainer.max_epochs=0"], "trainer.max_epochs=0: must be an integer >= 1"),
    (["method=xnor", "bits=w1a2g6"], "bits.a=2: not valid for method xnor; valid: 1"),
    (["method=dorefa", "bits.g=0"], "bits.g=0: must be an integer in 1..32"),
    (["method=prune", "trainer.max_epochs=1"], "method.prune.end=1: must be < trainer.max_epochs=1"),
    (["data.root=/no/such/dir"], "data.root=/no/such/dir: no such directory"),
    (["trainer.no_such_key=1"], "trainer.no_such_key=1: unknown key; valid keys under trainer: accelerator"),
]


@pytest.mark.parametrize("args,message", CASES, ids=[c[0][0] for c in CASES])
def test_bad_input_fails_in_one_line_and_writes_nothing(tmp_path, args, message):
    results = tmp_path / "results"
    p = train(args, results)
    assert p.returncode == 2, p.stderr[-2000:]
    lines = [l for l in p.stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and "Traceback" not in p.stderr, p.stderr[-2000:]
    assert lines[0].startswith("error: " + message)
    assert not results.exists()  # no run directory, no record
