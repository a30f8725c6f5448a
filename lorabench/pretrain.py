"""Pretraining of an embedded model on the source tasks, so fine-tuning has abilities to destroy."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from lorabench.evaluation.exact_match import accuracy
from lorabench.job import PretrainJob
from lorabench.models import build_embedded, character_tokenizer
from lorabench.tasks.algorithmic import AlgorithmicTask
from lorabench.train import TrainSettings, train


def embedded_tasks(names: list[str], data: dict[str, Any]) -> list[AlgorithmicTask]:
    sizes = (data["train"], data["validation"], data["test"])
    return [AlgorithmicTask(name, data["seed"], sizes, data["min_len"], data["max_len"]) for name in names]


def pretrain(job: PretrainJob, out_dir: Path, threads: int | None = None) -> dict[str, float]:
    """Build, pretrain on the mixture of source tasks, save like a hub checkpoint; returns test accuracies."""
    if threads:
        torch.set_num_threads(threads)
    device = torch.device("cpu")
    tokenizer = character_tokenizer()
    model = build_embedded(job.architecture, tokenizer, job.seed)
    tasks = embedded_tasks(job.source_tasks, job.data)
    mixture = [example for task in tasks for example in task.split("train")]
    outcome = train(model, tokenizer, mixture, TrainSettings(**job.train), job.seed, device, description="pretrain")
    if outcome.divergence is not None:  # every train job would fine-tune a broken model: stop the grid here
        raise RuntimeError(f"pretraining diverged at step {outcome.divergence.step}: {outcome.divergence.reason}")
    tokenizer.padding_side = "left"
    scores = {
        task.name: accuracy(model, tokenizer, task, task.split("test"), job.eval_batch_size, device) for task in tasks
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    summary = {
        "source_accuracy": scores,
        "train_seconds": outcome.train_seconds,
        "loss_curve": outcome.losses,
        "settings": job.to_dict(),
    }
    (out_dir / "pretrain.json").write_text(json.dumps(summary, indent=2))
    return scores
