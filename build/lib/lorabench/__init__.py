"""lorabench: a Snakemake benchmark suite for LoRA variants."""

__version__ = "0.1.0"
