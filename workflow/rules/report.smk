FIGURES = {
    "accuracy_vs_rank": "Accuracy",
    "forgetting_vs_accuracy": "Forgetting",
    "params_vs_accuracy": "Accuracy",
    "loss_curves": "Training",
    "cost": "Cost",
    "status": "Runs",
    "theory": "Theory",
}


rule aggregate:
    """All records into one tidy table (one row per run) and the loss curves (one row per logged step)."""
    input:
        sorted({point.record for point in GRID.points()}),
    output:
        results=report("reports/results.csv", caption="../report/results.rst", category="Tables"),
        curves="reports/loss_curves.csv",
    log:
        "results/logs/aggregate.log",
    shell:
        "lorabench aggregate {input:q} --out reports > {log} 2>&1"


rule figures:
    """Seaborn figures with 95% CIs over seeds, the Monte Carlo checks of MATH.md, and summary.md."""
    input:
        rules.aggregate.output,
    output:
        [
            report(f"reports/{name}.png", caption=f"../report/{name}.rst", category=category)
            for name, category in FIGURES.items()
        ],
        summary=report("reports/summary.md", caption="../report/summary.rst", category="Tables"),
    log:
        "results/logs/figures.log",
    shell:
        "lorabench report --out reports > {log} 2>&1"
