"""How much of the machine the pipeline spent on training: Snakemake's per-job benchmarks against the records.

Every rule writes ``results/benchmarks/<rule>/...tsv`` (Snakemake's ``benchmark:``: wall seconds ``s``, ``max_rss``
in MiB, ``cpu_time``). The pipeline's wall is taken from the first job's start to the last job's end, a job ending
when its benchmark file is written (its modification time) and starting ``s`` seconds before; the training share is
the records' training-loop seconds over ``cores`` x that wall, and the throughput the grid's runs over it (runs per
core-second: what stacking, config ``jobs.stack``, is meant to raise). It covers one run from scratch: jobs kept from an
earlier ``snakemake`` call stretch the wall over the pause between calls.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd


def read_benchmarks(directory: Path) -> pd.DataFrame:
    """One row per benchmarked job: ``rule``, ``job`` (the file's path below the rule), ``s``, ``cpu_time``,
    ``max_rss`` and ``end`` (epoch seconds)."""
    rows = []
    for path in sorted(Path(directory).rglob("*.tsv")):
        relative = path.relative_to(directory).with_suffix("")
        measured = pd.read_csv(path, sep="\t").iloc[-1]  # a job rerun with --benchmark-repeats: its last line
        rows.append(
            {
                "rule": relative.parts[0],
                "job": "/".join(relative.parts[1:]),
                "s": measured["s"],
                "cpu_time": measured["cpu_time"],
                "max_rss": measured["max_rss"],
                "end": path.stat().st_mtime,
            }
        )
    return pd.DataFrame(rows, columns=["rule", "job", "s", "cpu_time", "max_rss", "end"])


def pipeline_wall(benchmarks: pd.DataFrame) -> float:
    """Seconds from the first job's start to the last job's end."""
    return float(benchmarks["end"].max() - (benchmarks["end"] - benchmarks["s"]).min())


def section_harness(results: pd.DataFrame, benchmarks: pd.DataFrame, cores: int) -> list[str]:
    """The training share, the grid's throughput and a per-rule account of where the rest of the machine went."""
    if benchmarks.empty:
        return []
    wall, training = pipeline_wall(benchmarks), float(results["train_seconds"].sum())
    per_rule = benchmarks.groupby("rule").agg(
        jobs=("s", "size"), s=("s", "sum"), cpu=("cpu_time", "sum"), rss=("max_rss", "max")
    )
    lines = [
        "## Harness",
        "",
        f"Training share: {training / (cores * wall):.2f} = {training:.0f} s of training loops (sum of the records' "
        f"timing.train_seconds) / ({cores} cores × {wall:.0f} s of pipeline wall, first job's start to the last "
        "benchmarked job's end; the report's own job not included).",
        "",
        f"Throughput: {len(results) / (cores * wall):.3f} runs per core-second = {len(results)} runs / ({cores} cores "
        f"× {wall:.0f} s); {_stacked(results)} of them trained in stacks (config jobs.stack).",
        "",
        "Per rule (Snakemake `benchmark:` files in results/benchmarks/; CPU time as Snakemake samples it):",
        "",
        "| rule | jobs | wall s (sum) | CPU s (sum) | max RSS MiB |",
        "|---|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {rule} | {row.jobs:.0f} | {row.s:.1f} | {row.cpu:.1f} | {row.rss:.0f} |"
        for rule, row in per_rule.iterrows()
    ]
    return lines + [""]


def _stacked(results: pd.DataFrame) -> int:
    """How many runs trained as members of a stack (``stacked_members`` above 1)."""
    if "stacked_members" not in results:
        return 0
    return int((results["stacked_members"].fillna(0) > 1).sum())
