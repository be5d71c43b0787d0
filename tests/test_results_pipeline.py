"""One results pipeline: for every suite in conf/suite/, records shaped like its runs' give the same
tables (the same columns, in the same order) in results/tables/<suite>.md and in the HTML report;
skip-if-done (status ok and the same config_hash) is one rule, used by the suite runner."""
from html.parser import HTMLParser
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from benchmarks import render, report, suite as suite_runner
from lightning_modules.record import write_json_atomic
from lightning_modules.sweep import done, failed_record
from tests.conftest import REPO

SUITES = sorted(p.stem for p in (REPO / "conf" / "suite").glob("*.yaml"))
# one suite per table path (quant; quant with pivot and published rows; seeds aggregated;
# compression with per-layer tables and published rows; compression without; compact): the
# rendering code differs by these, not by suite (every committed suite's tables are checked
# against its committed records in test_tables_from_records.py)
KINDS = ["smoke", "bitwidth_sweep", "seed_table", "deep_compression", "filter_pruning", "compact"]
HW = {"cpu": "Test CPU", "cpu_cores": 2, "torch_threads": 2, "gpu": None, "gpu_count": 0, "platform": "Linux"}
LAYERS = [{"layer": "fc1", "weights": 235_200, "kept_pct": 8.0, "weight_bits_pq": 5, "weight_bits_pqh": 4.4,
           "index_bits_pq": 5, "index_bits_pqh": 3.7, "compression": 31.9}]


def record(cfg, i: int, status: str = "ok") -> dict:
    """A record with the keys run.py writes (the contract's, then the measured extras) for the run
    `cfg`, with made-up numbers that differ per run; every fifth run failed."""
    rec = failed_record(cfg, None)
    status = "failed" if i % 5 == 3 else status
    ok = status == "ok"
    rec.update(status=status, error=None if ok else "RuntimeError: boom", dataset="fashion_mnist",
               epochs=1, batch_size=32, top1=0.9 - 0.01 * i if ok else None, top5=0.99 if ok else None,
               train_it_s=100.0 - i, train_samples_s=3200.0 - 32 * i, test_it_s=40.0 + i,
               test_samples_s=40_000.0 + 1000 * i, params=266_610 - 1000 * i,
               footprint_bytes=1_069_053 // (i + 1), checkpoint_bytes=3_208_987, wall_s=1.0,
               started_at="2026-01-01T00:00:00+00:00", git_sha="abc", hardware=HW, torch_version="2",
               method_label=cfg.method.get("label"), throughput_steady=True, test_samples=2000,
               model_file="model.pt", checkpoint_file="last.ckpt", nonzero_params=266_610 // (i + 1),
               flops=532_400 - 100 * i, report=LAYERS if cfg.method.name == "deep_compression" else None,
               compute_dtype="float32", loss_scale=None, world_size=1, bops=1000 * i,
               flops_effective=532_400 - 50 * i, val_top1_last=0.91 - 0.01 * i if ok else None,
               val_top1_best=0.92 - 0.01 * i if ok else None, val_best_epoch=0 if ok else None)
    return rec


def suite_records(name: str, results_dir: Path) -> tuple[dict, list[tuple[Path, dict]]]:
    """The suite's config (as the suite runner reads it) and a record per run (adhoc, which has
    no runs: one default run)."""
    suite, runs = suite_runner.plan(name, str(results_dir))
    if not runs:
        with initialize_config_dir(str(REPO / "conf"), version_base="1.3"):
            cfg = compose("config", overrides=[f"suite={name}", f"results_dir={results_dir}"])
        runs = [{"cfg": cfg, "record": Path(cfg.run_dir) / "record.json"}]
    return suite, [(run["record"], record(run["cfg"], i)) for i, run in enumerate(runs)]


def md_headers(md: str) -> list[list[str]]:
    """The header row of each Markdown table, in order."""
    out, previous = [], ""
    for line in md.splitlines():
        if line.startswith("|") and not previous.startswith("|"):
            out.append([c.strip() for c in line.strip().strip("|").split("|")])
        previous = line
    return out


