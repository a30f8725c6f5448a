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


def forgetting_at(curve: pd.DataFrame, accuracy: float) -> float:
    """The least forgetting at ``accuracy`` along a learning-rate curve; NaN where the curve never reaches it.

    ``curve`` has columns ``accuracy`` and ``forgetting`` in learning-rate order, starting from the untrained
    model (lr → 0: accuracy before, no forgetting); consecutive points are joined by straight segments. Where the
    curve passes ``accuracy`` more than once (accuracy falls again at too high an lr) the least forgetting counts:
    the best that variant can do at that level of learning.
    """
    acc, forget = curve["accuracy"].to_numpy(float), curve["forgetting"].to_numpy(float)
    found = [forget[i] for i in range(len(acc)) if acc[i] == accuracy]
    for i in range(len(acc) - 1):
        a0, a1, f0, f1 = acc[i], acc[i + 1], forget[i], forget[i + 1]
        if a0 != a1 and min(a0, a1) <= accuracy <= max(a0, a1):
            found.append(f0 + (accuracy - a0) * (f1 - f0) / (a1 - a0))
    found = [f for f in found if not np.isnan(f)]
    return min(found) if found else math.nan


@dataclass(frozen=True)
class Matched:
    """Forgetting of a vs b at matched learning: per seed, at the highest target accuracy both curves reach."""

    difference: Difference
    level: float
    """Mean over seeds of the matched accuracy level."""


def matched_learning(curves_a: dict[int, pd.DataFrame], curves_b: dict[int, pd.DataFrame]) -> Matched:
    """Per seed, forgetting of a and b interpolated at min(max accuracy of a, of b), paired over the seeds."""
    levels, diffs = {}, {}
    for seed in sorted(set(curves_a) & set(curves_b)):
        a, b = curves_a[seed], curves_b[seed]
        level = min(a["accuracy"].max(), b["accuracy"].max())
        levels[seed] = level
        diffs[seed] = forgetting_at(a, level) - forgetting_at(b, level)
    level = float(np.mean(list(levels.values()))) if levels else math.nan
    return Matched(Difference.of(pd.Series(diffs, dtype=float)), level)


def seed_curves(runs: pd.DataFrame) -> dict[int, pd.DataFrame]:
    """One variant's ok runs -> per seed, its learning-rate curve (tasks averaged), from the untrained model on."""
    curves = {}
    for seed, group in runs.groupby("seed"):
        points = group.groupby("lr")[["target_acc_after", "forgetting", "target_acc_before"]].mean().sort_index()
        start = pd.DataFrame({"accuracy": [points["target_acc_before"].mean()], "forgetting": [0.0]})
        trained = points.rename(columns={"target_acc_after": "accuracy"})[["accuracy", "forgetting"]]
        curves[int(seed)] = pd.concat([start, trained], ignore_index=True)
    return curves
