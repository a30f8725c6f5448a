"""Paired differences, matched-learning interpolation and the Pareto front behind the report's verdicts."""

from __future__ import annotations

import math

import pandas as pd
import pytest
from scipy import stats as scipy_stats

from lorabench.report.plots import pareto_front
from lorabench.report.stats import Difference, forgetting_at, matched_learning, paired, seed_curves, verdict


def test_paired_difference_is_the_student_t_interval_of_per_seed_differences() -> None:
    a = pd.Series({0: 0.50, 1: 0.62, 2: 0.55, 3: 0.70, 4: 0.58})
    b = pd.Series({0: 0.40, 1: 0.60, 2: 0.50, 3: 0.61, 4: 0.52, 9: 0.99})  # seed 9 has no pair
    difference = paired(a, b)
    d = (a - b).dropna()
    low, high = scipy_stats.t.interval(0.95, len(d) - 1, loc=d.mean(), scale=scipy_stats.sem(d))
    assert difference.n == 5 and difference.mean == pytest.approx(d.mean())
    assert (difference.low, difference.high) == (pytest.approx(low), pytest.approx(high))


def test_verdict_names_a_direction_only_when_the_interval_excludes_zero() -> None:
    clear_values = pd.Series([-0.10, -0.12, -0.09])
    clear = Difference.of(clear_values)
    unclear = Difference.of(pd.Series([-0.10, 0.12, -0.01]))
    assert verdict(clear, "less", "more").startswith("less: difference -0.103 [95% CI")
    assert verdict(Difference.of(-clear_values), "less", "more").startswith("more")
    assert verdict(unclear, "less", "more").startswith("not distinguishable at this sample size")
    assert verdict(Difference.of(pd.Series([0.3])), "less", "more").startswith("not distinguishable: one paired seed")
    assert verdict(Difference.of(pd.Series([], dtype=float)), "less", "more").startswith("cannot be compared")


def test_forgetting_at_interpolates_and_takes_the_least_where_the_curve_turns_back() -> None:
    # lr order: untrained (0, 0), then (0.5, 0.2), (0.9, 0.6), and too high an lr: back to 0.7 at 0.9 forgetting
    curve = pd.DataFrame({"accuracy": [0.0, 0.5, 0.9, 0.7], "forgetting": [0.0, 0.2, 0.6, 0.9]})
    assert forgetting_at(curve, 0.25) == pytest.approx(0.1)
    assert forgetting_at(curve, 0.7) == pytest.approx(0.4)  # not 0.9: the same learning came cheaper earlier
    assert math.isnan(forgetting_at(curve, 0.95))


def test_matched_learning_pairs_seeds_at_the_accuracy_both_reach() -> None:
    runs = pd.DataFrame({
        "variant": ["a"] * 4 + ["b"] * 4, "seed": [0, 0, 1, 1] * 2, "lr": [1, 2, 1, 2] * 2,
        "target_acc_before": 0.0,
        "target_acc_after": [0.4, 0.8, 0.5, 0.9, 0.5, 1.0, 0.5, 1.0],
        "forgetting": [0.2, 0.4, 0.2, 0.4, 0.5, 1.0, 0.6, 1.0],
    })  # fmt: skip
    curves = {v: seed_curves(runs[runs["variant"] == v]) for v in ("a", "b")}
    matched = matched_learning(curves["a"], curves["b"])
    # seed 0: level 0.8 -> a 0.4, b 0.8; seed 1: level 0.9 -> a 0.4, b 0.6 + 0.4 * (0.9 - 0.5) / 0.5 = 0.92
    assert matched.level == pytest.approx(0.85)
    assert matched.difference.n == 2 and matched.difference.mean == pytest.approx(((0.4 - 0.8) + (0.4 - 0.92)) / 2)


def test_pareto_front_keeps_only_undominated_points() -> None:
    points = pd.DataFrame({"accuracy": [0.0, 0.5, 0.6, 0.9, 0.8], "forgetting": [0.0, 0.3, 0.2, 0.7, 0.9]})
    front = pareto_front(points)
    assert list(zip(front["accuracy"], front["forgetting"])) == [(0.0, 0.0), (0.6, 0.2), (0.9, 0.7)]
