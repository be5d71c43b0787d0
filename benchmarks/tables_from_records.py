"""`make tables`: rebuild the committed suite tables from the committed records.

    python -m benchmarks.tables_from_records [--results-dir results] [--tables-dir DIR] [suite ...]

For each suite (default: every conf/suite/<name>.yaml whose <tables-dir>/<name>.md exists) the
records at its planned run paths (<results-dir>/runs/<suite>/<run_name>/record.json, in the
suite's run order: the records the suite runner tabulated) go through the runner's own
`render.write`, so the files are identical to what `python -m benchmarks.suite` wrote. A suite
without records is said in one line and its table is left as it is.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from benchmarks import render
from benchmarks.suite import plan
from lightning_modules.config_check import ConfigError, choices
from lightning_modules.record import TABLE_KEYS, read_record


def rebuild(name: str, results_dir: Path, tables_dir: Path) -> str:
    """Rebuild one suite's tables; return the line that says what was done."""
    suite, runs = plan(name, str(results_dir))
    records = [r for r in (read_record(run["record"], TABLE_KEYS) for run in runs) if r]
    if not records:
        return f"suite {name}: no records under {Path(results_dir) / 'runs' / name}: table left as it is"
    paths = render.write(name, suite, records, tables_dir)
    missing = f" ({len(runs) - len(records)} planned runs have no record)" if len(records) < len(runs) else ""
    return f"table: {paths['md']} (+ .csv, .html) from {len(records)} records{missing}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("suites", nargs="*", help="default: every suite with a table in --tables-dir")
    p.add_argument("--results-dir", default="results")
    p.add_argument("--tables-dir", default=None, help="default: <results-dir>/tables")
    args = p.parse_args(argv)
    tables_dir = Path(args.tables_dir) if args.tables_dir else Path(args.results_dir) / "tables"
    names = args.suites or [n for n in choices("suite") if (tables_dir / f"{n}.md").exists()]
    try:
        for name in names:
            print(rebuild(name, Path(args.results_dir), tables_dir), flush=True)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
