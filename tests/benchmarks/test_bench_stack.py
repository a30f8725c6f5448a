"""Stacked against lone training (config ``jobs.stack``) on a slice of the default grid: one job's learning-rate
sweep of our LoRA (4 runs: its batched layer) and of frozen_a (3 runs: PEFT's layers, skinny products per member),
run both ways in one process, interleaved.

Figures, not assertions on time: ``pytest tests/benchmarks/test_bench_stack.py --benchmark-enable -s`` prints, per
mode, the training throughput (run-steps per second of the training loops, their mid-training evaluations left out)
and the evaluation throughput (mid-training evaluations of a run per second), and stacked/lone ratios. A third mode,
*widened*, is what sharing every per-call cost gives with the lone run's own operations: one run trained on the
members' rows together (a batch that many times larger) and one model evaluating every row once per member. Only the
arithmetic grows with the members there; each kernel launch, Python call per layer and optimizer step is paid once,
and those are all a stack shares. Widened near 1x says the step is bound by its arithmetic, which stacking does not
reduce; a stack can beat widened a little only where its operations differ from the lone run's (a batched
low-rank product in place of one per layer). The seconds
are the records' own (``timing.train_seconds``, ``timing.eval_seconds``: wall-clock, CUDA-synchronised on a GPU; a
stack's member records the whole stack's), so other load on a shared CPU slows both modes alike only because the
rounds interleave. By default (``--benchmark-disable``) it runs a few steps once, as a smoke test.

``LORABENCH_BENCH_DEVICE`` (default ``cpu``) and ``LORABENCH_BENCH_MEMBERS`` (default: the default grid's sweeps)
choose where it trains and how many learning rates, log-spaced, a stack holds; ``LORABENCH_BENCH_OUT`` names a JSON
file for the figures. ``.ci/gpu-check`` runs it on CUDA with a stack of 24.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from pathlib import Path
from typing import Any

import pytest
import torch

from lorabench import runner
from lorabench.job import TrainJob
from lorabench.models import build_embedded, character_tokenizer
from tests.jobs import tiny_job
from tests.variants_fixtures import one_torch_thread  # noqa: F401  (autouse)

LLAMA_TINY = {
    "family": "llama",
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "max_position_embeddings": 32,
}
"""workflow/config/default.yaml's model, its tasks, data sizes and training settings below (fewer steps)."""
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
SWEEPS = {"lora": [0.001, 0.003, 0.01, 0.03], "frozen_a": [0.01, 0.03, 0.1]}
"""The default grid's learning rates of each variant."""


DEVICE = os.environ.get("LORABENCH_BENCH_DEVICE", "cpu")
MEMBERS = int(os.environ.get("LORABENCH_BENCH_MEMBERS", "0"))


def sweep(variant: str) -> list[float]:
    """The variant's learning rates: the default grid's, or :data:`MEMBERS` of them log-spaced over its range (4
    significant digits, so each names its own record)."""
    low, high = min(SWEEPS[variant]), max(SWEEPS[variant])
    if MEMBERS <= 1:
        return SWEEPS[variant]
    return [float(f"{low * (high / low) ** (i / (MEMBERS - 1)):.4g}") for i in range(MEMBERS)]


def seconds(records: list[dict[str, Any]]) -> tuple[float, float]:
    """(training, mid-training evaluation) seconds of one job's records: a stack's members each hold the whole
    stack's (``timing.stacked_members``), lone runs their own."""
    if records[0]["timing"].get("stacked_members"):
        return records[0]["timing"]["train_seconds"], records[0]["timing"]["eval_seconds"]
    return (sum(r["timing"]["train_seconds"] for r in records), sum(r["timing"]["eval_seconds"] for r in records))


