from lorabench.provenance import report_code
from lorabench.report import DESCRIPTION, REPORT_ITEMS


report: "../report/workflow.rst"  # the report's first page: the questions and this run's answers (figures rule)


rule aggregate:
    """All records into one tidy table (one row per run), the loss curves (one row per logged step) and the
    trajectories (one row per evaluation during training)."""
    input:
        records=job_records(),  # the first of each train job: one target per job keeps large grids quick
        listing=RECORD_LIST,  # every record, read by the command
    output:
        results=reported("results.csv"),
        curves="reports/loss_curves.csv",
        trajectories="reports/trajectories.csv",
    log:
        "results/logs/aggregate.log",
    benchmark:
        "results/benchmarks/aggregate.tsv"
    params:
        code=report_code(),  # tracked: an edit to the aggregation or report code re-draws, without re-training
    shell:
        "lorabench aggregate @{input.listing:q} --out reports > {log} 2>&1"


rule figures:
    """Seaborn figures with 95% CIs over seeds, the Monte Carlo checks of the variants' maths, summary.md and the
    answers in brief that the report's first page includes."""
    input:
        rules.aggregate.output,
        cost=rules.cost.output if config["cost"]["enabled"] else [],  # the cost stage's table, where it runs
    output:
        [reported(name) for name in REPORT_ITEMS if name not in ("results.csv", "cost_real_shapes.csv")],
        f"reports/{DESCRIPTION}",
    log:
        "results/logs/figures.log",
    benchmark:
        "results/benchmarks/figures.tsv"
    params:
        code=report_code(),
        # for the training share: training seconds / (cores x pipeline wall); read from the settings, not
        # workflow.cores, which raises under `snakemake --report` (no --cores there, and no job runs)
        cores=workflow.resource_settings.cores,
        cost=lambda wildcards, input: f"--cost {input.cost}" if input.cost else "",
    shell:
        "lorabench report --out reports --benchmarks results/benchmarks --cores {params.cores} {params.cost} > {log} 2>&1"
