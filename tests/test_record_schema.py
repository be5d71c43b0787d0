"""Records are read through one schema (lightning_modules/record.py, `read_record`): a record of the
wrong shape, type or range is skipped, alike by the suite's tables (`make tables`) and the HTML
report, with one line on stderr naming its path and the field; every committed record passes."""
import json

import pytest

from benchmarks import report, tables_from_records
from lightning_modules.record import TABLE_KEYS, read_record, record_problem, write_json_atomic
from tests.conftest import REPO
from tests.test_results_pipeline import suite_records

# (what is wrong, the record made so from a valid one, the field the warning must name)
BAD = [
    ("a list", lambda r: [r], "a JSON list, not an object"),
    ("bits null", lambda r: {**r, "bits": None}, "bits=null"),
    ("bits out of range", lambda r: {**r, "bits": {"w": 0, "a": 32, "g": 32}}, "bits.w=0"),
    ("top1 a string", lambda r: {**r, "top1": "0.9"}, 'top1="0.9"'),
    ("top1 above 1", lambda r: {**r, "top1": 7.5}, "top1=7.5"),
    ("negative footprint", lambda r: {**r, "footprint_bytes": -1}, "footprint_bytes=-1"),
    ("unknown status", lambda r: {**r, "status": "great"}, 'status="great"'),
    ("seed a bool", lambda r: {**r, "seed": True}, "seed=true"),
    ("no model", lambda r: {k: v for k, v in r.items() if k != "model"}, "model: missing"),
]


@pytest.fixture
def smoke(tmp_path):
    """The smoke suite's planned runs, each with a valid record written where the harness puts it."""
    results = tmp_path / "results"
    _, records = suite_records("smoke", results)
    for path, rec in records:
        rec["status"] = "ok"
        write_json_atomic(path, rec)
    return results, records


def warnings(err: str) -> list[str]:
    return [l for l in err.splitlines() if l.startswith("warning:")]


@pytest.mark.parametrize("what,damage,field", BAD, ids=[b[0] for b in BAD])
def test_a_bad_record_is_skipped_by_tables_and_report_with_one_line(smoke, tmp_path, capsys, what, damage, field):
    results, records = smoke
    path, good = records[0]
    assert record_problem(good, TABLE_KEYS) is None
    path.write_text(json.dumps(damage(good)))

    assert tables_from_records.main(["smoke", "--results-dir", str(results), "--tables-dir", str(tmp_path / "t")]) == 0
    out, err = capsys.readouterr()
    assert f"from {len(records) - 1} records" in out
    lines = warnings(err)
    assert len(lines) == 1 and lines[0].startswith(f"warning: {path}: {field}") and lines[0].endswith("; skipped"), err

    by_suite = report.load_records(results)
    assert [r["run_name"] for r in by_suite["smoke"]] == [r["run_name"] for _, r in records[1:]]
    lines = warnings(capsys.readouterr().err)
    assert len(lines) == 1 and lines[0].startswith(f"warning: {path}: {field}"), lines


def test_a_valid_record_passes_silently(smoke, capsys):
    results, records = smoke
    assert all(read_record(path, TABLE_KEYS) == rec for path, rec in records)
    assert sum(map(len, report.load_records(results).values())) == len(records)
    assert warnings(capsys.readouterr().err) == []


def test_a_missing_record_is_none_without_a_warning(tmp_path, capsys):
    assert read_record(tmp_path / "record.json") is None
    assert capsys.readouterr().err == ""


def test_failed_and_diverged_records_pass(smoke):
    """None where the harness writes None: a failed run has no accuracy, footprint or throughput."""
    _, records = smoke
    rec = records[0][1]
    none = {k: None for k in ("top1", "top5", "footprint_bytes", "checkpoint_bytes", "train_it_s",
                              "test_samples_s")}
    for status in ("failed", "diverged", "interrupted", "running"):
        assert record_problem({**rec, **none, "status": status}, TABLE_KEYS) is None


def test_every_committed_record_passes(capsys):
    paths = sorted((REPO / "results" / "runs").glob("*/*/record*.json"))
    assert paths, "no committed records"
    rejected = [p for p in paths if read_record(p, TABLE_KEYS) is None]
    assert rejected == [], capsys.readouterr().err
