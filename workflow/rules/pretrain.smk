rule pretrain:
    """Build an embedded model from its transformers config and teach it the source tasks."""
    output:
        directory("results/models/{model}"),
    log:
        "results/logs/pretrain/{model}.log",
    benchmark:
        "results/benchmarks/pretrain/{model}.tsv"
    wildcard_constraints:
        model=model_wildcard("architecture"),
    threads: config["threads"]  # capped by --cores; on the command line only, so no rerun follows it
    params:
        # tracked params (functions of the wildcards only): a changed setting or code edit re-runs the job
        settings=pretrain_settings,
        code=pretrain_code(),
    shell:
        "lorabench pretrain --settings {params.settings:q} --threads {threads} --out {output} > {log} 2>&1"
