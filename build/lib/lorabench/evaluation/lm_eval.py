"""Forgetting on general benchmarks: lm-evaluation-harness run on the in-memory (possibly PEFT) model.

The model object itself goes to lm-eval's ``HFLM``, so no checkpoint is written between training and
evaluation, and a PEFT model is scored with its adapter (or, inside
:func:`lorabench.evaluation.adapter_disabled`, without it: the "before" number).

Tasks are lm-eval task names (``hellaswag``, ``arc_challenge``, ``winogrande``: the average Biderman
et al., 2024 use) or tasks defined in a local folder passed as ``include_path`` (yaml files, whose
``dataset_path: json`` + ``dataset_kwargs: {data_files: ...}`` read local data with no hub access).

The reported number per task is its *main metric*: the first of :data:`MAIN_METRICS` that the task
reports, i.e. ``acc_norm`` (length-normalised accuracy: HellaSwag, ARC) where the task has it, else ``acc``
(WinoGrande), else ``exact_match`` (generative tasks such as GSM8K, first filter lm-eval lists).
"""

from __future__ import annotations

import copy
import random
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch
from torch import nn

MAIN_METRICS = ("acc_norm", "acc", "exact_match")


def lm_eval_scores(
    model: nn.Module,
    tokenizer,
    tasks: list[str],
    include_path: str | None,
    limit: int | None,
    batch_size: int,
    device: str,
) -> dict[str, float]:
    """Main metric of each lm-eval task in ``tasks`` for ``model`` as it is now (task -> score in [0, 1]).

    ``limit`` caps the examples per task (``None``: all). ``model`` is moved to ``device`` and left in the
    train/eval mode it came in. Seeds are lm-eval's fixed defaults, so repeated calls agree; lm-eval
    reseeds the global generators, so their states are restored afterwards and training resumes the
    random stream it would have had without the evaluation.
    """
    from lm_eval import simple_evaluate  # deferred: lm_eval imports take seconds
    from lm_eval.models.huggingface import HFLM

    was_training = model.training
    model.to(device)
    try:
        with _global_rng_preserved():
            # HFLM may set or add a pad token; a copy keeps the caller's tokenizer as training uses it.
            harness_model = HFLM(pretrained=model, tokenizer=copy.deepcopy(tokenizer), batch_size=batch_size)
            output = simple_evaluate(
                model=harness_model,
                tasks=list(tasks),
                task_manager=_task_manager(tasks, include_path),
                limit=limit,
                log_samples=False,
                bootstrap_iters=0,
            )
    finally:
        model.train(was_training)
    return {task: main_metric(task, output["results"][task]) for task in tasks}


def main_metric(task: str, result: dict[str, object]) -> float:
    """The first of :data:`MAIN_METRICS` in one task's lm-eval result (keys look like ``acc,none``)."""
    for metric in MAIN_METRICS:
        for key, value in result.items():
            if key.split(",")[0] == metric:
                return float(value)
    raise ValueError(f"lm-eval task {task!r} reports none of {MAIN_METRICS}: {sorted(result)}")


@contextmanager
def _global_rng_preserved() -> Iterator[None]:
    """Restore Python's, numpy's and torch's (CPU and CUDA) global generators after the block."""
    python_state, numpy_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=range(torch.cuda.device_count())):
        try:
            yield
        finally:
            random.setstate(python_state)
            np.random.set_state(numpy_state)


def _task_manager(tasks: list[str], include_path: str | None):
    """A TaskManager that skips indexing lm-eval's own ~14k task files when ``include_path`` has them all."""
    from lm_eval.tasks import TaskManager

    if include_path is not None:
        local = TaskManager(include_path=include_path, include_defaults=False)
        if set(tasks) <= set(local.all_tasks):
            return local
    return TaskManager(include_path=include_path)
