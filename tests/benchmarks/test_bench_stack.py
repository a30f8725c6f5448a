"""Stacked against lone training (config ``jobs.stack``) on a slice of the default grid: one job's learning-rate
sweep of our LoRA (4 runs: its batched layer) and of frozen_a (3 runs: PEFT's layers, skinny products per member),
run both ways in one process, interleaved.

Figures, not assertions on time: ``pytest tests/benchmarks/test_bench_stack.py --benchmark-enable -s`` prints, per
mode, the training throughput (run-steps per core-second: CPU time of the training loops, their mid-training
evaluations left out) and the evaluation throughput (evaluated runs per core-second), and stacked/lone ratios.
CPU time on one torch thread (``time.process_time``), so other load on the machine slows both modes alike. By
default (``--benchmark-disable``) it runs a few steps once, as a smoke test.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from lorabench import runner, stack
from lorabench.job import TrainJob
from lorabench.models import build_embedded, character_tokenizer
from tests.jobs import job_runs
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


class CpuTimes:
    """CPU seconds spent in the training loops (their evaluations left out) and in evaluations."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.train = self.evaluate = self._evaluate_in_training = 0.0
        self._training = False
        monkeypatch.setattr(runner, "train", self._timed(runner.train, training=True))
        monkeypatch.setattr(stack, "train_stack", self._timed(stack.train_stack, training=True))
        monkeypatch.setattr(runner, "evaluate_members", self._timed(runner.evaluate_members, training=False))

    def _timed(self, function: Callable, training: bool) -> Callable:
        def timed(*args, **kwargs):
            self._training |= training
            start = time.process_time()
            try:
                return function(*args, **kwargs)
            finally:
                spent = time.process_time() - start
                if training:
                    self.train += spent
                    self._training = False
                else:
                    self.evaluate += spent
                    self._evaluate_in_training += spent if self._training else 0.0

        return timed

    def training(self) -> float:
        return self.train - self._evaluate_in_training


def _job(checkpoint: Path, variant: str, steps: int, stacked: bool, data: dict) -> TrainJob:
    return TrainJob.from_dict(
        {
            "model": "llama-tiny",
            "checkpoint": str(checkpoint),
            "dtype": "float32",
            "device": "cpu",
            "alpha": 8,
            "dropout": 0.0,
            "target_modules": TARGETS,
            "source_tasks": ["copy", "reverse", "sort"],
            "hub_tasks": {},
            "forgetting": {},
            "variant_modules": [],
            "save_adapters": False,
            "data": data,
            "eval_batch_size": 640,
            "train": {
                "steps": steps,
                "batch_size": 64,
                "weight_decay": 0.0,
                "log_every": 10,
                "eval_at": [steps // 3, 2 * steps // 3],
                "replay": 0.05,
            },
            **job_runs(
                "llama-tiny", [(variant, 4, "shift", lr, 0) for lr in SWEEPS[variant]], optimizers={variant: "adamw"}
            ),
            "stack": stacked,
        }
    )


@pytest.mark.parametrize("variant", list(SWEEPS))
def test_stacked_training_throughput(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, variant: str
) -> None:
    """Printed (``-s``), not asserted: run-steps (training) and evaluated runs (evaluation) per core-second."""
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
            with monkeypatch.context() as patch:
                times = CpuTimes(patch)
                (folder := tmp_path / f"{mode}{round_}").mkdir()
                with contextlib.chdir(folder):  # where the job's records go
                    runner.run_job(_job(checkpoint, variant, steps, mode == "stacked", data))
            spent[mode][0] += times.training()
            spent[mode][1] += times.evaluate
    runs = rounds * len(SWEEPS[variant])
    evaluations = runs * 3  # two during training, one after
    throughput = {mode: (runs * steps / train, evaluations / evaluate) for mode, (train, evaluate) in spent.items()}
    print(
        f"\n{runs // rounds} {variant} runs x {steps} steps, {rounds} interleaved rounds, one thread: run-steps per "
        f"core-second (training), evaluated runs per core-second (evaluation):",
        {mode: (round(train, 1), round(evaluate, 2)) for mode, (train, evaluate) in throughput.items()},
        f"stacked/lone: training {throughput['stacked'][0] / throughput['lone'][0]:.2f}x, "
        f"evaluation {throughput['stacked'][1] / throughput['lone'][1]:.2f}x",
    )
    assert all(seconds > 0 for pair in spent.values() for seconds in pair)
