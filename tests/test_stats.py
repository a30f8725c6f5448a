"""Paired differences, their tests (t, Wilcoxon, Holm, non-inferiority, power) and matched-learning interpolation
(between measured points only) behind the report's verdicts."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st
from scipy import stats as scipy_stats

from lorabench.report.stats import (
    ALPHA,
    MARGIN,
    POWER,
    Comparison,
    Difference,
    accuracy_range,
    forgetting_at,
    holm,
    matched_learning,
    paired,
    seed_curves,
    seeds_for_power,
    t_power,
)  # fmt: skip


def test_paired_difference_is_the_student_t_interval_of_per_seed_differences() -> None:
    a = pd.Series({0: 0.50, 1: 0.62, 2: 0.55, 3: 0.70, 4: 0.58})
    b = pd.Series({0: 0.40, 1: 0.60, 2: 0.50, 3: 0.61, 4: 0.52, 9: 0.99})  # seed 9 has no pair
    difference = paired(a, b)
    d = (a - b).dropna()
    low, high = scipy_stats.t.interval(0.95, len(d) - 1, loc=d.mean(), scale=scipy_stats.sem(d))
    assert difference.n == 5 and difference.mean == pytest.approx(d.mean())
    assert (difference.low, difference.high) == (pytest.approx(low), pytest.approx(high))


def _comparison(values: list[float], non_inferior: str | None = None) -> Comparison:
    return Comparison(
        "model",
        "a",
        "b",
        "accuracy",
        Difference.of(pd.Series(values)),
        "less",
        "more",
        MARGIN,
        f"{MARGIN:g}",
        non_inferior,
    )


def test_verdict_names_a_direction_only_when_the_holm_adjusted_test_rejects() -> None:
    clear = _comparison([-0.10, -0.12, -0.09])
    assert clear.p < 0.01
    assert clear.verdict(clear.p).startswith("less: difference -0.103 [95% CI")
    assert "Holm-adjusted p" in clear.verdict(clear.p) and ", significant;" in clear.verdict(clear.p)
    assert _comparison([0.10, 0.12, 0.09]).verdict(0.01).startswith("more")
    # the same data, but the family's adjustment lifted its p-value above alpha: no direction is named
    assert clear.verdict(0.2).startswith("not distinguishable at this sample size")
    assert _comparison([-0.10, 0.12, -0.01]).verdict(0.9).startswith("not distinguishable at this sample size")
    assert _comparison([0.3]).verdict(math.nan).startswith("not distinguishable: one paired seed")
    assert _comparison([]).verdict(math.nan).startswith("cannot be compared")


def test_holm_on_a_textbook_family() -> None:
    # four hypotheses at alpha 0.05: sorted 0.005 x 4, 0.01 x 3 reject; 0.03 x 2 = 0.06 stops the procedure
    adjusted = holm([0.01, 0.04, 0.03, 0.005])
    assert adjusted == [pytest.approx(0.03), pytest.approx(0.06), pytest.approx(0.06), pytest.approx(0.02)]
    assert [p <= ALPHA for p in adjusted] == [True, False, False, True]
    assert holm([0.5, 0.6]) == [pytest.approx(1.0), pytest.approx(1.0)]  # capped at 1, monotone in the raw order
    nan_kept = holm([0.01, math.nan, 0.02])  # an untestable comparison stays NaN and is not counted in m
    assert math.isnan(nan_kept[1]) and nan_kept[0] == pytest.approx(0.02) and nan_kept[2] == pytest.approx(0.02)


def test_non_inferiority_is_a_one_sided_test_against_the_margin() -> None:
    # differences around -0.02: not worse than -0.05; the one-sided t test of mean > -0.05 is scipy's
    values = [-0.03, -0.01, -0.02, -0.025, -0.015]
    match = _comparison(values, non_inferior="a matches b")
    expected = scipy_stats.ttest_1samp(values, -MARGIN, alternative="greater").pvalue
    assert match.p == pytest.approx(expected) and match.p < ALPHA
    assert match.verdict(match.p).startswith("a matches b: difference -0.020")
    assert match.wilcoxon == pytest.approx(
        scipy_stats.wilcoxon(np.array(values) + MARGIN, alternative="greater").pvalue
    )
    worse = _comparison([-0.06, -0.08, -0.07], non_inferior="a matches b")
    assert worse.p > 0.5 and worse.verdict(worse.p).startswith("not shown to be within 0.05 (non-inferiority)")


def test_t_and_wilcoxon_match_scipy_and_survive_zero_spread() -> None:
    values = [0.05, -0.01, 0.03, 0.04, 0.02, 0.06]
    two_sided = _comparison(values)
    assert two_sided.p == pytest.approx(scipy_stats.ttest_1samp(values, 0).pvalue)
    assert two_sided.wilcoxon == pytest.approx(scipy_stats.wilcoxon(values).pvalue)
    assert _comparison([-0.14] * 3).p == 0.0 and _comparison([0.0] * 3).p == 1.0  # scipy would say NaN
    assert _comparison([0.0] * 3).wilcoxon == 1.0


def test_seeds_for_power_against_published_and_closed_form_values() -> None:
    # paired t, two-sided alpha 0.05, power 0.80: d = 0.5 needs 34 and d = 0.8 needs 15 (as G*Power computes them)
    assert seeds_for_power(sd=0.1, margin=0.05) == 34 and seeds_for_power(sd=0.0625, margin=0.05) == 15
    # large samples: the normal closed form n = ((z_{1-a/2} + z_{power}) sd / margin)^2, plus about z^2/2 for t
    z = scipy_stats.norm.ppf(1 - ALPHA / 2) + scipy_stats.norm.ppf(POWER)
    closed = math.ceil((z * 1.0 / 0.1) ** 2)
    assert closed <= seeds_for_power(sd=1.0, margin=0.1) <= closed + 3
    one_sided = math.ceil(((scipy_stats.norm.ppf(1 - ALPHA) + scipy_stats.norm.ppf(POWER)) / 0.1) ** 2)
    assert one_sided <= seeds_for_power(sd=1.0, margin=0.1, alternative="greater") <= one_sided + 3
    assert seeds_for_power(sd=0.0, margin=0.05) == 2 and seeds_for_power(sd=math.nan, margin=0.05) is None
    assert seeds_for_power(sd=100.0, margin=0.01) is None  # over MAX_SEEDS


def test_power_of_the_chosen_seeds_is_reached_by_simulation() -> None:
    """The noncentral-t power behind the seed counts, checked by Monte Carlo on normal differences."""
    n, sd, margin = seeds_for_power(sd=0.1, margin=0.05), 0.1, 0.05
    draws = np.random.default_rng(0).normal(margin, sd, size=(4000, n))
    rejected = scipy_stats.ttest_1samp(draws, 0, axis=1).pvalue <= ALPHA
    assert rejected.mean() == pytest.approx(float(t_power(np.array([n]), margin / sd, "two-sided")[0]), abs=0.02)
    assert rejected.mean() >= POWER - 0.02


def test_forgetting_at_interpolates_and_takes_the_least_where_the_curve_turns_back() -> None:
    # lr order: (0.1, 0.05), (0.5, 0.2), (0.9, 0.6), and too high an lr: back to 0.7 at 0.9 forgetting
    curve = [pd.DataFrame({"accuracy": [0.1, 0.5, 0.9, 0.7], "forgetting": [0.05, 0.2, 0.6, 0.9]})]
    assert forgetting_at(curve, 0.3) == pytest.approx(0.125)
    assert forgetting_at(curve, 0.7) == pytest.approx(0.4)  # not 0.9: the same learning came cheaper earlier
    assert math.isnan(forgetting_at(curve, 0.95))
    assert math.isnan(forgetting_at(curve, 0.05))  # below the measured points: not toward an untrained model


def test_forgetting_at_uses_the_training_axis_too() -> None:
    lrs = pd.DataFrame({"accuracy": [0.6, 0.9], "forgetting": [0.5, 0.8]})
    along = pd.DataFrame({"accuracy": [0.2, 0.5, 0.9], "forgetting": [0.1, 0.2, 0.8]})  # the 2nd lr's evaluations
    assert math.isnan(forgetting_at([lrs], 0.4))
    assert forgetting_at([lrs, along], 0.4) == pytest.approx(0.1 + 0.1 * 2 / 3)
    assert forgetting_at([lrs, along], 0.7) == pytest.approx(min(0.6, 0.2 + 0.6 * 0.5))


polylines = st.lists(
    st.lists(st.tuples(st.floats(0, 1), st.floats(-1, 5)), min_size=1, max_size=6),
    min_size=1,
    max_size=4,
).map(lambda lines: [pd.DataFrame(line, columns=["accuracy", "forgetting"]) for line in lines])


@given(polylines, st.floats(0, 1))
def test_forgetting_at_never_leaves_the_measured_points(curve, level) -> None:
    """NaN outside the measured accuracies; inside, a value between the forgetting of two consecutive measured
    points of one polyline (so within the measured forgetting range), and at most each point measured at it."""
    found = forgetting_at(curve, level)
    low, high = accuracy_range(curve)
    reached = any(
        min(a0, a1) <= level <= max(a0, a1)
        for line in curve
        for a0, a1 in zip(line["accuracy"], [*line["accuracy"][1:], line["accuracy"].iloc[-1]], strict=True)
    )
    if not reached:
        assert math.isnan(found)
        return
    assert low <= level <= high
    points = pd.concat(curve)
    assert points["forgetting"].min() - 1e-9 <= found <= points["forgetting"].max() + 1e-9
    at_level = points.loc[points["accuracy"] == level, "forgetting"]
    assert (found <= at_level + 1e-9).all()


@given(polylines, polylines)
def test_matched_learning_compares_inside_both_measured_ranges_or_says_they_do_not_overlap(a, b) -> None:
    matched = matched_learning({0: a}, {0: b})
    (low_a, high_a), (low_b, high_b) = accuracy_range(a), accuracy_range(b)
    if min(high_a, high_b) < max(low_a, low_b):
        assert matched.disjoint == {0: ((low_a, high_a), (low_b, high_b))} and matched.difference.n == 0
        return
    assert not matched.disjoint
    assert max(low_a, low_b) <= matched.level <= min(high_a, high_b)
    reverse = matched_learning({0: b}, {0: a})
    assert reverse.difference.mean == pytest.approx(-matched.difference.mean, nan_ok=True)


def test_matched_learning_pairs_seeds_at_the_accuracy_both_reach() -> None:
    runs = pd.DataFrame({
        "variant": ["a"] * 4 + ["b"] * 4, "seed": [0, 0, 1, 1] * 2, "lr": [1, 2, 1, 2] * 2,
        "target_acc_before": 0.0,
        "target_acc_after": [0.4, 0.8, 0.5, 0.9, 0.5, 1.0, 0.5, 1.0],
        "forgetting": [0.2, 0.4, 0.2, 0.4, 0.5, 1.0, 0.6, 1.0],
    })  # fmt: skip
    curves = {v: seed_curves(runs[runs["variant"] == v]) for v in ("a", "b")}
    assert all(len(curve) == 1 and len(curve[0]) == 2 for by_seed in curves.values() for curve in by_seed.values())
    matched = matched_learning(curves["a"], curves["b"])
    # seed 0: level 0.8 -> a 0.4, b 0.8; seed 1: level 0.9 -> a 0.4, b 0.6 + 0.4 * (0.9 - 0.5) / 0.5 = 0.92
    assert matched.level == pytest.approx(0.85)
    assert matched.difference.n == 2 and matched.difference.mean == pytest.approx(((0.4 - 0.8) + (0.4 - 0.92)) / 2)


def test_seed_curves_take_only_measured_points_and_add_the_trajectories() -> None:
    runs = pd.DataFrame(
        {
            "run_id": ["r1", "r2"],
            "variant": "a",
            "seed": 0,
            "lr": [1, 2],
            "target_acc_before": 0.0,
            "target_acc_after": [0.5, 0.9],
            "forgetting": [0.3, 0.7],
        }
    )
    trajectories = pd.DataFrame(
        {
            "run_id": ["r1", "r1", "r2", "r2"],
            "lr": [1, 1, 2, 2],
            "step": [5, 10, 5, 10],
            "target_test": [0.2, 0.5, 0.6, 0.9],
            "forgetting": [0.1, 0.3, 0.4, 0.7],
        }
    )
    curve = seed_curves(runs, trajectories)[0]
    measured = {(a, f) for line in curve for a, f in zip(line["accuracy"], line["forgetting"], strict=True)}
    assert measured == {(0.5, 0.3), (0.9, 0.7), (0.2, 0.1), (0.6, 0.4)}  # no (0, 0): the untrained model is not run
    assert forgetting_at(curve, 0.4) == pytest.approx(0.1 + 0.2 * 2 / 3)


def test_matched_learning_says_when_measured_ranges_do_not_overlap() -> None:
    low = [pd.DataFrame({"accuracy": [0.1, 0.3], "forgetting": [0.2, 0.4]})]
    high = [pd.DataFrame({"accuracy": [0.8, 1.0], "forgetting": [0.9, 1.0]})]
    matched = matched_learning({0: low, 1: low}, {0: high, 1: low})
    assert matched.disjoint == {0: ((0.1, 0.3), (0.8, 1.0))}
    assert matched.difference.n == 1 and matched.difference.mean == 0.0
