"""The statistics behind summary.md's sentences: paired differences by seed, and forgetting at matched learning.

Runs of two variants with the same seed share the data order and the initialisation, so two variants are
compared through their per-seed differences (tasks averaged within a seed) with a Student-t 95% interval. A
sentence names a direction only when that interval excludes 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

LEVEL = 0.95


@dataclass(frozen=True)
class Difference:
    """Mean of per-seed differences a − b with its Student-t 95% interval (NaN bounds below two seeds)."""

    mean: float
    low: float
    high: float
    n: int

    @classmethod
    def of(cls, differences: pd.Series) -> Difference:
        values = differences.dropna().to_numpy(dtype=float)
        n = values.size
        if n == 0:
            return cls(math.nan, math.nan, math.nan, 0)
        mean = float(values.mean())
        if n < 2:
            return cls(mean, math.nan, math.nan, n)
        half = float(stats.t.ppf((1 + LEVEL) / 2, n - 1) * values.std(ddof=1) / math.sqrt(n))
        return cls(mean, mean - half, mean + half, n)

    @property
    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0

    def text(self, digits: int) -> str:
        if self.n < 2:
            return f"{self.mean:+.{digits}f} ({self.n} paired seed{'s' * (self.n != 1)}, no interval)"
        return f"{self.mean:+.{digits}f} [95% CI {self.low:+.{digits}f}, {self.high:+.{digits}f}; {self.n} seeds]"


def paired(a: pd.Series, b: pd.Series) -> Difference:
    """a − b over the seeds both have; ``a`` and ``b`` are indexed by seed."""
    both = pd.concat([a.rename("a"), b.rename("b")], axis=1, join="inner").dropna()
    return Difference.of(both["a"] - both["b"])


def verdict(difference: Difference, lower: str, higher: str) -> str:
    """``lower``/``higher`` with the difference when its interval excludes 0, else "not distinguishable"."""
    if difference.n == 0:
        return "cannot be compared: no seed has both"
    if difference.n < 2:
        return f"not distinguishable: one paired seed gives no interval ({difference.text(3)})"
    if difference.excludes_zero:
        return f"{lower if difference.mean < 0 else higher}: difference {difference.text(3)}"
    return f"not distinguishable at this sample size: difference {difference.text(3)}"


Curve = list[pd.DataFrame]
"""One seed's measured learning-forgetting points as polylines (columns ``accuracy``, ``forgetting``, in order):
the final points in learning-rate order, and each learning rate's trajectory in training order."""


def forgetting_at(curve: Curve, accuracy: float) -> float:
    """The least forgetting at ``accuracy`` on the straight segments between consecutive measured points of
    ``curve``'s polylines; NaN where no segment reaches it: nothing is extrapolated, not even toward the untrained
    model (accuracy before, no forgetting), which no run measures. Where ``accuracy`` is reached more than once
    (accuracy falls again at too high an lr) the least forgetting counts: the best that variant did at that level.
    """
    found = []
    for line in curve:
        acc, forget = line["accuracy"].to_numpy(float), line["forgetting"].to_numpy(float)
        found += [forget[i] for i in range(len(acc)) if acc[i] == accuracy]
        for i in range(len(acc) - 1):
            a0, a1, f0, f1 = acc[i], acc[i + 1], forget[i], forget[i + 1]
            if a0 != a1 and min(a0, a1) <= accuracy <= max(a0, a1):
                found.append(f0 + (accuracy - a0) * (f1 - f0) / (a1 - a0))
    found = [f for f in found if not np.isnan(f)]
    return min(found) if found else math.nan


def accuracy_range(curve: Curve) -> tuple[float, float]:
    """The lowest and highest measured accuracy of ``curve`` (points with a forgetting value)."""
    points = pd.concat(curve).dropna()
    return float(points["accuracy"].min()), float(points["accuracy"].max())


@dataclass(frozen=True)
class Matched:
    """Forgetting of a vs b at matched learning: per seed, at the highest target accuracy both measured curves
    reach; seeds whose measured accuracy ranges do not overlap are not compared, and listed."""

    difference: Difference
    level: float
    """Mean over the compared seeds of the matched accuracy level."""
    disjoint: dict[int, tuple[tuple[float, float], tuple[float, float]]]
    """Seed -> (a's, b's) measured accuracy range, where they do not overlap."""


def matched_learning(curves_a: dict[int, Curve], curves_b: dict[int, Curve]) -> Matched:
    """Per seed, forgetting of a and b interpolated at min(max accuracy of a, of b) where that level lies in both
    measured ranges, paired over the seeds; the others are :attr:`Matched.disjoint`."""
    levels, diffs, disjoint = {}, {}, {}
    for seed in sorted(set(curves_a) & set(curves_b)):
        (low_a, high_a), (low_b, high_b) = accuracy_range(curves_a[seed]), accuracy_range(curves_b[seed])
        level = min(high_a, high_b)
        if level < max(low_a, low_b):
            disjoint[seed] = ((low_a, high_a), (low_b, high_b))
            continue
        levels[seed] = level
        diffs[seed] = forgetting_at(curves_a[seed], level) - forgetting_at(curves_b[seed], level)
    level = float(np.mean(list(levels.values()))) if levels else math.nan
    return Matched(Difference.of(pd.Series(diffs, dtype=float)), level, disjoint)


def seed_curves(runs: pd.DataFrame, trajectories: pd.DataFrame | None = None,
                measure: str = "forgetting") -> dict[int, Curve]:
    """One variant's ok runs -> per seed, its measured curve (tasks averaged) in forgetting ``measure``: the final
    points in learning-rate order, and each learning rate's ``trajectories`` rows (evaluations during training, the
    final one last) in step order. Only measured points: no untrained start."""
    columns = ["accuracy", "forgetting"]
    curves = {}
    for seed, group in runs.groupby("seed"):
        finals = group.groupby("lr")[["target_acc_after", measure]].mean().sort_index()
        curve = [finals.set_axis(columns, axis=1).reset_index(drop=True)]
        if trajectories is not None:
            along = trajectories[trajectories["run_id"].isin(group["run_id"])]
            for _, steps in along.groupby("lr"):
                line = steps.groupby("step")[["target_test", measure]].mean().sort_index()
                curve.append(line.set_axis(columns, axis=1).reset_index(drop=True))
        curves[int(seed)] = curve
    return curves
