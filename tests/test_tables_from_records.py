"""`make tables` (benchmarks/tables_from_records.py): the tables rebuilt from the records are
byte for byte the ones the suite runner wrote from the same records; a committed table without
records is left alone, said in one line."""
import subprocess
from pathlib import Path

import pytest

from benchmarks import suite as suite_runner, tables_from_records
from lightning_modules.record import write_json_atomic
from tests.test_results_pipeline import KINDS, SUITES, suite_records


def files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


@pytest.mark.parametrize("name", [pytest.param(s, marks=[] if s == "smoke" else [pytest.mark.slow])
                                  for s in KINDS])
def test_the_rebuilt_tables_are_the_ones_the_suite_runner_wrote(name, tmp_path, monkeypatch, capsys):
    results = tmp_path / "results"
    suite, records = suite_records(name, results)
    for path, rec in records:
        write_json_atomic(path, rec)
    stale = {**records[0][1], "run_name": "stale", "top1": 0.123}  # not a run of the suite: left out
    write_json_atomic(results / "runs" / name / "stale" / "record.json", stale)
    # every record is done except the failed ones, which "fail again" (their record stays)
    monkeypatch.setattr(suite_runner.subprocess, "run", lambda args, **kw: subprocess.CompletedProcess(args, 1))
    suite_runner.main([name, "--results-dir", str(results)])
    written = files(results / "tables")
    assert f"{name}.md" in written and b"12.30%" not in written[f"{name}.md"]

    assert tables_from_records.main([name, "--results-dir", str(results), "--tables-dir", str(tmp_path / "re")]) == 0
    assert f"from {len(records)} records" in capsys.readouterr().out
    assert files(tmp_path / "re") == written


def test_a_table_without_records_is_kept_and_said_in_one_line(tmp_path, capsys):
    tables = tmp_path / "results" / "tables"
    tables.mkdir(parents=True)
    for table in ("smoke.md", "smoke.csv", "quant_speed.md"):  # quant_speed: a benchmark's, not a suite's
        (tables / table).write_text(f"committed {table}\n")
    assert tables_from_records.main(["--results-dir", str(tmp_path / "results")]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out == [f"suite smoke: no records under {tmp_path / 'results' / 'runs' / 'smoke'}: table left as it is"]
    assert {p.name: p.read_text() for p in tables.iterdir()} == {
        t: f"committed {t}\n" for t in ("smoke.md", "smoke.csv", "quant_speed.md")}


def test_the_committed_tables_are_the_committed_records(tmp_path, capsys):
    """Every committed suite table (results/tables/<suite>.md of a conf/suite/<suite>.yaml) is what
    `make tables` builds from the committed records under results/runs/<suite>/, byte for byte;
    a suite table without its records fails (a table is a pure function of committed records)."""
    from tests.conftest import REPO
    committed = REPO / "results" / "tables"
    names = [n for n in SUITES if (committed / f"{n}.md").exists()]
    assert names, "no committed suite table"
    rc = tables_from_records.main([*names, "--results-dir", str(REPO / "results"), "--tables-dir", str(tmp_path)])
    out = capsys.readouterr().out
    assert rc == 0 and "left as it is" not in out, out
    for name in names:
        rebuilt = {p.name: p.read_bytes() for p in tmp_path.glob(f"{name}.*")}
        assert rebuilt, name
        for file, data in rebuilt.items():
            assert (committed / file).read_bytes() == data, f"results/tables/{file} differs from its records"
