"""The report: figures (``plots``), ``summary.md`` (``summary``) and their Snakemake report entries.

This module stays free of pandas and matplotlib at import time, so the Snakefile can read
:data:`REPORT_ITEMS` without paying for them; :func:`run_report` imports them when it runs.
"""

from __future__ import annotations

from pathlib import Path

REPORT_ITEMS = {
    "summary.md": ("Answers", "summary.rst", "the answers with their intervals and tests, then every table"),
    "forgetting_vs_accuracy.png": (
        "Learning and forgetting",
        "forgetting_vs_accuracy.rst",
        "learning vs forgetting along each lr sweep",
    ),
    "accuracy_vs_rank.png": ("Learning and forgetting", "accuracy_vs_rank.rst", "target accuracy vs rank"),
    "params_vs_accuracy.png": (
        "Learning and forgetting",
        "params_vs_accuracy.rst",
        "trainable parameters vs target accuracy",
    ),
    "lr_sweep.png": ("Training", "lr_sweep.rst", "validation accuracy vs learning rate: the lr choice"),
    "loss_curves.png": ("Training", "loss_curves.rst", "training loss per step"),
    "status.png": ("Training", "status.rst", "runs by status: ok, diverged, failed"),
    "cost_real_shapes.png": ("Cost", "cost_real_shapes.rst", "step time and peak memory at a real model's layer sizes"),
    "cost_real_shapes.csv": ("Cost", "cost_real_shapes_table.rst", "the cost stage's table"),
    "cost.png": ("Cost", "cost.rst", "the runs' own step time and memory held"),
    "memory_account.png": ("Cost", "memory_account.rst", "memory training holds, by part"),
    "theory.png": ("Theory", "theory.rst", "the variants' maths checked by Monte Carlo"),
    "theory.csv": ("Theory", "theory_table.rst", "numbers behind the theory figure"),
    "results.csv": ("Tables", "results.rst", "every run, one row each"),
}
"""Every file :func:`run_report` leaves in the report directory (results.csv from aggregation, cost_real_shapes.csv
from the cost stage) -> (Snakemake report category, caption file in ``workflow/report/``, what it shows in a few
words: the label the report lists it by). "Answers" sorts first among the report's categories, so the summary is
the first result a reader finds."""
DESCRIPTION = "answers.rst"
"""The answers in brief, written beside summary.md for the report's first page (``workflow/report/workflow.rst``
includes it)."""


def report_flags(name: str) -> dict:
    """Snakemake's ``report()`` arguments for the report item ``name``: its category, caption and labels (the file
    and what it shows, so a category's list says what each item is without opening it)."""
    category, caption, shows = REPORT_ITEMS[name]
    return {"caption": f"../report/{caption}", "category": category, "labels": {"file": name, "shows": shows}}


def run_report(
    out_dir: Path, benchmarks: Path | None = None, cores: int | None = None, cost: Path | None = None
) -> None:
    """CLI entry: ``out_dir``/results.csv, loss_curves.csv and trajectories.csv (where written) -> every figure,
    theory.csv, summary.md and the report's answers in brief (:data:`DESCRIPTION`); with
    ``benchmarks`` (the pipeline's benchmark folder) and ``cores``, summary.md also gets the training share; with
    ``cost`` (the cost stage's CSV), the real-shape cost figure and table, and the cost answers come from it
    (without it, the figure says the stage did not run and the answers use the runs' own timings)."""
    import pandas as pd

    from lorabench.report import plots
    from lorabench.report.harness import read_benchmarks, section_harness
    from lorabench.report.summary import write_summary

    out_dir = Path(out_dir)
    results = pd.read_csv(out_dir / "results.csv")
    loss_curves = pd.read_csv(out_dir / "loss_curves.csv")
    trajectories = pd.read_csv(out_dir / "trajectories.csv") if (out_dir / "trajectories.csv").exists() else None
    for name, draw in {
        "accuracy_vs_rank.png": plots.plot_accuracy_vs_rank,
        "cost.png": plots.plot_cost,
        "memory_account.png": plots.plot_memory_account,
        "params_vs_accuracy.png": plots.plot_params_vs_accuracy,
        "status.png": plots.plot_status,
        "lr_sweep.png": plots.plot_lr_sweep,
    }.items():
        draw(results, out_dir / name)
    plots.plot_loss_curves(plots.curves_of(loss_curves, results), out_dir / "loss_curves.png")
    plots.plot_forgetting_vs_accuracy(results, out_dir / "forgetting_vs_accuracy.png", trajectories)
    plots.plot_theory(plots.theory_table(out_dir / "theory.csv"), out_dir / "theory.png")
    cost_table = pd.read_csv(cost) if cost else None
    plots.plot_cost_real_shapes(cost_table, out_dir / "cost_real_shapes.png")
    harness = section_harness(results, read_benchmarks(benchmarks), cores) if benchmarks else []
    write_summary(results, out_dir / "summary.md", harness, cost_table, out_dir / DESCRIPTION, trajectories)
