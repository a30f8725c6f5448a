"""The training share: records' training seconds over cores x the wall the benchmark files span."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from lorabench.report.harness import pipeline_wall, read_benchmarks, section_harness

HEADER = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"


def write_benchmark(directory: Path, name: str, seconds: float, end: float) -> None:
    path = directory / f"{name}.tsv"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(HEADER + f"{seconds}\t0:00:00\t300.5\t0\t0\t0\t0\t0\t0\t{seconds / 2}\n")
    os.utime(path, (end, end))


def test_wall_spans_first_start_to_last_end_and_share_divides_by_cores(tmp_path: Path) -> None:
    write_benchmark(tmp_path, "pretrain/m", seconds=10, end=1010)  # 1000 -> 1010
    write_benchmark(tmp_path, "train/m/sort/lora/r2/lr0.003/seed0", seconds=30, end=1040)  # overlaps: 1010 -> 1040
    write_benchmark(tmp_path, "train/m/sort/full/r0/lr0.0005/seed0", seconds=20, end=1035)
    write_benchmark(tmp_path, "aggregate", seconds=5, end=1050)
    benchmarks = read_benchmarks(tmp_path)
    assert sorted(benchmarks["rule"]) == ["aggregate", "pretrain", "train", "train"]
    assert pipeline_wall(benchmarks) == 50
    results = pd.DataFrame({"train_seconds": [20.0, 10.0, None], "stacked_members": [2.0, 2.0, None]})
    lines = section_harness(results, benchmarks, cores=2)
    assert "Training share: 0.30 = 30 s of training loops" in lines[2] and "(2 cores × 50 s" in lines[2]
    assert "Throughput: 0.030 runs per core-second = 3 runs / (2 cores × 50 s); 2 of them trained in stacks" in lines[4]
    assert lines[6].startswith("Per rule") and lines[8].startswith("| rule |")  # the table follows its sentence
    assert "| train | 2 | 50.0 | 25.0 | 300 |" in lines


def test_no_benchmarks_no_section(tmp_path: Path) -> None:
    assert section_harness(pd.DataFrame({"train_seconds": [1.0]}), read_benchmarks(tmp_path), cores=2) == []
