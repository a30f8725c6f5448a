"""One pipeline job: a few grid points that share a model, variant, rank and learning rate.

Each grid point loads its model afresh, is measured, and writes its own record as soon as it ends.
A grid point that raises or diverges is recorded with that status instead of stopping the job, so
one bad run never takes the grid down and finished runs are never lost.
"""

from __future__ import annotations

import logging
import traceback
from pathlib import Path
from typing import Any

import torch

from lorabench import records
from lorabench.devices import device_info, select_device
from lorabench.evaluation.exact_match import accuracy
from lorabench.evaluation.weights import weight_forgetting
from lorabench.models import load, target_weights
from lorabench.pretrain import embedded_tasks
from lorabench.tasks.base import Task
from lorabench.train import TrainOutcome, TrainSettings, encode_batch, train
from lorabench.variants import AdapterSpec, get

log = logging.getLogger(__name__)


def run_job(job: dict[str, Any]) -> None:
    """Run every grid point of ``job`` (built by ``lorabench.config.train_job``)."""
    if job.get("threads"):
        torch.set_num_threads(job["threads"])
    device = select_device(job["device"])
    tasks = {task.name: task for task in embedded_tasks(job["source_tasks"] + job["target_tasks"], job["data"])}
    before = _base_accuracies(job, tasks, device)
    for point in job["points"]:
        record = run_point(job, point, tasks, before, device)
        records.write(record, Path(point["record"]))
        log.info("%s: %s", record["run_id"], record["status"])


def _base_accuracies(job: dict[str, Any], tasks: dict[str, Task], device: torch.device) -> dict[str, float]:
    """Test accuracy of the base model on every task, measured once per job (it is the same for all points).

    Also runs one forward and backward pass, so one-time start-up allocations (autograd engine,
    kernels' workspaces) land before the first grid point's measured training, not inside it.
    """
    model, tokenizer = load(job["checkpoint"], dtype=getattr(torch, job["dtype"]))
    model.to(device)
    examples = tasks[job["target_tasks"][0]].split("train")[: job["train"]["batch_size"]]
    model(**encode_batch(tokenizer, examples, device)).loss.backward()
    return {
        name: accuracy(model, tokenizer, task, task.split("test"), job["eval_batch_size"], device)
        for name, task in tasks.items()
    }


def run_point(
    job: dict[str, Any], point: dict[str, Any], tasks: dict[str, Task], before: dict[str, float], device: torch.device
) -> dict[str, Any]:
    """Train one grid point and return its record; exceptions become a ``failed`` record."""
    record = _empty_record(job, point, before, device)
    try:
        _train_and_measure(job, point, tasks, device, record)
    except Exception:  # recorded, not raised: one broken run must not take the rest of the grid down
        record["status"] = "failed"
        record["error"] = traceback.format_exc(limit=-8)
        log.exception("%s failed", record["run_id"])
    return record


def _train_and_measure(
    job: dict[str, Any], point: dict[str, Any], tasks: dict[str, Task], device: torch.device, record: dict[str, Any]
) -> None:
    model, tokenizer = load(job["checkpoint"], dtype=getattr(torch, job["dtype"]))
    torch.manual_seed(point["seed"])
    spec = AdapterSpec(
        rank=job["rank"], alpha=job["alpha"], target_modules=tuple(job["target_modules"]),
        seed=point["seed"], dropout=job["dropout"], options=job["variant_options"],
    )
    variant = get(job["uses"])(spec)
    model = variant.apply(model).to(device)
    record["parameters"] = {
        "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "total": sum(p.numel() for p in model.parameters()),
    }
    target = tasks[point["task"]]
    settings = TrainSettings(lr=point["lr"], **job["train"])
    outcome = train(
        model, tokenizer, target.split("train"), settings, point["seed"], device,
        after_step=variant.after_step, description=record["run_id"],
    )
    _record_training(record, outcome)
    if outcome.status != "ok":
        return
    evaluate = lambda task, split: accuracy(model, tokenizer, task, task.split(split), job["eval_batch_size"], device)
    record["target"]["accuracy_after"] = evaluate(target, "test")
    record["extra"]["validation_accuracy"] = evaluate(target, "validation")
    for name in job["source_tasks"]:
        after = evaluate(tasks[name], "test")
        record["source"][name]["accuracy_after"] = after
        record["forgetting"]["per_task"][name] = record["source"][name]["accuracy_before"] - after
    per_task = record["forgetting"]["per_task"].values()
    record["forgetting"]["mean"] = sum(per_task) / len(per_task) if per_task else None
    record["extra"] |= _weight_forgetting(job, variant.merge(model))


def _weight_forgetting(job: dict[str, Any], merged: torch.nn.Module) -> dict[str, float]:
    """Intruder dimensions and effective rank of dW, averaged over the adapted layers (see evaluation.weights)."""
    base, _ = load(job["checkpoint"], dtype=getattr(torch, job["dtype"]))
    tuned = target_weights(merged, job["target_modules"])
    measured = weight_forgetting(target_weights(base, job["target_modules"]), {k: v.cpu() for k, v in tuned.items()})
    return {key: measured[key] for key in ("intruder_dimensions_mean", "delta_effective_rank_mean")}


def _record_training(record: dict[str, Any], outcome: TrainOutcome) -> None:
    record["status"] = outcome.status
    record["loss_curve"] = {"step": outcome.steps, "loss": [_finite_or_none(x) for x in outcome.losses]}
    record["timing"] = {
        "method": outcome.clock.method,
        "train_seconds": outcome.train_seconds,
        **outcome.clock.summary(),
        "steps_done": len(outcome.clock.step_seconds),
    }
    record["memory"] = {"method": outcome.memory.method, "peak_mb": outcome.peak_mb,
                        "baseline_mb": outcome.memory.baseline_mb}


def _finite_or_none(value: float) -> float | None:
    return value if value == value and abs(value) != float("inf") else None


def _empty_record(
    job: dict[str, Any], point: dict[str, Any], before: dict[str, float], device: torch.device
) -> dict[str, Any]:
    grid = {"model": job["model"], "task": point["task"], "variant": job["variant"], "rank": job["rank"],
            "lr": point["lr"], "seed": point["seed"]}
    return {
        "schema_version": records.SCHEMA_VERSION,
        "run_id": "{model}/{task}/{variant}/r{rank}/lr{lr:g}/seed{seed}".format(**grid),
        "status": "failed",
        "error": None,
        "grid": grid,
        "hyperparameters": {
            key: job[key] for key in ("uses", "alpha", "dropout", "target_modules", "variant_options", "train",
                                      "data", "checkpoint", "dtype", "eval_batch_size")
        },
        "parameters": {"trainable": None, "total": None},
        "timing": {"method": "perf_counter", "train_seconds": None, "step_ms_median": None, "step_ms_mean": None,
                   "steps_done": 0},
        "memory": {"method": "cpu_peak_rss", "peak_mb": None, "baseline_mb": None},
        "loss_curve": {"step": [], "loss": []},
        "target": {"task": point["task"], "accuracy_before": before[point["task"]], "accuracy_after": None},
        "source": {name: {"accuracy_before": before[name], "accuracy_after": None} for name in job["source_tasks"]},
        "forgetting": {"mean": None, "per_task": {}},
        "extra": {},
        "environment": records.environment(device_info(device)),
    }
