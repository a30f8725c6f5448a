from lorabench.report import report_flags


rule cost:
    """Step time and memory of every variant of the grid at each of its ranks on a real model's layer shapes, beside
    the frozen forward+backward floor and PEFT's LoRA, interleaved (lorabench/cost.py); one job for the whole grid."""
    output:
        report("reports/cost_real_shapes.csv", **report_flags("cost_real_shapes.csv")),
    log:
        "results/logs/cost.log",
    benchmark:
        "results/benchmarks/cost.tsv"
    threads: config["threads"]  # capped by --cores; on the command line only, so no rerun follows it
    resources:
        gpu=config["resources"]["gpus_per_train_job"],
    params:
        # tracked: a changed cost setting, grid variant or their code re-runs the stage
        settings=stages.cost_job(GRID, config["device"]).to_json(),
        code=stages.cost_job_code(GRID),
    shell:
        "lorabench cost --settings {params.settings:q} --out {output:q} --threads {threads} > {log} 2>&1"
