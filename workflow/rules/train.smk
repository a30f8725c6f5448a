wildcard_constraints:
    model=r"[^/]+",
    variant=r"[^/]+",
    task=r"[^/]+",
    rank=r"\d+",
    lr=r"[0-9.e+-]+",
    seed=r"-?\d+",


rule train:
    """One job: the grid points of one model that share the axes config `jobs.batch` leaves out (by default one seed)."""
    input:
        checkpoint=lambda wildcards: GRID.checkpoint_input(wildcards.model),  # none for `path` models
        data=lambda wildcards: GRID.data_input(dict(wildcards)),  # tasks with a `generator`
    output:
        GRID.job_outputs(),
    params:
        # tracked params (functions of the wildcards only): a changed setting or code edit re-runs exactly its jobs
        job=lambda wildcards: json.dumps(GRID.train_job(dict(wildcards), config["device"]), sort_keys=True),
        code=lambda wildcards: GRID.train_code(dict(wildcards)),
    log:
        GRID.job_file("logs", ".log"),
    benchmark:
        GRID.job_file("benchmarks", ".tsv"),
    threads: 1
    resources:
        gpu=config["resources"]["gpus_per_train_job"],
    shell:
        "lorabench train --job {params.job:q} --threads {threads} > {log} 2>&1"
