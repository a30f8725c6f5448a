"""The ``lorabench`` command line: what the Snakemake rules call, plus ``variants``, ``test-variant`` and ``check``.

Heavy libraries are imported inside each command, so ``lorabench --help`` stays instant.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from lorabench.checks import SCHEMA
from lorabench.image import check_image_matches_tree

if TYPE_CHECKING:
    import pandas as pd

LISTING_SHAPE = (64, 64, 4)
LARGE_GRID = 100_000
"""Grid points above which ``check`` warns: a dry run of 110,000 points (5,000 seeds over the smoke grid of then, 22
points a seed) took 36-56 s and 0.8 GB on a shared 2-core machine, 220,000 points 64 s and 1.05 GB: Snakemake's work
per record file."""


def _user_variants(args: argparse.Namespace) -> dict:
    """Load ``--module`` files and the ``--config``'s ``variant_modules``; returns the config (empty without one)."""
    from lorabench.variants import load_modules

    config = _schema_checked(args.config) if args.config else None
    try:
        load_modules([*args.module, *(config["variant_modules"] if config else [])])
    except (OSError, SyntaxError, ImportError, ValueError) as error:
        sys.exit(f"variant modules: {type(error).__name__}: {error}")
    return config or {}


def _schema_checked(path: Path) -> dict:
    """The config at ``path``, checked against the schema and with its defaults filled; exits naming a problem."""
    from lorabench.checks import ConfigError, check_schema

    config = _read_yaml(path)
    if not isinstance(config, dict):
        sys.exit(f"{path}: the config is no mapping of settings (see workflow/config/smoke.yaml)")
    try:
        check_schema(config, SCHEMA)
    except ConfigError as error:
        sys.exit(f"{path}: {error}")
    return config


def _variants(args: argparse.Namespace) -> None:
    from lorabench.variants import registry

    _user_variants(args)
    if args.name:
        return _describe_variant(args.name)
    m, n, r = LISTING_SHAPE
    print(f"{'variant':<12} {'trainable @ (m,n,r)=' + str(LISTING_SHAPE):>28}  source")
    for name, cls in registry().items():
        try:
            count = f"{cls.trainable_parameters(m, n, r if cls.uses_rank else 0):,}"
        except (NotImplementedError, ValueError):  # `peft`, or a variant that needs options: counts depend on them
            count = "per config"
        print(f"{name:<12} {count:>28}  {cls.source}")
    alone = {name: cls.unstackable for name, cls in registry().items() if cls.unstackable}
    print(
        "\njobs.stack (a job's runs that differ only in lr as one computation): every variant stacks"
        + (", except:" if alone else "")
        + "".join(f"\n  {name}: {why}" for name, why in alone.items())
    )


def _describe_variant(name: str) -> None:
    """``lorabench variants NAME``: where it comes from, its optimizer and hooks, its options."""
    import dataclasses

    from lorabench.variants import get
    from lorabench.variants.base import Variant

    try:
        cls = get(name)
    except KeyError as error:
        sys.exit(f"variants: {error.args[0]}")
    hooks = [
        hook
        for hook in ("parameter_groups", "transform_gradients", "after_step")
        if getattr(cls, hook) is not getattr(Variant, hook)
    ]
    print(f"{name}: {cls.source}")
    print(
        f"  optimizer: {cls.optimizer or 'any (train.optimizer)'}"
        + (f" (another one in the config: {cls.optimizer_policy})" if cls.optimizer else "")
    )
    print(
        f"  rank: {'the grid ranks' if cls.uses_rank else 'none (run once per rank set)'}; "
        f"hooks: {', '.join(hooks) or 'none'}"
    )
    print(f"  stacks (jobs.stack): {'no, ' + cls.unstackable if cls.unstackable else 'yes'}")
    fields = dataclasses.fields(cls.Options)
    print("  options:" if fields else "  options: none")
    for line in cls.describe_options().removeprefix("its options: ").split("; ") if fields else []:
        print(f"    {line}")