def _job(
    checkpoint: Path, variant: str, steps: int, stacked: bool, data: dict, lrs: list[float], batch_size: int = 64
) -> TrainJob:
    """The variant at ``lrs`` as one job of the default grid's settings."""
    return tiny_job(
        checkpoint,
        [(variant, 4, "shift", lr, 0) for lr in lrs],
        device=DEVICE,
        alpha=8,
        target_modules=TARGETS,
        source_tasks=["copy", "reverse", "sort"],
        data=data,
        eval_batch_size=640,
        train={
            "steps": steps,
            "batch_size": batch_size,
            "log_every": 10,
            "eval_at": [steps // 3, 2 * steps // 3],
            "replay": 0.05,
        },
        stack=stacked,
    )


def mid_training(job: TrainJob) -> list[int]:
    """The step counts after which each of ``job``'s runs evaluates mid-training."""
    return [steps for steps in job.train.eval_at if steps < job.train.steps]


def _records(job: TrainJob, folder: Path) -> list[dict[str, Any]]:
    """Run ``job`` with its records written under ``folder``; its records, each ``ok``."""
    folder.mkdir()
    with contextlib.chdir(folder):
        runner.run_job(job)
        records = [json.loads(Path(point.record).read_text()) for point in job.points]
    assert all(record["status"] == "ok" for record in records), [r["error"] for r in records]
    return records


def widened_seconds(job: TrainJob, members: int, folder: Path) -> tuple[float, float]:
    """(training, mid-training evaluation) seconds of the widened mode (module docstring) for ``members``: ``job``,
    one point with ``members`` times the batch, whose every evaluation generates each row once per member (the
    stacked evaluation's own function, :func:`lorabench.runner.evaluate_members`, given one model ``members`` times),
    of the model as its training left it, as a lone run's and a stack's evaluations are."""

    def widened(job: TrainJob, model: torch.nn.Module, *rest: Any) -> runner.Evaluation:
        return runner.evaluate_members(job, model, [model] * members, *rest)[0]

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(runner, "_evaluate", widened)
        return seconds(_records(job, folder))


@pytest.mark.parametrize("variant", ["lora"] if MEMBERS else list(SWEEPS))
def test_stacked_training_throughput(request: pytest.FixtureRequest, tmp_path: Path, variant: str) -> None:
    """Printed (``-s``), not asserted: run-steps (training) and mid-training evaluations per second, both modes."""
    enabled = request.config.getoption("benchmark_enable") or not request.config.getoption("benchmark_disable")
    rounds, steps = (2, 60) if enabled else (1, 3)
    data = {"seed": 0, "train": 3000, "validation": 64, "test": 128, "min_len": 3, "max_len": 5}
    data |= {} if enabled else {"train": 200, "validation": 8, "test": 8}
    tokenizer, checkpoint = character_tokenizer(), tmp_path / "model"
    build_embedded(LLAMA_TINY, tokenizer, seed=0).save_pretrained(checkpoint)
    tokenizer.save_pretrained(checkpoint)
    lrs, spent = sweep(variant), {mode: [0.0, 0.0] for mode in ("lone", "stacked", "widened")}
    for round_ in range(rounds):
        for mode in ("lone", "stacked"):
            job = _job(checkpoint, variant, steps, mode == "stacked", data, lrs)
            for index, value in enumerate(seconds(_records(job, tmp_path / f"{mode}{round_}"))):
                spent[mode][index] += value
        widened = _job(checkpoint, variant, steps, False, data, lrs[:1], batch_size=64 * len(lrs))
        for index, value in enumerate(widened_seconds(widened, len(lrs), tmp_path / f"widened{round_}")):
            spent["widened"][index] += value
    runs, evaluations = rounds * len(lrs), rounds * len(lrs) * len(mid_training(job))
    throughput = {mode: (runs * steps / train, evaluations / evaluate) for mode, (train, evaluate) in spent.items()}
    ratios = {
        f"{mode}_{measure}_ratio": throughput[mode][index] / throughput["lone"][index]
        for mode in ("stacked", "widened")
        for index, measure in enumerate(("training", "evaluation"))
    }
    figures = {
        "variant": variant,
        "device": DEVICE,
        "members": len(lrs),
        "steps": steps,
        "rounds": rounds,
        "run_steps_per_second": {mode: train for mode, (train, _) in throughput.items()},
        "evaluations_per_second": {mode: evaluate for mode, (_, evaluate) in throughput.items()},
        "training_ratio": ratios.pop("stacked_training_ratio"),
        "evaluation_ratio": ratios.pop("stacked_evaluation_ratio"),
    } | ratios
    print(
        f"\n{len(lrs)} {variant} runs x {steps} steps on {DEVICE}, {rounds} interleaved rounds: stacked/lone "
        f"training {figures['training_ratio']:.2f}x, evaluation {figures['evaluation_ratio']:.2f}x; widened "
        f"{figures['widened_training_ratio']:.2f}x, {figures['widened_evaluation_ratio']:.2f}x",
        {key: figures[key] for key in ("run_steps_per_second", "evaluations_per_second")},
    )
    if out := os.environ.get("LORABENCH_BENCH_OUT"):
        Path(out).write_text(json.dumps(figures, indent=2))
    assert all(math.isfinite(value) and value > 0 for value in figures["run_steps_per_second"].values())
