"""Train jobs built by hand, and the tiny model they train, for tests that call the runner without a grid."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from lorabench.job import TrainJob
from lorabench.models import build_embedded, character_tokenizer
from lorabench.variants import get

TINY_LLAMA = {
    "family": "llama",
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "num_key_value_heads": 2,
    "max_position_embeddings": 32,
}
"""The one-block Llama the runner's tests train (built and saved in well under a second)."""

Run = tuple[str, int, str, float, int]
"""A run of a hand-built job: (variant, rank, task, lr, seed)."""


def job_runs(
    model: str,
    runs: Iterable[Run],
    options: Mapping[str, dict[str, Any]] | None = None,
    optimizers: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The ``variants`` and ``points`` of a train job's dict for ``runs``, each variant with its ``options`` and
    with its declared optimizer (else AdamW) unless ``optimizers`` names one, without its sweep, as
    :func:`lorabench.stages.unswept` gives it. The records go to the grid's paths under the working directory
    (``lorabench.job.RECORD``): run such a job inside the test's own folder (``contextlib.chdir``)."""
    runs, options, optimizers = list(runs), options or {}, optimizers or {}
    variants = {
        name: {
            "name": name,
            "uses": name,
            "options": options.get(name, {}),
            "optimizer": optimizers.get(name, get(name).optimizer or "adamw"),
            "lrs": [],
            "ranks": [],
        }
        for name in dict.fromkeys(variant for variant, *_ in runs)
    }
    points = [
        {"model": model, "task": task, "variant": variant, "rank": rank, "lr": lr, "seed": seed}
        for variant, rank, task, lr, seed in runs
    ]
    return {"variants": variants, "points": points}


def tiny_checkpoint(folder: Path) -> Path:
    """:data:`TINY_LLAMA` (seed 0) and the character tokenizer, saved as a checkpoint in ``folder``."""
    tokenizer = character_tokenizer()
    build_embedded(TINY_LLAMA, tokenizer, seed=0).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def tiny_job(
    checkpoint: Path, runs: Iterable[Run], options: Mapping[str, dict[str, Any]] | None = None, **settings: Any
) -> TrainJob:
    """A train job of ``runs`` (:func:`job_runs`) on the tiny checkpoint, on the CPU in float32; ``settings`` replace
    the job's fields (``train`` and ``data`` are merged into these small ones)."""
    job = {
        "model": "llama",
        "checkpoint": str(checkpoint),
        "dtype": "float32",
        "device": "cpu",
        "alpha": 4,
        "dropout": 0.0,
        "target_modules": ["q_proj", "v_proj", "down_proj"],
        "source_tasks": ["copy", "reverse"],
        "hub_tasks": {},
        "forgetting": {},
        "variant_modules": [],
        "save_adapters": False,
        "eval_batch_size": 8,
        "stack": False,
    }
    data = {"seed": 0, "train": 32, "validation": 4, "test": 6, "min_len": 3, "max_len": 5} | settings.pop("data", {})
    train = {"steps": 3, "batch_size": 8, "weight_decay": 0.0, "log_every": 1, "eval_at": [], "replay": 0.0}
    train |= settings.pop("train", {})
    return TrainJob.from_dict(job | settings | {"data": data, "train": train} | job_runs("llama", runs, options))
