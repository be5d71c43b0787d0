"""A suite's `seeds:` (benchmarks/suite.py): every run once per seed, run by run; a run's own
`seed=` sweep instead; any other shape of `seeds` is one error line."""
import pytest
from omegaconf import open_dict

from benchmarks import suite as suite_runner


def test_seeds_expand_every_run_in_order_and_follow_the_seed(tmp_path):
    suite, runs = suite_runner.plan("hinton_kd", str(tmp_path))
    assert suite["seeds"] == [0, 1, 2]
    names = [r["run_name"] for r in runs]
    base = ["mlp2x1200-fp32-W32A32G32-32", "mlp2x800-fp32-W32A32G32-32", "mlp2x800-kd-W32A32G32-32"]
    assert names == [f"{b}-s{s}" for b in base for s in (0, 1, 2)]  # teachers before students
    for r in runs:
        s = int(r["run_name"].rsplit("-s", 1)[1])
        assert r["cfg"].seed == s and r["overrides"].count(f"seed={s}") == 1
        if r["cfg"].method.name == "kd":  # each student learns from the teacher of its own seed
            assert r["cfg"].method.teacher == f"mlp2x1200-fp32-W32A32G32-32-s{s}"
    assert len({r["config_hash"] for r in runs}) == len(runs)  # the seed enters the hash


def test_a_run_may_sweep_its_own_seeds(tmp_path):
    _, runs = suite_runner.plan("bitwidth_sweep", str(tmp_path))
    names = [r["run_name"] for r in runs]
    assert len(names) == len(set(names))
    for m, wa in (("dorefa", "W2A2"), ("dorefa", "W4A4"), ("lqnet", "W2A2"), ("lqnet", "W4A4")):
        assert sorted(n for n in names if n.startswith(f"lenet5-{m}-{wa}G32-32-s")) == [
            f"lenet5-{m}-{wa}G32-32-s{s}" for s in (0, 1, 2)]
    assert "lenet5-dorefa-W1A2G32-32-s0" in names and "lenet5-dorefa-W1A2G32-32-s1" not in names


def test_with_seeds_leaves_runs_that_set_their_seed():
    runs = [["method=fp32"], ["method=xnor", "seed=7"]]
    assert suite_runner.with_seeds(runs, [0, 1]) == [["method=fp32", "seed=0"], ["method=fp32", "seed=1"],
                                                     ["method=xnor", "seed=7"]]
    assert suite_runner.with_seeds(runs, [0, 1], extra=["seed=3"]) == runs  # the command line wins
    assert suite_runner.with_seeds(runs, None) == runs


@pytest.mark.parametrize("bad", [3, "0,1,2", [], [0, 0], [0.5, 1], [True, False], {"a": 1}])
def test_seeds_of_another_shape_is_one_error_line(bad, tmp_path, monkeypatch, capsys):
    real = suite_runner.compose

    def compose(*args, **kwargs):
        cfg = real(*args, **kwargs)
        with open_dict(cfg):
            cfg.suite.seeds = bad
        return cfg

    monkeypatch.setattr(suite_runner, "compose", compose)
    assert suite_runner.main(["smoke", "--results-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: suite smoke: seeds=")
    assert "valid: e.g. seeds: [0, 1, 2]" in err and not (tmp_path / "runs").exists()
