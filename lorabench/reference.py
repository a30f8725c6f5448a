"""Compare a fresh run's ``results.csv`` with the shipped reference (``reports/reference/results.csv``).

On one machine a CPU grid is deterministic: every record's accuracies and forgetting repeat exactly. Another CPU
(another BLAS kernel, another instruction set) can round differently, and greedy decoding may then flip a few
test examples, so the comparison allows a tolerance on each variant's mean, and demands the same grid points,
the same statuses and the same learning-rate choices. Timings and memory are never compared: they are the
machine's, not the method's.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from lorabench.aggregate import SELECTION_GROUP, best_lr, lr_choices

COMPARED = ("target_acc_after", "forgetting")
DEFAULT_TOLERANCE = 0.05
"""Absolute, on a (model, variant, rank) mean over seeds and tasks: a few flipped test examples of 128."""


@dataclass(frozen=True)
class Comparison:
    differences: list[str]
    points: int

    @property
    def agrees(self) -> bool:
        return not self.differences


def compare(fresh: pd.DataFrame, reference: pd.DataFrame, tolerance: float = DEFAULT_TOLERANCE) -> Comparison:
    """Every way ``fresh`` departs from ``reference`` beyond ``tolerance``, one line each."""
    differences = _grid_differences(fresh, reference)
    if differences:
        return Comparison(differences, len(fresh))
    differences += _status_differences(fresh, reference)
    differences += _choice_differences(fresh, reference)
    differences += _mean_differences(fresh, reference, tolerance)
    return Comparison(differences, len(fresh))


def _grid_differences(fresh: pd.DataFrame, reference: pd.DataFrame) -> list[str]:
    missing = sorted(set(reference["run_id"]) - set(fresh["run_id"]))
    extra = sorted(set(fresh["run_id"]) - set(reference["run_id"]))
    lines = [f"grid point missing from this run: {run}" for run in missing[:20]]
    lines += [f"grid point not in the reference: {run}" for run in extra[:20]]
    if len(missing) + len(extra) > 40:
        lines.append(f"... {len(missing)} missing and {len(extra)} extra grid points in all: not the same config")
    return lines


def _status_differences(fresh: pd.DataFrame, reference: pd.DataFrame) -> list[str]:
    joined = fresh.merge(reference, on="run_id", suffixes=("", "_reference"))
    changed = joined[joined["status"] != joined["status_reference"]]
    return [f"{row.run_id}: status {row.status}, reference {row.status_reference}" for row in changed.itertuples()]


def _choice_differences(fresh: pd.DataFrame, reference: pd.DataFrame) -> list[str]:
    joined = lr_choices(fresh).merge(lr_choices(reference), on=SELECTION_GROUP, suffixes=("", "_reference"))
    changed = joined[joined["chosen_lr"] != joined["chosen_lr_reference"]]
    return [
        f"{'/'.join(str(getattr(row, key)) for key in SELECTION_GROUP)}: chose lr {row.chosen_lr:g}, "
        f"reference {row.chosen_lr_reference:g}"
        for row in changed.itertuples()
    ]


def _means(results: pd.DataFrame) -> pd.DataFrame:
    selected = best_lr(results)
    return selected[selected["status"] == "ok"].groupby(["model", "variant", "rank"])[list(COMPARED)].mean()


def _mean_differences(fresh: pd.DataFrame, reference: pd.DataFrame, tolerance: float) -> list[str]:
    joined = _means(fresh).merge(_means(reference), left_index=True, right_index=True, suffixes=("", "_reference"))
    lines = []
    for (model, variant, rank), row in joined.iterrows():
        for metric in COMPARED:
            ours, theirs = row[metric], row[f"{metric}_reference"]
            if abs(ours - theirs) > tolerance or pd.isna(ours) != pd.isna(theirs):
                lines.append(
                    f"{model}/{variant}/r{rank}: mean {metric} {ours:.3f}, reference {theirs:.3f} "
                    f"(tolerance {tolerance})"
                )
    return lines
