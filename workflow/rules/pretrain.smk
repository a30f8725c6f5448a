rule pretrain:
    """Build an embedded model from its transformers config and teach it the source tasks."""
    output:
        directory("results/models/{model}"),
    wildcard_constraints:
        model=GRID.model_wildcard("architecture"),
    params:
        settings=lambda wildcards, threads: json.dumps(GRID.pretrain_settings(wildcards.model, threads)),
    log:
        "results/logs/pretrain/{model}.log",
    benchmark:
        "results/benchmarks/pretrain/{model}.tsv"
    threads: 1
    shell:
        "lorabench pretrain --settings {params.settings:q} --out {output} > {log} 2>&1"
