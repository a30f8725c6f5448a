"""workflow/config/encoder_study.yaml is a study: every variant swept over log-spaced learning rates, enough
seeds, the study's variants and its two baselines (full, lora), and a test set where one review is at most 0.005 of
accuracy."""

from __future__ import annotations

import itertools
import json
import math
from collections import defaultdict

import yaml

from lorabench.checks import SCHEMA, check_schema
from lorabench.grid import Grid
from tests.pipeline import REPO

STUDY = REPO / "workflow" / "config" / "encoder_study.yaml"
CORE = {"full", "lora", "frozen_a", "frozen_b", "additive", "resampled"}


def _study_grid() -> Grid:
    """The study's grid as it expands: the schema fills the defaults, and no further check runs (they would need the
    model's package)."""
    config = yaml.safe_load(STUDY.read_text())
    check_schema(config, SCHEMA)
    return Grid(config)


def _lrs_per_variant() -> dict[str, list[float]]:
    """Each variant's learning rates as the grid expands them."""
    lrs: dict[str, set[float]] = defaultdict(set)
    for point in _study_grid().points():
        lrs[point.variant].add(point.lr)
    return {variant: sorted(values) for variant, values in lrs.items()}


def test_every_core_variant_sweeps_at_least_three_log_spaced_lrs() -> None:
    lrs = _lrs_per_variant()
    assert set(lrs) == CORE
    for variant, values in lrs.items():
        ratios = [b / a for a, b in itertools.pairwise(values)]
        assert len(values) >= 3, variant
        # neighbours a factor of about 2-3.3 apart: fine enough that an interior optimum is findable
        assert all(1.9 <= ratio <= 3.4 for ratio in ratios), (variant, values)
        assert math.log10(values[-1] / values[0]) >= 0.6, (variant, values)


def test_study_has_five_or_more_seeds_and_a_fine_test_set() -> None:
    config = yaml.safe_load(STUDY.read_text())
    assert len(config["grid"]["seeds"]) >= 5
    task = config["tasks"]["target"][0]["sentiment"]
    test = (REPO / task["data_files"]["test"]).read_text().splitlines()
    train = (REPO / task["data_files"]["train"]).read_text().splitlines()
    assert 1 / len(test) <= 0.005
    assert task["validation_size"] >= 100 and len(train) - task["validation_size"] >= 160
    assert {json.loads(line)["label"] for line in test} == set(task["labels"])


def test_the_committed_reference_is_this_config_s_run_with_interior_choices() -> None:
    """reports/reference-encoder/ is the run of the shipped config (the same grid points: a config edited without
    re-running it fails here), every variant swept over >= 3 lrs and >= 5 seeds, each chosen lr inside its sweep."""
    import pandas as pd

    from lorabench.aggregate import best_lr

    results = pd.read_csv(REPO / "reports" / "reference-encoder" / "results.csv")
    expanded = {(p.variant, p.lr, p.seed) for p in _study_grid().points()}
    assert set(zip(results["variant"], results["lr"], results["seed"], strict=True)) == expanded
    assert results.groupby("variant")["seed"].nunique().min() >= 5
    sweeps = results.groupby("variant")["lr"].agg(["min", "max", "nunique"])
    assert sweeps["nunique"].min() >= 3
    for variant, lr in best_lr(results).groupby("variant")["lr"].first().items():
        assert sweeps.loc[variant, "min"] < lr < sweeps.loc[variant, "max"], (variant, lr)
