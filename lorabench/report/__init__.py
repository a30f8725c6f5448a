"""The report: figures (``plots``), ``summary.md`` (``summary``) and their Snakemake report entries.

This module stays free of pandas and matplotlib at import time, so the Snakefile can read
:data:`REPORT_ITEMS` without paying for them; :func:`run_report` imports them when it runs.
"""

from __future__ import annotations

from pathlib import Path

REPORT_ITEMS = {
    "accuracy_vs_rank.png": ("Accuracy and forgetting", "accuracy_vs_rank.rst"),
    "forgetting_vs_accuracy.png": ("Accuracy and forgetting", "forgetting_vs_accuracy.rst"),
    "lr_sweep.png": ("Training", "lr_sweep.rst"),
    "params_vs_accuracy.png": ("Accuracy and forgetting", "params_vs_accuracy.rst"),
    "cost.png": ("Cost", "cost.rst"),
    "memory_account.png": ("Cost", "memory_account.rst"),
    "cost_real_shapes.png": ("Cost", "cost_real_shapes.rst"),
    "cost_real_shapes.csv": ("Cost", "cost_real_shapes_table.rst"),
    "loss_curves.png": ("Training", "loss_curves.rst"),
    "status.png": ("Training", "status.rst"),
    "theory.png": ("Theory", "theory.rst"),
    "theory.csv": ("Theory", "theory_table.rst"),
    "results.csv": ("Tables", "results.rst"),
    "summary.md": ("Tables", "summary.rst"),
}
"""Every file :func:`run_report` leaves in the report directory (results.csv from aggregation, cost_real_shapes.csv
from the cost stage)
-> (Snakemake report category, caption file in ``workflow/report/``)."""


def run_report(out_dir: Path, benchmarks: Path | None = None, cores: int | None = None,
               cost: Path | None = None) -> None:
    """CLI entry: ``out_dir``/results.csv, loss_curves.csv and trajectories.csv (where written) -> every figure, theory.csv and summary.md; with
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
    write_summary(results, out_dir / "summary.md", harness, cost_table, trajectories)
