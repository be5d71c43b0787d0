"""`make gpu-check` (benchmarks/gpu_check.py): its dry run on the CPU runs every check's code path
and reports it in the documented format; a crashed, timed-out or failed check makes it fail; its
GradScaler rule is torch's."""
import json
import re
import subprocess
import sys

import pytest
import torch

from benchmarks import gpu_check
from tests.conftest import REPO

LINE = re.compile(r"^(PASS|FAIL|SKIP)  ([a-z0-9_]+)  (\S.*)$")


def scaler_trajectory(overflows: set[int], steps: int, growth_interval: int) -> list[float]:
    """torch's GradScaler's scale before the first step and after each, with an inf gradient at
    the steps in `overflows`."""
    w = torch.nn.Parameter(torch.ones(3))
    opt = torch.optim.SGD([w], lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 10, growth_interval=growth_interval)
    out = [scaler.get_scale()]
    for i in range(steps):
        opt.zero_grad()
        scaler.scale((w * 2).sum()).backward()
        if i in overflows:
            w.grad[0] = float("inf")
        scaler.step(opt)
        scaler.update()
        out.append(scaler.get_scale())
    return out


@pytest.mark.parametrize("overflows, steps, g, growths", [({2}, 12, 3, 3), ({0, 1, 5}, 14, 4, 2), (set(), 6, 2, 3)])
def test_follows_gradscaler_agrees_with_torch(overflows, steps, g, growths):
    s = scaler_trajectory(overflows, steps, g)
    assert gpu_check.follows_gradscaler(s, g) == (True, growths)
    assert not gpu_check.follows_gradscaler(s, g + 1)[0] or growths == 0  # growth at the wrong step
    broken = s[:4] + [s[4] * 4] + [x * 4 for x in s[5:]]  # a jump GradScaler never makes
    assert not gpu_check.follows_gradscaler(broken, g)[0]


def test_a_crashed_or_timed_out_check_is_a_fail(monkeypatch, tmp_path):
    def boom(ctx):
        raise ValueError("no kernel image\nmore")
    monkeypatch.setitem(gpu_check.CHECKS, "bf16", (boom, 1))
    r = gpu_check.one("bf16", gpu_check.Ctx(True, True, tmp_path))
    assert r == {"check": "bf16", "status": "FAIL", "figures": "crashed: ValueError: no kernel image"}
    r = gpu_check.outcome("ddp_nccl", -9, "starting\nSegmentation fault\n", 3.0)
    assert r["status"] == "FAIL" and r["figures"] == "crashed (exit status -9): Segmentation fault"
    assert gpu_check.outcome("ddp_nccl", None, "", 9.0, timeout=9)["figures"] == "timed out after 9 s"
    done = gpu_check.MARK + json.dumps({"check": "bf16", "status": "PASS", "figures": "x"})
    assert gpu_check.outcome("bf16", 0, f"log\n{done}\n", 1.0)["status"] == "PASS"


def test_a_check_past_its_timeout_is_ended_and_fails(tmp_path):
    args = gpu_check.parse(["--cpu", "--quick"])
    r, _ = gpu_check.run_check("bf16", args, tmp_path, timeout=0.5)  # not even torch imports in 0.5 s
    assert r["status"] == "FAIL" and r["figures"] == "timed out after 0.5 s" and r["seconds"] < 30


@pytest.mark.parametrize("status, rc", [("PASS", 0), ("SKIP", 0), ("FAIL", 1)])
def test_exit_status_and_table_follow_the_checks(monkeypatch, tmp_path, capsys, status, rc):
    seen = []

    def fake(name, args, work, timeout):
        seen.append((name, timeout))
        return {"check": name, "status": status if name == "bf16" else "PASS", "figures": f"{name} figures",
                "seconds": 1.0}, ""
    monkeypatch.setattr(gpu_check, "run_check", fake)
    assert gpu_check.main(["--cpu", "--only", "amp_fp16_scaler,bf16", "--results-dir", str(tmp_path)]) == rc
    assert [n for n, _ in seen] == ["amp_fp16_scaler", "bf16"] and all(0 < t <= 600 for _, t in seen)
    lines = capsys.readouterr().out.splitlines()
    assert lines[:2] == ["PASS  amp_fp16_scaler  amp_fp16_scaler figures", f"{status}  bf16  bf16 figures"]
    assert lines[2].startswith(f"gpu_check: {1 + (status == 'PASS')} passed, {int(status == 'FAIL')} failed")
    table = (tmp_path / "tables" / "gpu_check_cpu.md").read_text()
    assert f"| bf16 " in table and status in table and "Hardware:" in table
    data = json.loads((tmp_path / "tables" / "gpu_check_cpu.json").read_text())
    assert [r["status"] for r in data["results"]] == ["PASS", status] and data["mode"] == "cpu"


def test_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys):
    assert gpu_check.main(["--cpu", "--only", "bf16,nope", "--results-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --only=bf16,nope: unknown check nope; valid: amp_fp16_scaler, bf16")
    assert "\n" not in err and not any(tmp_path.iterdir())
    if not torch.cuda.is_available():
        assert gpu_check.main(["--results-dir", str(tmp_path)]) == 2
        assert "--cpu" in capsys.readouterr().err and not any(tmp_path.iterdir())


@pytest.mark.slow
def test_cpu_dry_run_runs_every_check(tmp_path):
    p = subprocess.run([sys.executable, "-m", "benchmarks.gpu_check", "--cpu", "--quick", "--budget", "1500",
                        "--results-dir", str(tmp_path)], cwd=REPO, capture_output=True, text=True, timeout=1800)
    lines = p.stdout.strip().splitlines()
    assert p.returncode == 0, p.stdout + p.stderr[-3000:]
    checks = [LINE.match(ln) for ln in lines[:-1]]
    assert all(checks), lines
    assert [m.group(2) for m in checks] == list(gpu_check.CHECKS)
    for m in checks:  # no FAIL (a crash is one); a SKIP only where DALI is not installed, saying how
        assert m.group(1) == "PASS" or (m.group(2) == "dali_mixed" and "pip install" in m.group(3)), m.group(0)
    assert re.match(rf"gpu_check: {sum(m.group(1) == 'PASS' for m in checks)} passed, 0 failed", lines[-1])
    data = json.loads((tmp_path / "tables" / "gpu_check_cpu.json").read_text())
    assert [(r["status"], r["check"], r["figures"]) for r in data["results"]] == [m.groups() for m in checks]
    assert data["hardware"]["gpu"] is None and data["mode"] == "cpu" and data["load_before"] >= 0
    table = (tmp_path / "tables" / "gpu_check_cpu.md").read_text()
    assert all(f"| {name} " in table for name in gpu_check.CHECKS)
    # the figures the dry run must show: the live scaler's backoff, float16 and bfloat16 compute, gloo
    figures = {m.group(2): m.group(3) for m in checks}
    assert "compute float16" in figures["amp_fp16_scaler"] and "step skipped: True" in figures["amp_fp16_scaler"]
    assert "compute bfloat16" in figures["bf16"] and "backend gloo" in figures["ddp_nccl"]
