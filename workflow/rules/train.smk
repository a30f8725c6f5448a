rule train:
    """One job: the grid points of one model that share the axes config `jobs.batch` leaves out (by default one seed)."""
    input:
        checkpoint=checkpoint_input,  # none for `path` models
        data=data_input,  # tasks with a `generator`
        files=local_input,  # local data files, held-out texts, paraphrase pairs: an edit re-runs the jobs reading them
    output:
        job_outputs(),
    log:
        job_file("logs", ".log"),
    benchmark:
        job_file("benchmarks", ".tsv")
    threads: config["threads"]  # capped by --cores; on the command line only, so no rerun follows it
    resources:
        gpu=config["resources"]["gpus_per_train_job"],
    params:
        # tracked params (functions of the wildcards only): a changed setting or code edit re-runs exactly its jobs
        job=train_job,
        code=train_code,
    shell:
        # --inputs: finished records are kept under results/kept (never deleted by Snakemake) and restored when the
        # job re-runs after an interrupt or failure with the same settings, code and inputs (lorabench/kept.py)
        "lorabench train --job {params.job:q} --threads {threads} --inputs {input:q} > {log} 2>&1"