class SectionHeaders(HTMLParser):
    """The header cells of each table in one section of the report: [(class, [th, ...]), ...]."""

    def __init__(self, section_id: str):
        super().__init__()
        self.id, self.inside, self.in_head, self.th, self.tables = section_id, False, False, None, []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "section":
            self.inside = a.get("id") == self.id
        elif self.inside and tag == "table":
            self.tables.append((a.get("class") or "", []))
        elif self.inside and tag == "thead":
            self.in_head = True
        elif self.in_head and tag == "th":
            self.th = ""

    def handle_endtag(self, tag):
        if tag == "thead":
            self.in_head = False
        elif tag == "th" and self.th is not None:
            self.tables[-1][1].append(self.th.strip())
            self.th = None

    def handle_data(self, data):
        if self.th is not None:
            self.th += data


def report_headers(page: str, name: str) -> list[tuple[str, list[str]]]:
    parser = SectionHeaders(f"suite-{report.slug(name)}")
    parser.feed(page)
    return parser.tables


@pytest.mark.parametrize("name", KINDS)
def test_the_report_shows_the_tables_of_results_tables(name, tmp_path, monkeypatch):
    monkeypatch.setattr(report, "suite_plots", lambda *a, **k: {})  # tables only (plots: test_report.py)
    suite, records = suite_records(name, tmp_path)
    for path, rec in records:
        write_json_atomic(path, rec)
    md = render.write(name, suite, [r for _, r in records], tmp_path / "tables")["md"].read_text()
    page = report.build(tmp_path).read_text()
    tables = report_headers(page, name)
    md_tables = md_headers(md)
    results = [cols for cls, cols in tables if "results" in cls.split()]
    assert results == [md_tables[0]], f"{name}: the report's run table has other columns than {name}.md"
    shown = [cols for cls, cols in tables if "notes" not in cls.split()]
    assert shown == md_tables  # and the same pivots, per-layer tables and published rows
    if any(r["status"] == "failed" for _, r in records):  # a failed run: its error beside the table
        assert [cls for cls, _ in tables].count("dataframe notes") == 1 and "failed: RuntimeError: boom" in page


def test_skip_if_done_is_status_ok_and_the_same_config_hash(tmp_path):
    path = tmp_path / "record.json"
    assert done(path, "h") is None  # no record
    write_json_atomic(path, {"status": "ok", "config_hash": "h"})
    assert done(path, "h") == {"status": "ok", "config_hash": "h"}
    assert done(path, "other") is None  # another experiment in the same folder
    for status in ("failed", "diverged", "running"):
        write_json_atomic(path, {"status": status, "config_hash": "h"})
        assert done(path, "h") is None
    path.write_text('{"status": "ok", "config_ha')  # being written
    assert done(path, "h") is None


def test_the_suite_runner_skips_done_runs_and_tabulates_them(tmp_path, monkeypatch, capsys):
    def no_training(*args, **kwargs):
        raise AssertionError(f"a done run was started again: {args}")

    monkeypatch.setattr(suite_runner.subprocess, "run", no_training)
    suite, records = suite_records("smoke", tmp_path)
    for path, rec in records:
        write_json_atomic(path, rec)
    assert suite_runner.main(["smoke", "--results-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert f"{len(records)} runs, {len(records)} already done" in out and out.count("] skip ") == len(records)
    md = (tmp_path / "tables" / "smoke.md").read_text()
    assert md_headers(md)[0][0] == "Bitwidth/method" and md.count("| lenet300 ") == len(records)
    # a record of another config (another config_hash) is not done: the run is started
    (path, rec), *_ = records
    write_json_atomic(path, {**rec, "config_hash": "0" * 16})
    with pytest.raises(AssertionError, match="a done run was started again"):
        suite_runner.main(["smoke", "--results-dir", str(tmp_path)])

