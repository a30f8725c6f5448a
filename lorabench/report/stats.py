"""The statistics behind summary.md's sentences: paired differences by seed, their tests, and forgetting at
matched learning.

Runs of two variants with the same seed share the data order and the initialisation, so two variants are
compared through their per-seed differences (tasks averaged within a seed) with a Student-t 95% interval. Every
comparison the summary makes is one :class:`Comparison` of one family: its paired t test is Holm-adjusted across
the family (:func:`holm`), and a sentence names a direction (or a match, for a non-inferiority reading) only when
the adjusted p-value is below :data:`ALPHA`. Beside it: the Wilcoxon signed-rank test (no normality assumed) and
the seeds a paired t test needs for 80% power at the comparison's margin (:func:`seeds_for_power`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import pandas as pd
from scipy import stats

LEVEL = 0.95
ALPHA = 0.05
"""Family-wise error rate of the summary's comparisons, held by Holm's step-down adjustment."""
POWER = 0.80
MARGIN = 0.05
"""The smallest difference in target accuracy (or forgetting, the same scale) that matters, and the
non-inferiority margin of the "matches" questions: 5 test examples in 100, the tolerance within which
``lorabench compare`` already reads two runs of one grid as the same result."""
MAX_SEEDS = 10_000


@dataclass(frozen=True)
class Difference:
    """Mean of per-seed differences a − b with its Student-t 95% interval (NaN bounds below two seeds)."""

    mean: float
    low: float
    high: float
    n: int
    values: tuple[float, ...] = ()
    """The per-seed differences: what the tests and the power line use."""

    @classmethod
    def of(cls, differences: pd.Series) -> Difference:
        values = differences.dropna().to_numpy(dtype=float)
        n = values.size
        if n == 0:
            return cls(math.nan, math.nan, math.nan, 0)
        mean = float(values.mean())
        if n < 2:
            return cls(mean, math.nan, math.nan, n, tuple(values))
        half = float(stats.t.ppf((1 + LEVEL) / 2, n - 1) * values.std(ddof=1) / math.sqrt(n))
        return cls(mean, mean - half, mean + half, n, tuple(values))

    @property
    def sd(self) -> float:
        """Standard deviation of the per-seed differences (NaN below two seeds)."""
        return float(np.std(self.values, ddof=1)) if self.n >= 2 else math.nan

    def text(self, digits: int) -> str:
        if self.n < 2:
            return f"{self.mean:+.{digits}f} ({self.n} paired seed{'s' * (self.n != 1)}, no interval)"
        return f"{self.mean:+.{digits}f} [95% CI {self.low:+.{digits}f}, {self.high:+.{digits}f}; {self.n} seeds]"


def paired(a: pd.Series, b: pd.Series) -> Difference:
    """a − b over the seeds both have; ``a`` and ``b`` are indexed by seed."""
    both = pd.concat([a.rename("a"), b.rename("b")], axis=1, join="inner").dropna()
    return Difference.of(both["a"] - both["b"])


def t_test(values: np.ndarray, null: float, alternative: str) -> float:
    """P-value of the one-sample t test of the mean of ``values`` against ``null`` (``two-sided`` or ``greater``);
    with no spread the test is decided by the mean alone (p 0 or 1), where scipy would return NaN."""
    n, mean = values.size, float(values.mean())
    se = float(values.std(ddof=1)) / math.sqrt(n)
    if se == 0:
        return 0.0 if (mean != null if alternative == "two-sided" else mean > null) else 1.0
    t = (mean - null) / se
    return float(2 * stats.t.sf(abs(t), n - 1) if alternative == "two-sided" else stats.t.sf(t, n - 1))


def wilcoxon_test(values: np.ndarray, null: float, alternative: str) -> float:
    """P-value of the Wilcoxon signed-rank test of ``values`` − ``null`` (exact for small samples without ties);
    1 where every difference equals ``null``, which scipy refuses."""
    shifted = values - null
    if not np.any(shifted):
        return 1.0
    return float(stats.wilcoxon(shifted, alternative=alternative).pvalue)


def holm(p_values: list[float]) -> list[float]:
    """Holm's step-down adjusted p-values, in the input's order: the i-th smallest of m finite p-values times
    (m − i + 1), made monotone and capped at 1; a hypothesis is rejected at family-wise level α where its adjusted
    value is ≤ α. NaN (a comparison that could not be tested) stays NaN and does not count in m."""
    finite = sorted((p, i) for i, p in enumerate(p_values) if not math.isnan(p))
    adjusted, running = [math.nan] * len(p_values), 0.0
    for rank, (p, i) in enumerate(finite):
        running = max(running, min(1.0, (len(finite) - rank) * p))
        adjusted[i] = running
    return adjusted


def t_power(n: np.ndarray, effect: float, alternative: str) -> np.ndarray:
    """Power of the paired t test at level :data:`ALPHA` with ``n`` seeds when the true mean difference is
    ``effect`` standard deviations (noncentral t)."""
    df, shift = n - 1, effect * np.sqrt(n)
    if alternative == "two-sided":
        critical = stats.t.ppf(1 - ALPHA / 2, df)
        return stats.nct.sf(critical, df, shift) + stats.nct.cdf(-critical, df, shift)
    return stats.nct.sf(stats.t.ppf(1 - ALPHA, df), df, shift)


def seeds_for_power(sd: float, margin: float, alternative: str = "two-sided") -> int | None:
    """The fewest seeds (≥ 2) for which the paired t test reaches :data:`POWER` when the true difference is
    ``margin`` (for a non-inferiority test, ``alternative="greater"``: when the variants are equal and the margin
    is the distance to the null) at per-seed SD ``sd``; None where ``sd`` is unknown or over :data:`MAX_SEEDS`
    would be needed."""
    if math.isnan(sd):
        return None
    if sd == 0:
        return 2
    n = np.arange(2, MAX_SEEDS + 1)
    enough = np.flatnonzero(t_power(n, margin / sd, alternative) >= POWER)
    return int(n[enough[0]]) if enough.size else None


@dataclass(frozen=True)
class Comparison:
    """One member of the summary's family of tests: a paired difference a − b and how it is read.

    Two-sided (the default): is a − b ≠ 0? ``lower``/``higher`` name the direction. Non-inferiority
    (``non_inferior`` given): is a − b > −``margin``, i.e. a not worse than b by the margin or more? ``margin``
    is also the difference the power line asks the test to detect.
    """

    scope: str
    """Where: the model whose runs are compared."""
    a: str
    b: str
    label: str
    """What of a and b is compared, e.g. ``target accuracy``."""
    difference: Difference
    lower: str
    higher: str
    margin: float
    margin_text: str
    """The margin in words, e.g. ``0.05`` or ``5% of lora's``."""
    non_inferior: str | None = None
    """The claim a non-inferiority reading makes when it holds, e.g. ``frozen_a matches lora``."""

    @property
    def what(self) -> str:
        """``llama-tiny: frozen_a − lora, target accuracy``."""
        return f"{self.scope}: {self.a} − {self.b}, {self.label}"

    @property
    def alternative(self) -> str:
        return "greater" if self.non_inferior else "two-sided"

    @property
    def null(self) -> float:
        return -self.margin if self.non_inferior else 0.0

    @cached_property
    def p(self) -> float:
        """The paired t test's p-value: the one Holm adjusts (NaN below two seeds)."""
        return (
            t_test(np.array(self.difference.values), self.null, self.alternative)
            if self.difference.n >= 2
            else math.nan
        )

    @cached_property
    def wilcoxon(self) -> float:
        return (
            wilcoxon_test(np.array(self.difference.values), self.null, self.alternative)
            if self.difference.n >= 2
            else math.nan
        )

    @cached_property
    def seeds_needed(self) -> int | None:
        return seeds_for_power(self.difference.sd, self.margin, self.alternative)

    @property
    def test(self) -> str:
        return f"non-inferiority, margin {self.margin_text}" if self.non_inferior else "two-sided"

    def power_text(self) -> str:
        needed = self.seeds_needed
        return "n/a" if self.difference.n < 2 else f"over {MAX_SEEDS:,}" if needed is None else str(needed)

    def brief(self, adjusted: float) -> str:
        """``+0.05 [-0.04, +0.15] n.s.``: the reading in a few words (n.s.: not significant after Holm)."""
        d = self.difference
        if d.n < 2:
            return f"{d.mean:+.2f}, not tested ({d.n} seed{'s' * (d.n != 1)})"
        rejected = adjusted <= ALPHA
        if self.non_inferior:
            reading = "non-inferior" if rejected else "non-inferiority not shown"
        else:
            reading = "significant" if rejected else "n.s."
        return f"{d.mean:+.2f} [{d.low:+.2f}, {d.high:+.2f}] {reading}"

    def verdict(self, adjusted: float) -> str:
        """The sentence's reading at Holm-adjusted p-value ``adjusted``: a direction (or a match) only where the
        family rejects; every reading carries the adjusted decision, the Wilcoxon p-value and the power line."""
        d = self.difference
        if d.n == 0:
            return "cannot be compared: no seed has both"
        if d.n < 2:
            return f"not distinguishable: one paired seed gives no interval ({d.text(3)})"
        rejected = adjusted <= ALPHA
        tests = (
            f"Holm-adjusted p {adjusted:.3g}, {'significant' if rejected else 'not significant'}; Wilcoxon p "
            f"{self.wilcoxon:.3g}; {self.power_text()} seeds for {POWER:.0%} power at ±{self.margin_text}"
        )
        if self.non_inferior:
            reading = self.non_inferior if rejected else f"not shown to be within {self.margin_text} (non-inferiority)"
            return f"{reading}: difference {d.text(3)} ({tests})"
        if rejected:
            return f"{self.lower if d.mean < 0 else self.higher}: difference {d.text(3)} ({tests})"
        return f"not distinguishable at this sample size: difference {d.text(3)} ({tests})"


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


def seed_curves(
    runs: pd.DataFrame, trajectories: pd.DataFrame | None = None, measure: str = "forgetting"
) -> dict[int, Curve]:
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
