"""Stacked against lone training (config ``jobs.stack``) on a slice of the default grid: one job's learning-rate
sweep of our LoRA (4 runs: its batched layer) and of frozen_a (3 runs: PEFT's layers, skinny products per member),
run both ways in one process, interleaved.

Figures, not assertions on time: ``pytest tests/benchmarks/test_bench_stack.py --benchmark-enable -s`` prints, per
mode, the training throughput (run-steps per second of the training loops, their mid-training evaluations left out)
and the evaluation throughput (mid-training evaluations of a run per second), and stacked/lone ratios. The seconds
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


def _job(checkpoint: Path, variant: str, steps: int, stacked: bool, data: dict) -> TrainJob:
    """The variant's sweep (:func:`sweep`) as one job of the default grid's settings."""
    return tiny_job(
        checkpoint,
        [(variant, 4, "shift", lr, 0) for lr in sweep(variant)],
        device=DEVICE,
        alpha=8,
        target_modules=TARGETS,
        source_tasks=["copy", "reverse", "sort"],
        data=data,
        eval_batch_size=640,
        train={
            "steps": steps,
            "batch_size": 64,
            "log_every": 10,
            "eval_at": [steps // 3, 2 * steps // 3],
            "replay": 0.05,
        },
        stack=stacked,
    )


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
    spent = {mode: [0.0, 0.0] for mode in ("lone", "stacked")}
    for round_ in range(rounds):
        for mode in ("lone", "stacked"):
            job = _job(checkpoint, variant, steps, mode == "stacked", data)
            (folder := tmp_path / f"{mode}{round_}").mkdir()
            with contextlib.chdir(folder):  # where the job's records go
                runner.run_job(job)
                records = [json.loads(Path(point.record).read_text()) for point in job.points]
            assert all(record["status"] == "ok" for record in records), [r["error"] for r in records]
            for index, value in enumerate(seconds(records)):
                spent[mode][index] += value
    runs, evaluations = rounds * len(job.points), rounds * len(job.points) * len(job.train.eval_at)
    throughput = {mode: (runs * steps / train, evaluations / evaluate) for mode, (train, evaluate) in spent.items()}
    figures = {
        "variant": variant,
        "device": DEVICE,
        "members": len(job.points),
        "steps": steps,
        "rounds": rounds,
        "run_steps_per_second": {mode: train for mode, (train, _) in throughput.items()},
        "evaluations_per_second": {mode: evaluate for mode, (_, evaluate) in throughput.items()},
        "training_ratio": throughput["stacked"][0] / throughput["lone"][0],
        "evaluation_ratio": throughput["stacked"][1] / throughput["lone"][1],
    }
    print(
        f"\n{len(job.points)} {variant} runs x {steps} steps on {DEVICE}, {rounds} interleaved rounds: stacked/lone "
        f"training {figures['training_ratio']:.2f}x, evaluation {figures['evaluation_ratio']:.2f}x",
        {key: figures[key] for key in ("run_steps_per_second", "evaluations_per_second")},
    )
    if out := os.environ.get("LORABENCH_BENCH_OUT"):
        Path(out).write_text(json.dumps(figures, indent=2))
    assert all(math.isfinite(value) and value > 0 for value in figures["run_steps_per_second"].values())
