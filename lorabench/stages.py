"""What each rule of the workflow runs, built from the grid: a train job, a pretrain job, the cost stage, and the
hashes of the code each runs (the rules' tracked params, so an edit re-runs exactly the jobs that run it).

``workflow/rules/*.smk`` call these; :mod:`lorabench.grid` only expands the config, and :mod:`lorabench.job`
holds the jobs' types.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path

from lorabench.grid import Grid
from lorabench.job import CostJob, Forgetting, GridVariant, JobTraining, PretrainJob, TrainJob
from lorabench.provenance import cost_code, train_code, variant_source_files

JOB_TRAINING = ("steps", "batch_size", "weight_decay", "log_every", "eval_at", "replay")
"""Config ``train`` keys every point of a job shares (:class:`lorabench.job.JobTraining`)."""
COST_SETTINGS = (
    "shapes",
    "rounds",
    "warmup",
    "target_ranks",
    "target_halfwidth",
    "max_rounds",
    "max_seconds",
    "profile_cpu_peak",
)
"""Config ``cost`` keys the cost stage reads (:class:`lorabench.job.CostJob`)."""


def train_job(grid: Grid, wildcards: dict[str, str], device: str) -> TrainJob:
    """Everything the train job at ``wildcards`` needs (threads are left out: they change no result)."""
    points = grid.job_points(wildcards)
    model, train = wildcards["model"], grid.config["train"]
    tasks = {point.task for point in points}
    return TrainJob(
        model=model,
        checkpoint=grid.checkpoint(model),
        dtype=grid.dtype(model),
        device=device,
        alpha=train["alpha"],
        dropout=train["dropout"],
        target_modules=tuple(grid.config["models"][model]["target_modules"]),
        source_tasks=tuple(grid.config["tasks"]["source"]),
        hub_tasks={name: fields for name, fields in grid.hub_tasks().items() if name in tasks},
        forgetting=Forgetting.from_dict(grid.config["forgetting"]),
        data=grid.config["data"],
        eval_batch_size=train["eval_batch_size"],
        variant_modules=variant_modules(grid, {point.variant for point in points}),
        save_adapters=train["save_adapters"],
        train=JobTraining(**{key: train[key] for key in JOB_TRAINING} | {"eval_at": tuple(train["eval_at"])}),
        variants={name: unswept(grid.variants()[name]) for name in dict.fromkeys(point.variant for point in points)},
        points=tuple(points),
        stack=grid.config["jobs"]["stack"],
    )


def unswept(variant: GridVariant) -> GridVariant:
    """``variant`` without its sweep (``lrs``, ``ranks``), as a train job carries it: its points carry their own lr and
    rank, so widening the sweep leaves every finished job's settings, and so its runs, as they are."""
    return replace(variant, lrs=(), ranks=())


def variant_modules(grid: Grid, variants: Iterable[str]) -> tuple[str, ...]:
    """The config's ``variant_modules`` that define ``variants`` or their parents (as the config spells them):
    what a job of those variants imports. Only these, so adding a module for a new variant leaves every other
    job's settings, and so its records, as they are."""
    defining = variant_source_files(*(grid.variants()[name].cls for name in variants))
    return tuple(path for path in grid.config["variant_modules"] if Path(path).resolve() in defining)


def train_job_code(grid: Grid, wildcards: dict[str, str]) -> str:
    """Hash of the code the train job at ``wildcards`` runs (its variants' modules among it)."""
    names = sorted({point.variant for point in grid.job_points(wildcards)})
    return train_code(*(grid.variants()[name].cls for name in names))


def cost_job(grid: Grid, device: str) -> CostJob:
    """What the cost stage measures: the config's ``cost`` section and every variant of the grid at its ranks with
    its optimizer and options (its lrs left out: the stage trains at none of them, so a wider sweep re-runs it not)."""
    cost = grid.config["cost"]
    return CostJob(
        **{key: cost[key] for key in COST_SETTINGS},
        device=device,
        alpha=grid.config["train"]["alpha"],
        dtype=grid.config["dtype"],
        variant_modules=grid.config["variant_modules"],
        variants=tuple(replace(variant, lrs=()) for variant in grid.variants().values()),
    )


def cost_job_code(grid: Grid) -> str:
    """Hash of the code the cost stage runs (its module and every grid variant's)."""
    return cost_code(*(variant.cls for variant in grid.variants().values()))


def pretrain_job(grid: Grid, model: str) -> PretrainJob:
    """Everything the pretrain job of an embedded ``model`` needs."""
    pretrain = grid.config["pretrain"]
    return PretrainJob(
        architecture=grid.config["models"][model]["architecture"],
        source_tasks=grid.config["tasks"]["source"],
        data=grid.config["data"],
        seed=pretrain["seed"],
        train={key: pretrain[key] for key in ("steps", "batch_size", "lr")},
        eval_batch_size=grid.config["train"]["eval_batch_size"],
    )