def _test_variant(args: argparse.Namespace) -> None:
    from lorabench.contract import FAMILIES, LEARN_STEPS, check_variant, contract_warnings, run_optimizer
    from lorabench.grid import variant_options
    from lorabench.variants import get, registry
    from lorabench.variants.base import OptionError

    config = _user_variants(args)
    entry = config.get("variants", {}).get(args.name, {})
    name = entry.get("uses", args.name)
    if name not in registry():
        sys.exit(
            f"test-variant: unknown variant {args.name!r}; registered: {', '.join(registry())} "
            "(a variant of your own: --module FILE or --config CONFIG with variant_modules)"
        )
    steps = LEARN_STEPS if args.steps is None else args.steps
    if steps < 2:
        sys.exit(f"test-variant: --steps {steps}: give at least 2 steps (the loss must fall between them)")
    options = variant_options(entry) or None
    optimizer = run_optimizer(get(name), entry, config.get("train", {}).get("optimizer", "adamw"))
    try:
        warnings = contract_warnings(name, options, steps)
    except OptionError as error:
        sys.exit(f"test-variant: {error}")
    for warning in warnings:
        print(f"warning: {args.name}: {warning}, e.g. with --steps")
    failed = False
    for family in FAMILIES:
        problems = check_variant(name, family, options, optimizer, steps)
        failed |= bool(problems)
        print(f"{args.name} on tiny {family} ({optimizer}, {steps} steps): " + ("ok" if not problems else "FAILED"))
        for problem in problems:
            print(f"  - {problem}")
    if failed:
        sys.exit(1)


def _check(args: argparse.Namespace) -> None:
    from lorabench.checks import ConfigError, load_grid

    try:
        grid = load_grid(_read_yaml(args.config), args.schema)
    except ConfigError as error:
        sys.exit(f"{args.config}: {error}")
    points = len(grid.points())
    print(f"{args.config}: ok, {points} grid points")
    for warning in grid.warnings:
        print(f"{args.config}: warning: {warning}", file=sys.stderr)
    if points > LARGE_GRID:
        print(
            f"{args.config}: warning: {points} grid points, more than {LARGE_GRID:,}: Snakemake checks every record "
            "file when it builds its DAG (110,000 took under a minute and 0.8 GB on 2 cores) and that grows with "
            "the count; fewer seeds, or the grid split over several configs run in separate folders, keep it quick",
            file=sys.stderr,
        )


def _read_yaml(path: Path) -> object:
    """The YAML document at ``path``; a missing file, a syntax error or a key given twice exits with the file, line
    and column."""
    import yaml

    from lorabench.checks import ConfigFileError, DuplicateKeyError, read_yaml

    try:
        return read_yaml(path)
    except DuplicateKeyError as error:
        sys.exit(error.located(path))
    except ConfigFileError as error:
        sys.exit(str(error))
    except OSError as error:
        sys.exit(f"{path}: cannot read the config: {error.strerror}")
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        problem = getattr(error, "problem", None) or str(error)
        tab = " (YAML does not allow tabs for indentation: use spaces)" if "\t" in str(error) else ""
        sys.exit(f"{where}: YAML syntax error: {problem}{tab}")


def _pretrain(args: argparse.Namespace) -> None:
    from lorabench.job import PretrainJob
    from lorabench.pretrain import pretrain

    scores = pretrain(PretrainJob.from_json(args.settings), args.out, args.threads)
    print(json.dumps({"source_test_accuracy": scores}))


def _cache_model(args: argparse.Namespace) -> None:
    from lorabench.offline_assets import cache_gguf_checkpoint, copy_package_checkpoint

    if args.gguf:
        cache_gguf_checkpoint(args.gguf, args.out)
    else:
        copy_package_checkpoint(args.package, args.out)


def _generate_data(args: argparse.Namespace) -> None:
    from lorabench.offline_assets import generate_data

    paths = generate_data(json.loads(args.generator), args.out)
    print(json.dumps({split: str(path) for split, path in paths.items()}))


def _train(args: argparse.Namespace) -> None:
    from lorabench.job import TrainJob
    from lorabench.runner import run_job

    run_job(TrainJob.from_json(args.job), args.threads, args.inputs)


def _cost(args: argparse.Namespace) -> None:
    from lorabench.cost import run_cost
    from lorabench.job import CostJob

    run_cost(CostJob.from_json(args.settings), args.out, args.threads)


def _aggregate(args: argparse.Namespace) -> None:
    from lorabench.aggregate import RecordError, aggregate, write_tables

    try:
        tables = aggregate(args.records)
    except RecordError as error:
        sys.exit(
            f"aggregate: {error}. Run snakemake again: it re-creates a missing record and one cut short (delete "
            "any other damaged one first), restoring it from results/kept or training it again"
        )
    write_tables(*tables, args.out)


