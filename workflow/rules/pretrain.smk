rule pretrain:
    """Build an embedded model from its transformers config and teach it the source tasks."""
    output:
        directory("results/models/{model}"),
    wildcard_constraints:
        model=model_wildcard("architecture"),
    params:
        # tracked params (functions of the wildcards only): a changed setting or code edit re-runs the job
        settings=pretrain_settings,
        code=pretrain_code(),
    log:
        "results/logs/pretrain/{model}.log",
    benchmark:
        "results/benchmarks/pretrain/{model}.tsv"
    threads: config["threads"]  # capped by --cores; on the command line only, so no rerun follows it
    shell:
        "lorabench pretrain --settings {params.settings:q} --threads {threads} --out {output} > {log} 2>&1"
