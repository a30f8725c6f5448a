"""Which forgetting measure a verdict on forgetting uses: the first of exact match, per-character accuracy and
answer cross-entropy that is not saturated in the runs it compares.

A measure saturated in a set of runs cannot rank them: exact match turns one wrong character into 0, so runs that
keep very different amounts of a source task can all read "forgot everything". Each run records, beside each
measure's mean over the source tasks, its **ceiling**: the mean when everything is forgotten (accuracy 0; for the
cross-entropy, a uniform guess over the vocabulary, ln |V|). A measure is **saturated** in a set of runs when every
run's value is at least :data:`SATURATION` of its ceiling (at the ceiling: all forgot everything, by this measure)
or every run's is at most 1 − :data:`SATURATION` of it (at the floor: none forgot anything).
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

SATURATION = 0.95
MEASURES = {
    "forgetting": "exact-match accuracy drop",
    "forgetting_char": "per-character accuracy drop",
    "forgetting_ce": "answer cross-entropy increase (nats/token)",
}
"""results.csv column -> what it measures, in order of preference: the task's own score first."""
PROBES = {"paraphrase_retrieval": "paraphrase-retrieval drop"}
"""A probe of ``forgetting.mean`` that is not a source task -> what its part measures (lm-eval: ``lm_eval__<task>``)."""
HELDOUT = "heldout_ce"
"""The held-out text's part of ``forgetting_ce`` (config ``forgetting.heldout_ce``)."""
UNMEASURED = (
    "no forgetting measure was taken in these runs (no source task, lm-eval task, retrieval probe or held-out text)"
)
"""Why no verdict on forgetting where nothing the verdicts read was measured: not "saturated", which would say the
measures were taken and could not rank the runs."""


def forgetting_parts(runs: pd.DataFrame, measure: str = "forgetting") -> list[str]:
    """The parts ``measure`` averages in ``runs``: its ``<measure>__<part>`` columns that hold a value."""
    prefix = f"{measure}__"
    return [
        column[len(prefix) :] for column in runs.columns if column.startswith(prefix) and runs[column].notna().any()
    ]


def names(runs: pd.DataFrame) -> dict[str, str]:
    """:data:`MEASURES` as these runs measured them: ``forgetting`` (the record's ``forgetting.mean``) is the
    exact-match drop only where every part is a source task; with probes (paraphrase retrieval, lm-eval) it is their
    mean, and is named by them, so a verdict never calls a retrieval drop "exact match". Likewise ``forgetting_ce``
    is named by the held-out text where that is one of its parts."""
    return {**MEASURES, "forgetting": _forgetting_name(runs), "forgetting_ce": _cross_entropy_name(runs)}


def _forgetting_name(runs: pd.DataFrame) -> str:
    parts = forgetting_parts(runs)
    probes = [part for part in parts if f"source_acc_before__{part}" not in runs]
    if not probes:
        return MEASURES["forgetting"]
    named = [PROBES.get(part, f"{part.removeprefix('lm_eval__')} (lm-eval) score drop") for part in probes]
    if len(probes) < len(parts):
        named.append("source tasks' exact-match accuracy drop")
    return named[0] if len(named) == 1 else "mean of " + ", ".join(named)


def _cross_entropy_name(runs: pd.DataFrame) -> str:
    parts = forgetting_parts(runs, "forgetting_ce")
    if HELDOUT not in parts:
        return MEASURES["forgetting_ce"]
    if len(parts) > 1:
        return "mean of held-out text's and source answers' cross-entropy increase (nats/token)"
    return "held-out text's cross-entropy increase (nats/token)"


def saturation(runs: pd.DataFrame, column: str) -> str | None:
    """``ceiling`` or ``floor`` where ``column`` is saturated in ``runs`` (see the module docstring), ``unmeasured``
    where no run has it and its ceiling, ``no range`` where every ceiling is 0 (the base model knew nothing of the
    source tasks by this measure), else None: the measure grades these runs."""
    ceiling = f"{column}_ceiling"
    if column not in runs or ceiling not in runs:
        return "unmeasured"
    measured = runs[[column, ceiling]].dropna()
    if measured.empty:
        return "unmeasured"
    if (measured[ceiling] <= 0).all():
        return "no range"  # the base model scored 0: nothing to forget
    share = measured[column] / measured[ceiling]
    if (share >= SATURATION).all():
        return "ceiling"
    if (share <= 1 - SATURATION).all():
        return "floor"
    return None


@dataclass(frozen=True)
class Choice:
    """The measure a verdict uses (None: every measure saturated or unmeasured) and why the others were passed by."""

    measure: str | None
    states: dict[str, str | None]
    """Measure -> its :func:`saturation` in the runs compared."""
    names: dict[str, str]
    """Measure -> what it measures in these runs (:func:`names`)."""

    def text(self) -> str:
        """``by per-character accuracy drop (exact-match accuracy drop saturated at its ceiling ...)``."""
        passed = [
            f"{self.names[column]} {_state(state)}"
            for column, state in self.states.items()
            if column != self.measure and state in ("ceiling", "floor")
        ]
        reason = f" ({'; '.join(passed)})" if passed else ""
        if self.measure is None and all(state == "unmeasured" for state in self.states.values()):
            return UNMEASURED
        if self.measure is None:
            return f"every forgetting measure is saturated in these runs{reason}"
        return f"by {self.names[self.measure]}{reason}"


def _state(state: str) -> str:
    return {
        "ceiling": f"saturated at its ceiling (every run ≥ {SATURATION:g} of it)",
        "floor": f"saturated at its floor (every run ≤ {1 - SATURATION:.2g} of its ceiling)",
    }[state]


def choose(runs: pd.DataFrame) -> Choice:
    """The first measure of :data:`MEASURES` not saturated in ``runs`` (the runs a verdict compares)."""
    states = {column: saturation(runs, column) for column in MEASURES}
    return Choice(next((column for column, state in states.items() if state is None), None), states, names(runs))