def _report(args: argparse.Namespace) -> None:
    from lorabench.report import run_report

    run_report(args.out, args.benchmarks, args.cores, args.cost)


def _compare(args: argparse.Namespace) -> None:
    from lorabench.reference import DEFAULT_TOLERANCE, compare

    tolerance = DEFAULT_TOLERANCE if args.tolerance is None else args.tolerance
    comparison = compare(
        _results_table(args.results, "run the pipeline first (snakemake --cores all writes reports/results.csv)"),
        _results_table(args.reference, "run compare from the repository's root, or give --reference"),
        tolerance,
    )
    for line in comparison.differences:
        print(line)
    if not comparison.agrees:
        sys.exit(f"{args.results}: {len(comparison.differences)} difference(s) from {args.reference}")
    print(
        f"{args.results}: agrees with {args.reference} ({comparison.points} grid points; same statuses and lr "
        f"choices; mean target accuracy and forgetting per variant within {tolerance})"
    )


RESULTS_NEEDED = ("run_id", "model", "task", "variant", "rank", "lr", "seed", "status")
"""Columns of a results table (``lorabench aggregate``) that every row must fill: a row without them is cut short."""


def _results_table(path: Path, when_missing: str) -> pd.DataFrame:
    """The results table at ``path``; exits with one line naming the file and what to do when it is missing, not
    a CSV, lacks a column, or is cut short (a copy interrupted mid-row would read as a bogus grid point)."""
    import pandas as pd

    if not path.is_file():
        sys.exit(f"{path}: no such file (relative to {Path.cwd()}); {when_missing}")
    try:
        table = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        sys.exit(
            f"{path}: not a results table ({type(error).__name__}: {str(error).strip()}); write it again with "
            "lorabench aggregate or snakemake"
        )
    if missing := [column for column in RESULTS_NEEDED if column not in table.columns]:
        sys.exit(f"{path}: no column {', '.join(missing)}: not a results table of lorabench aggregate")
    if problem := _short_row(path):
        sys.exit(f"{path}: {problem} (cut short?); write the table again with lorabench aggregate or snakemake")
    return table


def _short_row(path: Path) -> str | None:
    """Where a CSV table is cut short: a row with fewer fields than its header, or no newline at its end."""
    import csv

    with path.open(newline="") as file:
        rows = csv.reader(file)
        width = len(next(rows, []))
        for row in rows:
            if len(row) != width:
                return f"line {rows.line_num} has {len(row)} fields where the header has {width}"
    return None if path.read_bytes().endswith(b"\n") else "its last line does not end"


