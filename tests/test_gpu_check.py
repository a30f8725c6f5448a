"""The GPU check (.ci/gpu-check) runs only where a GPU is; here: that it skips cleanly and its grid is valid."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import yaml

from lorabench.checks import load_grid
from tests.pipeline import REPO, ci_script

SCRIPT = REPO / ".ci" / "gpu-check"


def test_skips_without_an_nvidia_gpu() -> None:
    # a PATH without nvidia-smi: this is what any machine without the NVIDIA driver looks like
    environment = dict(os.environ, PATH=str(Path(sys.executable).parent))
    result = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, env=environment, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("skipped: no NVIDIA GPU")


def test_its_grid_passes_the_config_checks(tmp_path: Path) -> None:
    # the check runs on a lent machine, rarely: a config that the schema or rank checks refuse would waste it
    gpu_check = ci_script("gpu-check")
    config = yaml.safe_load(gpu_check.write_config(tmp_path).read_text())
    grid = load_grid(config, REPO / "workflow" / "schemas" / "config.schema.yaml")
    assert {point.variant for point in grid.points()} == set(gpu_check.VARIANTS)


def test_its_stack_of_members_trains_and_writes_its_figures(tmp_path: Path) -> None:
    """The stacking benchmark as the check runs it on a GPU (its members, its figures file), here on the CPU for a
    few steps: a stack of that size must train every member and give finite ratios before a lent GPU is spent."""
    gpu_check = ci_script("gpu-check")
    environment = dict(os.environ, HF_HUB_OFFLINE="1")
    assert gpu_check.run_stack_benchmark(environment, tmp_path, device="cpu", enabled=False) == []
    members, written = gpu_check.STACK_MEMBERS, json.loads((tmp_path / "stack-throughput.json").read_text())
    assert members >= 20 and written["members"] == members and written["device"] == "cpu"
    assert all(
        math.isfinite(written[key]) and written[key] > 0
        for key in ("training_ratio", "evaluation_ratio", "widened_training_ratio", "widened_evaluation_ratio")
    )
