"""Train jobs built by hand, for tests that call the runner without a grid."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from lorabench.variants import get

Run = tuple[str, int, str, float, int]
"""A run of a hand-built job: (variant, rank, task, lr, seed)."""


def job_runs(
    model: str,
    runs: Iterable[Run],
    options: Mapping[str, dict[str, Any]] | None = None,
    optimizers: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The ``variants`` and ``points`` of a train job's dict for ``runs``, each variant with its ``options`` and
    with its declared optimizer (else AdamW) unless ``optimizers`` names one. The records go to the grid's paths
    under the working directory (``lorabench.grid.RECORD``): run such a job inside the test's own folder
    (``contextlib.chdir``)."""
    runs, options, optimizers = list(runs), options or {}, optimizers or {}
    names = dict.fromkeys(variant for variant, *_ in runs)
    variants = {
        name: {
            "name": name,
            "uses": name,
            "options": options.get(name, {}),
            "optimizer": optimizers.get(name, get(name).optimizer or "adamw"),
            "lrs": list(dict.fromkeys(lr for variant, _, _, lr, _ in runs if variant == name)),
            "ranks": list(dict.fromkeys(rank for variant, rank, *_ in runs if variant == name)),
        }
        for name in names
    }
    points = [
        {"model": model, "task": task, "variant": variant, "rank": rank, "lr": lr, "seed": seed}
        for variant, rank, task, lr, seed in runs
    ]
    return {"variants": variants, "points": points}
