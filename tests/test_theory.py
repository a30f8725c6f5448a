"""The Monte Carlo claims of docs/variants.md, through the functions the report figures use."""

from __future__ import annotations

import numpy as np
from variants_fixtures import one_torch_thread  # noqa: F401

from lorabench.theory import additive_rank, frozen_a_residual, resampled_update_error


def test_mean_resampled_update_converges_to_minus_two_lr_G_like_one_over_sqrt_n() -> None:
    table = resampled_update_error(seed=1)
    assert list(table.columns) == ["samples", "relative_error"]
    assert table["relative_error"].is_monotonic_decreasing
    slope = np.polyfit(np.log(table["samples"]), np.log(table["relative_error"]), 1)[0]
    assert -0.6 < slope < -0.4, slope
    assert table["relative_error"].iloc[-1] < 0.05


def test_relative_error_does_not_depend_on_the_learning_rate() -> None:
    small, large = (resampled_update_error(samples=[64], seed=2, lr=lr)["relative_error"].item() for lr in (1e-3, 1))
    assert abs(small - large) < 1e-9


def test_frozen_a_residual_matches_r_times_m_minus_r() -> None:
    """Each trial is chi-square with r (m - r) degrees of freedom: allow 4 standard errors of the mean."""
    trials = 400
    table = frozen_a_residual(trials=trials, seed=0)
    assert list(table.columns) == ["m", "r", "residual", "expected"]
    assert (table["expected"] == table["r"] * (table["m"] - table["r"])).all()
    tolerance = 4 * np.sqrt(2 * table["expected"] / trials)
    assert (np.abs(table["residual"] - table["expected"]) < tolerance).all(), table


def test_additive_rank_is_min_of_2r_m_n() -> None:
    table = additive_rank(seed=3)
    assert list(table.columns) == ["m", "n", "r", "rank", "expected"]
    assert (table["rank"] == table["expected"]).all()
    assert table.loc[table["r"] == 1, "rank"].tolist() == [2]
