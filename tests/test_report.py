"""The HTML report from fixture records: Δ vs the paper, the heat map of a bitwidth sweep, escaping,
and the page as a real headless Chromium renders it (every image loaded, every suite and table)."""
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from benchmarks import report
from lightning_modules.record import write_json_atomic
from tests.test_tables import rec

EVIL = "<script>window.__xss = 1</script>&\"'"


def records() -> list[dict]:
    out = []
    for prec, speed in (("32", 50.0), ("16-mixed", 10.0)):
        out.append(rec("lenet5", prec, speed, speed / 5, 0.89, suite="seed_table"))
    out.append(rec("lenet5", "32", 40.0, 9.0, 0.85, method="xnor", bits=(1, 1, 32), suite="seed_table",
                   method_label="XNOR-Net", footprint_bytes=84_000))
    out += [rec("lenet5", "32", 30.0, 8.0, 0.80 + 0.01 * w + 0.001 * a, method="dorefa", bits=(w, a, 32),
                method_label="DoReFa-Net", footprint_bytes=60_000 * w, suite="bitwidth_sweep",
                run_name=f"dorefa-W{w}A{a}") for w in (1, 2, 4) for a in (2, 4)]
    out.append(rec("lenet5", "32", 50.0, 10.0, 0.88, suite="bitwidth_sweep", run_name="fp32"))
    out.append({**rec("lenet5", "32", 30.0, 8.0, None, method="dorefa", bits=(8, 8, 32), status="failed",
                      suite="bitwidth_sweep", run_name="dorefa-W8A8", footprint_bytes=None),
                "train_it_s": None, "error": "RuntimeError: boom"})
    out.append(rec("lenet300", "32", 100.0, 20.0, 0.90, suite="han_pruning", params=266_610,
                   nonzero_params=266_610, run_name="ref"))
    out.append(rec("lenet300", "32", 90.0, 30.0, 0.8960, method="prune", suite="han_pruning",
                   params=266_610, nonzero_params=22_218, footprint_bytes=107_000, run_name="pruned"))
    out.append(rec("lenet5", "32", 50.0, 10.0, 0.5, suite=f"evil{EVIL}", method_label=EVIL,
                   method="dorefa", bits=(2, 2, 32), run_name="evil"))
    return out


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    results = tmp_path_factory.mktemp("results")
    for i, r in enumerate(records()):
        write_json_atomic(results / "runs" / report.slug(r["suite"]) / f"{i}-{r['run_name']}" / "record.json", r)
    torn = results / "runs" / "seed_table" / "being-written" / "record.json"  # a run in progress
    torn.parent.mkdir(parents=True)
    torn.write_text('{"suite": "seed_table", "mod')
    return results, report.build(results)


def test_delta_vs_the_paper():
    """Our Fashion-MNIST runs beside the papers' MNIST / ImageNet rows: closest published, named
    with model and dataset, no Δ (a Δ needs model, method, bits and dataset: tests/test_published.py)."""
    t, notes = report.suite_table([r for r in records() if r["suite"] == "han_pruning"],
                                  report.suite_config("han_pruning"))
    assert list(notes["Δ vs paper"]) == ["closest published: LeNet-300-100 Ref (LeNet-300-100, MNIST), no Δ",
                                         "closest published: LeNet-300-100 Pruned (LeNet-300-100, MNIST), no Δ"]
    assert list(notes.Network) == list(t.main.Network)  # rows named as in the table
    _, notes = report.suite_table([r for r in records() if r["suite"] == "seed_table"],
                                  report.suite_config("seed_table"))
    assert notes["Δ vs paper"][1] == "closest published: FxP (16) w/ LS (AlexNet, ImageNet), no Δ"
    assert list(notes.status) == ["ok"] * 3
    imagenet = [{**r, "model": "alexnet", "dataset": "imagenet"} for r in records() if r["suite"] == "seed_table"]
    _, notes = report.suite_table(imagenet, report.suite_config("seed_table"))  # the documents' own setting
    assert notes["Δ vs paper"][0] == f"{100 * (0.89 - 0.5019):+.2f} pts P@1 vs FP (32) (AlexNet, ImageNet)"


def test_report_files_and_escaping(built):
    results, index = built
    page = index.read_text()
    out = index.parent
    assert {p.name for p in out.glob("*.png")} >= {"bitwidth_sweep_heatmap.png", "bitwidth_sweep_footprint.png",
                                                   "seed_table_throughput.png", "han_pruning_footprint.png"}
    assert not (out / "seed_table_heatmap.png").exists()  # not a bitwidth sweep
    for png in out.glob("*.png"):
        assert f"src='{png.name}'" in page
    assert EVIL not in page and "&lt;script&gt;window.__xss = 1&lt;/script&gt;" in page
    assert "http://" not in page and "https://" not in page  # self-contained
    assert "Commit: " in page and "Test CPU, 2 cores" in page


def _chromium() -> tuple[str, str]:
    """Debian's chromium and chromium-driver, installed here when missing (root, apt-get)."""
    if not (shutil.which("chromium") and shutil.which("chromedriver")):
        if os.geteuid() != 0 or not shutil.which("apt-get"):
            pytest.skip("needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run("apt-get update -qq && apt-get install -y -qq chromium chromium-driver >/dev/null",
                       shell=True, check=True, env=env, timeout=900)
    return shutil.which("chromium"), shutil.which("chromedriver")


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    binary, driver = _chromium()
    opts = webdriver.ChromeOptions()
    opts.binary_location = binary
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1400,1000"):
        opts.add_argument(arg)
    b = webdriver.Chrome(options=opts, service=Service(driver))
    yield b
    b.quit()


@pytest.mark.slow
def test_the_report_renders_in_chromium(built, browser, tmp_path):
    results, index = built
    browser.get(index.resolve().as_uri())
    assert browser.title == "Compression benchmark report"
    images = browser.execute_script(
        "return Array.from(document.images).map(i => [i.getAttribute('src'), i.complete, i.naturalWidth])")
    assert len(images) == len(list(index.parent.glob("*.png"))) >= 8
    assert all(done and width > 0 for _, done, width in images), images
    sections = browser.execute_script(
        "return Array.from(document.querySelectorAll('section.suite')).map("
        "s => [s.querySelector('h2').textContent, s.querySelectorAll('table.results').length])")
    assert sorted(name for name, _ in sections) == sorted(report.load_records(results))
    assert all(n == 1 for _, n in sections)
    assert browser.execute_script("return window.__xss") is None  # the label was text, not a script
    body = browser.find_element("tag name", "body").text
    assert "<script>window.__xss = 1</script>" in body and "failed: RuntimeError: boom" in body
    height = browser.execute_script("return document.body.scrollHeight")
    browser.set_window_size(1400, min(height, 12000))
    shot = tmp_path / "report.png"
    assert browser.save_screenshot(str(shot))
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 50_000