def _user_variant_arguments(command: argparse.ArgumentParser) -> None:
    command.add_argument(
        "--module",
        action="append",
        default=[],
        type=Path,
        help="a Python file of your own that registers variants (repeatable)",
    )
    command.add_argument("--config", type=Path, help="a grid config: its variant_modules join the registry")


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="lorabench", description=__doc__.splitlines()[0], fromfile_prefix_chars="@")
    commands = root.add_subparsers(required=True, metavar="COMMAND", dest="command")

    listing = commands.add_parser("variants", help="list registered variants, or describe one")
    listing.add_argument(
        "name",
        nargs="?",
        help="a registered variant: its source, optimizer, hooks and options with their types, defaults and help",
    )
    _user_variant_arguments(listing)
    listing.set_defaults(run=_variants)

    contract = commands.add_parser("test-variant", help="check a variant's contract on tiny models (seconds)")
    contract.add_argument("name", help="a registered variant, or a grid name of --config's `variants`")
    contract.add_argument(
        "--steps",
        type=int,
        help="optimizer steps of the learning check (default: the contract's "
        "20); more where an option's period (merge_every, resample_every) is longer",
    )
    _user_variant_arguments(contract)
    contract.set_defaults(run=_test_variant)

    check = commands.add_parser("check", help="validate a grid config without running anything")
    check.add_argument("config", type=Path, help="the grid config (YAML) to validate")
    check.add_argument("--schema", type=Path, default=SCHEMA, help="default: the schema shipped with lorabench")
    check.set_defaults(run=_check)

    pre = commands.add_parser("pretrain", help="build and pretrain an embedded model (pipeline rule)")
    pre.add_argument("--settings", required=True, help="JSON written by the Snakefile")
    pre.add_argument("--out", required=True, type=Path, help="the checkpoint folder to write")
    pre.add_argument("--threads", type=int, help="CPU threads for torch (the rule's threads)")
    pre.set_defaults(run=_pretrain)

    cache = commands.add_parser(
        "cache-model", help="cache a GGUF or packaged model as a plain checkpoint (pipeline rule)"
    )
    source = cache.add_mutually_exclusive_group(required=True)
    source.add_argument("--gguf", help="a .gguf file or an installed package holding one: dequantized")
    source.add_argument("--package", help="an installed package holding one checkpoint folder: copied")
    cache.add_argument("--out", required=True, type=Path, help="the checkpoint folder to write")
    cache.set_defaults(run=_cache_model)

    data = commands.add_parser("generate-data", help="write a generated task's train/test JSONL (pipeline rule)")
    data.add_argument("--generator", required=True, help="the task's `generator` entry as JSON")
    data.add_argument("--out", required=True, type=Path, help="the folder to write the splits' JSONL files to")
    data.set_defaults(run=_generate_data)

    train = commands.add_parser("train", help="run one job of grid points (pipeline rule)")
    train.add_argument("--job", required=True, help="JSON written by the Snakefile")
    train.add_argument("--threads", type=int, help="CPU threads for torch (the rule's threads)")
    train.add_argument(
        "--inputs",
        nargs="*",
        metavar="PATH",
        help="the files the pipeline gave the job (the rule's inputs); given, finished records are "
        "kept under results/kept and restored instead of retrained when settings, code and "
        "these files are unchanged",
    )
    train.set_defaults(run=_train)

    cost = commands.add_parser("cost", help="step time and memory of every variant at real layer sizes (pipeline rule)")
    cost.add_argument("--settings", required=True, help="JSON written by the Snakefile (lorabench.stages.cost_job)")
    cost.add_argument("--out", required=True, type=Path, help="the CSV to write")
    cost.add_argument("--threads", type=int, help="CPU threads for torch (the rule's threads)")
    cost.set_defaults(run=_cost)

    agg = commands.add_parser("aggregate", help="records -> results.csv, loss_curves.csv and trajectories.csv")
    agg.add_argument("records", nargs="+", type=Path, help="record files, or @FILE: a file listing them, one a line")
    agg.add_argument("--out", required=True, type=Path, help="the folder to write the two tables to")
    agg.set_defaults(run=_aggregate)

    comp = commands.add_parser("compare", help="compare a run's results.csv with the shipped reference")
    comp.add_argument(
        "results",
        type=Path,
        nargs="?",
        default=Path("reports/results.csv"),
        help="your run's results table (default: %(default)s, what the pipeline writes)",
    )
    comp.add_argument(
        "--reference",
        type=Path,
        default=Path("reports/reference/results.csv"),
        help="the table to compare with (default: %(default)s, the shipped default grid's)",
    )
    comp.add_argument(
        "--tolerance",
        type=float,
        help="largest absolute difference of a variant's mean accuracy or forgetting (default 0.05)",
    )
    comp.set_defaults(run=_compare)

    report = commands.add_parser("report", help="figures and summary.md from the tables")
    report.add_argument(
        "--out",
        required=True,
        type=Path,
        help="the folder holding results.csv and loss_curves.csv, where the figures go",
    )
    report.add_argument("--benchmarks", type=Path, help="the pipeline's benchmark folder: adds the training share")
    report.add_argument("--cores", type=int, help="cores the pipeline ran with (with --benchmarks)")
    report.add_argument("--cost", type=Path, help="the cost stage's CSV: its figure, table and the cost answers")
    report.set_defaults(run=_report)
    return root


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = parser().parse_args(argv)
    check_image_matches_tree()  # in a container: its dependencies must be the ones this tree pins
    try:
        args.run(args)
    except FileNotFoundError as error:  # a path given on the command line (or read from one) that is not there
        sys.exit(
            f"lorabench {args.command}: {error.filename}: no such file or folder (paths are relative to "
            f"{Path.cwd()}); see lorabench {args.command} --help"
        )


if __name__ == "__main__":
    main()
