"""Run a suite: `python -m benchmarks.suite <name> [--results-dir DIR] [key=value ...]`.

A suite is `conf/suite/<name>.yaml`: `common` overrides plus a list of `runs` (override lists),
and optionally `seeds: [0, 1, 2]`: every run once per seed (the `seed=` override; run names end
in -s<seed>), run by run. A run that sets `seed=` itself (e.g. `"seed=1,2"`, swept as any key) or
a `seed=` on the command line is not expanded over the suite's seeds.
Each run is a separate `train.py` process (a crash or a DDP launch cannot disturb the others).
A run whose record exists with status ok and the same config_hash is skipped, so an interrupted
suite resumes where it stopped. Then the table is rebuilt from the records:
<results_dir>/tables/<name>.{md,csv,html}. Extra `key=value` arguments apply to every run; with
`logger=wandb` the table and plots are also logged to W&B (benchmarks/wandb_suite.py); extra
`suite.<key>=value` arguments also set the suite's own keys (`suite.method=ptq`).
Run entries may hold tokens that expand into runs (`generated`): `@layer` (one run per layer,
benchmarks/sensitivity.py) and `@alloc(<budget>)` (per-layer bits, benchmarks/mixed_precision.py).
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import ListConfig, OmegaConf

from benchmarks import mixed_precision, render, sensitivity, wandb_suite
from lightning_modules.config_check import ConfigError, check_config, check_overrides, choices, normalize_overrides
from lightning_modules.record import TABLE_KEYS, config_hash, read_record, write_json_atomic
from lightning_modules.sweep import done

REPO = Path(__file__).resolve().parents[1]


def expand(run: list[str]) -> list[list[str]]:
    """Hydra multirun syntax inside a suite: `bits.w=1,2,4` sweeps; the product over all keys.

    [method=dorefa, "bits.w=1,2", "bits.a=2,4"] -> 4 override lists, in `train.py -m` order."""
    out = [[]]
    for ov in run:
        key, sep, value = ov.partition("=")
        values = value.split(",") if sep and "," in value and not value.startswith(("[", "'", '"')) else None
        out = [o + [f"{key}={v}"] for o in out for v in values] if values else [o + [ov] for o in out]
    return out


def suite_seeds(name: str, value) -> list[int] | None:
    """The suite's `seeds:` as a list of distinct integers (None: the key is absent); any other
    shape is a ConfigError of one line."""
    if value is None:
        return None
    if isinstance(value, ListConfig):
        value = OmegaConf.to_container(value)
    if not (isinstance(value, list) and value and len(set(value)) == len(value)
            and all(isinstance(s, int) and not isinstance(s, bool) for s in value)):
        raise ConfigError(f"suite {name}: seeds={value!r}: not a list of distinct integers; "
                          "valid: e.g. seeds: [0, 1, 2], or no seeds key (one run per entry)")
    return value


def with_seeds(runs: list[list[str]], seeds: list[int] | None, extra: list[str] = ()) -> list[list[str]]:
    """Each run once per seed (`seed=<s>` appended), run by run; runs that set `seed=` themselves,
    or all of them when `extra` does, are left as they are."""
    sets_seed = lambda ovs: any(o.partition("=")[0].lstrip("+~") == "seed" for o in ovs)  # noqa: E731
    if not seeds or sets_seed(extra):
        return runs
    return [r2 for r in runs for r2 in ([r] if sets_seed(r) else [[*r, f"seed={s}"] for s in seeds])]


def suite_config(name: str) -> dict:
    """conf/suite/<name>.yaml as Hydra composes it (a suite may take another's runs through its
    defaults list, as `documents` takes seed_table's), unresolved interpolations kept."""
    with initialize_config_dir(str(REPO / "conf"), version_base="1.3"):
        return OmegaConf.to_container(compose("config", overrides=[f"suite={name}"]).suite)


def plan(name: str, results_dir: str, extra: list[str] = ()) -> tuple[dict, list[dict]]:
    """The suite's config and, per run, its overrides, composed config, config_hash and record path."""
    if name not in choices("suite"):
        raise ConfigError(f"SUITE={name}: unknown suite; valid: {', '.join(choices('suite'))}")
    try:
        return _plan(name, results_dir, extra)
    except Refused as e:
        raise refused(e) from None


def _plan(name: str, results_dir: str, extra: list[str]) -> tuple[dict, list[dict]]:
    with initialize_config_dir(str(REPO / "conf"), version_base="1.3"):
        own = [o for o in extra if o.startswith("suite.")]  # the suite's keys (suite.method=ptq)
        suite = compose("config", overrides=[f"suite={name}", *own]).suite
        seeds = suite_seeds(name, suite.get("seeds"))
        runs, seen = [], set()
        entries = with_seeds([r for spec in suite.runs for r in expand(spliced(spec))], seeds, extra)
        for overrides in (ovs for run in entries for ovs in generated(normalize_overrides(
                [*suite.common, *run, *extra, f"suite={name}", f"results_dir={results_dir}"]))):
            check_overrides(overrides)
            cfg = compose_run(overrides)
            if cfg.run_dir in seen:
                raise ConfigError(f"suite {name}: run {cfg.run_name} is listed twice; valid: each run "
                                  "once (give runs that differ only by seed distinct seeds)")
            seen.add(cfg.run_dir)
            runs.append({"overrides": overrides, "config_hash": config_hash(cfg), "cfg": cfg,
                         "record": Path(cfg.run_dir) / "record.json", "run_name": cfg.run_name})
    return OmegaConf.to_container(suite, resolve=True), runs


def spliced(spec) -> list[str]:
    """A run entry's overrides, an item that is a list (a suite key interpolated into the entry,
    `"${suite.method_args}"`) spliced in: suite keys can add overrides to some runs only."""
    return [o for item in spec for o in (list(item) if isinstance(item, ListConfig) else [item])]


def generated(overrides: list[str]) -> list[list[str]]:
    """A run's override lists once its tokens are expanded (inside plan's Hydra context):
    `@layer` -> one run per candidate layer of its model, `@alloc(<budget>)` -> the per-layer
    bits allocated from the sensitivity suite's records; a list without tokens is itself."""
    return [mixed_precision.expand_alloc(o, compose_run)
            for o in sensitivity.expand_layers(overrides, compose_run)]


class Refused(Exception):
    """Hydra refused a run's overrides (e.g. an unknown key): which ones, and its first line."""

    def __init__(self, overrides: list[str], line: str):
        super().__init__(line)
        self.overrides = overrides


def compose_run(overrides: list[str]):
    """One run's config, inside plan's Hydra context; Refused if Hydra refuses the overrides."""
    try:
        return compose("config", overrides=overrides)
    except Exception as e:
        raise Refused(overrides, str(e).strip().splitlines()[0]) from None


def refused(e: Refused) -> ConfigError:
    """The one line for overrides Hydra refused: train.py's (outside any Hydra context), which
    names the unknown key, its value and the valid keys there; else Hydra's first line."""
    from train import precheck
    precheck(e.overrides)  # raises the ConfigError train.py would
    return ConfigError(str(e))


class OneLineParser(argparse.ArgumentParser):
    """argparse whose usage errors (an unknown option, no suite) are one line and exit status 2."""

    def error(self, message: str):
        usage = " ".join(self.format_usage().split()).removeprefix("usage: ")
        self.exit(2, f"error: {message}; usage: {usage}\n")


def reuse(run: dict, suite: str) -> dict | None:
    """The same experiment (config_hash) already done in another suite: copy its run directory
    here instead of training again; the record says where it came from (`copied_from`)."""
    dst = run["record"].parent
    for rec_path in sorted(dst.parent.parent.glob(f"*/{run['run_name']}/record.json")):
        rec = done(rec_path, run["config_hash"])
        if rec_path.parent == dst or rec is None:
            continue
        tmp = dst.with_name(f".{dst.name}.copy")
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(rec_path.parent, tmp)
        for key in ("model_file", "checkpoint_file", "deploy_file"):
            if rec.get(key):
                rec[key] = str(dst / Path(rec[key]).name)
        rec.update(suite=suite, copied_from=str(rec_path.parent))
        write_json_atomic(tmp / "record.json", rec)
        shutil.rmtree(dst, ignore_errors=True)
        tmp.rename(dst)
        return rec
    return None


def execute(runs: list[dict], finished: list[bool], name: str, failed: list[str]) -> None:
    """Each run not done: copied from another suite's identical run, else started; the names of
    those that did not finish are appended to `failed`."""
    for i, (run, skip) in enumerate(zip(runs, finished), 1):
        if skip:
            print(f"[{i}/{len(runs)}] skip {run['run_name']} (done, config_hash {run['config_hash']})")
            continue
        copied = reuse(run, name)
        if copied:
            print(f"[{i}/{len(runs)}] copy {run['run_name']} (same config_hash in {copied['copied_from']})")
            continue
        print(f"[{i}/{len(runs)}] run  {run['run_name']}: {' '.join(run['overrides'])}", flush=True)
        rc = subprocess.run([sys.executable, str(REPO / "train.py"), *run["overrides"]], cwd=REPO).returncode
        rec = read_record(run["record"])
        if rc != 0 or rec is None or rec.get("status") not in ("ok", "diverged"):
            failed.append(run["run_name"])


def main(argv: list[str] | None = None) -> int:
    p = OneLineParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    p.add_argument("suite")
    p.add_argument("--results-dir", default="results")
    p.add_argument("--tables-dir", default=None, help="default: <results-dir>/tables")
    p.add_argument("overrides", nargs="*", help="key=value applied to every run")
    args = p.parse_intermixed_args(argv)
    name = args.suite
    try:
        suite, runs = plan(name, args.results_dir, args.overrides)
        finished = [done(run["record"], run["config_hash"]) is not None for run in runs]
        for run, skip in zip(runs, finished):  # train.py's value checks, before any run starts
            if not skip:
                check_config(run["cfg"])
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"suite {args.suite}: {len(runs)} runs, {sum(finished)} already done")
    failed, t0 = [], time.perf_counter()
    try:
        execute(runs, finished, name, failed)
    except KeyboardInterrupt:  # Ctrl-C (the run in progress got it too and wrote its record)
        ended = [run["run_name"] for run in runs if done(run["record"], run["config_hash"])]
        print(f"suite {name}: interrupted after {time.perf_counter() - t0:.0f} s; {len(ended)} of "
              f"{len(runs)} runs done; run the same command again to resume", file=sys.stderr)
        return 130
    records = [r for r, run in ((read_record(run["record"], TABLE_KEYS), run) for run in runs)
               if r and r.get("config_hash") == run["config_hash"]]
    print(f"suite {args.suite}: {time.perf_counter() - t0:.0f} s")
    if records:
        out = Path(args.tables_dir) if args.tables_dir else Path(args.results_dir) / "tables"
        paths = render.write(name, suite, records, out)
        print(f"table: {paths['md']} (+ .csv, .html)")
        to_wandb = wandb_suite.wanted(runs[0]["overrides"]) if runs else None
        if to_wandb is not None:
            where = wandb_suite.log_suite(name, suite, records, Path(args.results_dir), **to_wandb)
            print(f"wandb: table and plots logged ({where})")
    if failed:
        print(f"error: {len(failed)} run(s) failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
