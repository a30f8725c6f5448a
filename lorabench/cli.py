"""The ``lorabench`` command line: what the Snakemake rules call, plus ``variants`` and ``check``.

Heavy libraries are imported inside each command, so ``lorabench --help`` stays instant.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from lorabench.image import check_image_matches_tree

LISTING_SHAPE = (64, 64, 4)


def _variants(_: argparse.Namespace) -> None:
    from lorabench.variants import registry

    m, n, r = LISTING_SHAPE
    print(f"{'variant':<12} {'trainable @ (m,n,r)=' + str(LISTING_SHAPE):>28}  source")
    for name, cls in registry().items():
        try:
            count = f"{cls.trainable_parameters(m, n, r if cls.uses_rank else 0):,}"
        except NotImplementedError:  # the generic `peft` entry: its count depends on its PEFT config
            count = "per config"
        print(f"{name:<12} {count:>28}  {cls.source}")


def _check(args: argparse.Namespace) -> None:
    import yaml

    from lorabench.config import ConfigError, load_grid

    config = yaml.safe_load(args.config.read_text())
    try:
        grid = load_grid(config, args.schema)
    except ConfigError as error:
        sys.exit(f"{args.config}: {error}")
    print(f"{args.config}: ok, {len(grid.points())} grid points")


def _pretrain(args: argparse.Namespace) -> None:
    from lorabench.pretrain import pretrain

    scores = pretrain(json.loads(args.settings), args.out)
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
    from lorabench.runner import run_job

    run_job(json.loads(args.job))


def _aggregate(args: argparse.Namespace) -> None:
    from lorabench.aggregate import aggregate, write_tables

    results, curves = aggregate(args.records)
    write_tables(results, curves, args.out)


def _report(args: argparse.Namespace) -> None:
    from lorabench.report import run_report

    run_report(args.out)


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="lorabench", description=__doc__.splitlines()[0])
    commands = root.add_subparsers(required=True, metavar="COMMAND")

    listing = commands.add_parser("variants", help="list registered variants")
    listing.set_defaults(run=_variants)

    check = commands.add_parser("check", help="validate a grid config without running anything")
    check.add_argument("config", type=Path)
    check.add_argument("--schema", type=Path, default=Path("workflow/schemas/config.schema.yaml"))
    check.set_defaults(run=_check)

    pre = commands.add_parser("pretrain", help="build and pretrain an embedded model (pipeline rule)")
    pre.add_argument("--settings", required=True, help="JSON written by the Snakefile")
    pre.add_argument("--out", required=True, type=Path)
    pre.set_defaults(run=_pretrain)

    cache = commands.add_parser("cache-model", help="cache a GGUF or packaged model as a plain checkpoint (pipeline rule)")
    source = cache.add_mutually_exclusive_group(required=True)
    source.add_argument("--gguf", help="a .gguf file or an installed package holding one: dequantized")
    source.add_argument("--package", help="an installed package holding one checkpoint folder: copied")
    cache.add_argument("--out", required=True, type=Path)
    cache.set_defaults(run=_cache_model)

    data = commands.add_parser("generate-data", help="write a generated task's train/test JSONL (pipeline rule)")
    data.add_argument("--generator", required=True, help="the task's `generator` entry as JSON")
    data.add_argument("--out", required=True, type=Path)
    data.set_defaults(run=_generate_data)

    train = commands.add_parser("train", help="run one job of grid points (pipeline rule)")
    train.add_argument("--job", required=True, help="JSON written by the Snakefile")
    train.set_defaults(run=_train)

    agg = commands.add_parser("aggregate", help="records -> results.csv and loss_curves.csv")
    agg.add_argument("records", nargs="+", type=Path)
    agg.add_argument("--out", required=True, type=Path)
    agg.set_defaults(run=_aggregate)

    report = commands.add_parser("report", help="figures and summary.md from the tables")
    report.add_argument("--out", required=True, type=Path)
    report.set_defaults(run=_report)
    return root


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = parser().parse_args(argv)
    check_image_matches_tree()  # in a container: its dependencies must be the ones this tree pins
    args.run(args)


if __name__ == "__main__":
    main()
