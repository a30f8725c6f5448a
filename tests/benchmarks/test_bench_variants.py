"""Step time and peak memory of every variant, beside PEFT's LoRA and the frozen forward+backward floor.

Figures, not assertions on time: ``pytest tests/benchmarks --benchmark-enable`` measures; by default
(``--benchmark-disable``) every benchmark runs once as a smoke test. Every step is the cost stage's
(:mod:`lorabench.cost`): built by its :func:`~lorabench.cost.adapted` and :func:`~lorabench.cost.make_step` (the
variant's declared optimizer over its parameter groups, its gradient and step hooks, gradients of the parameters
and of the input cleared after every step), on one CPU thread. pytest-benchmark times each step alone, in sequence;
on a shared machine add ``--benchmark-timer=time.process_time`` and trust :func:`test_step_time_targets`, which runs
the cost stage itself (interleaved rounds until each target ratio is decided, or its cap) and prints its verdicts on
the targets of :data:`lorabench.cost_targets.TARGETS`, the README's. The memory check is deterministic (allocation
sizes, not timings), so it does assert the docs/variants.md target: resampled peaks near LoRA, far below full
fine-tuning.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace

import pandas as pd
import pytest
import torch
import yaml
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM

from lorabench import stages
from lorabench.checks import load_grid
from lorabench.cost import (
    SHAPE_SETS,
    Candidate,
    adapted,
    base_block,
    block_inputs,
    floor_candidate,
    make_step,
    measure_shape_set,
    peak_of_step,
    variant_candidate,
)
from lorabench.job import GridVariant
from lorabench.report.summary import section_cost_targets
from lorabench.variants import get
from tests.pipeline import SMOKE
from tests.variants_fixtures import one_torch_thread  # noqa: F401  (autouse: tiny steps run best on one thread)

RANK = 8
LAYER = "square-1024"
"""One 1024x1024 layer, the cost stage's shape set of that name."""
TOKENS = 512
LLAMA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
VARIANTS = [
    "peft_lora",
    "lora",
    "additive",
    "resampled",
    "frozen_a",
    "frozen_b",
    "rslora",
    "dora",
    "pissa",
    "vera",
    "flora",
    "relora",
    "peft",
    "full",
]
OPTIONS = {"peft": {"peft_config": {"peft_type": "LOHA"}}}
STEPS = 1000
"""The variants' ``total_steps``: more than any benchmark takes, so no schedule ends inside one."""
Step = Callable[[], None]


def entry(name: str) -> GridVariant:
    """``name`` as the cost stage measures it: its declared optimizer (``Variant.optimizer``), else AdamW."""
    return GridVariant(name, name, OPTIONS.get(name, {}), get(name).optimizer or "adamw", (), (RANK,))


def layer_candidate(name: str) -> Candidate:
    """``name`` (or the floor) on one 1024x1024 layer at 512 tokens, its input requiring grad as inside a network."""
    base = base_block(SHAPE_SETS[LAYER], torch.device("cpu"), torch.float32)
    inputs, upstream = block_inputs(SHAPE_SETS[LAYER], TOKENS, next(base.parameters()))
    if name == "floor":
        return floor_candidate(base, inputs, upstream)
    candidate = variant_candidate(entry(name), RANK, "grid", base, inputs, upstream, 2 * RANK, STEPS)
    assert candidate.step is not None, candidate.reason
    return candidate


def small_llama() -> LlamaForCausalLM:
    """Bigger than the test models so adapter costs show, small enough for one CPU thread."""
    torch.manual_seed(0)
    return LlamaForCausalLM(
        LlamaConfig(
            vocab_size=256,
            hidden_size=256,
            intermediate_size=512,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=4,
            max_position_embeddings=128,
        )
    )


def lm_loss(model: nn.Module, batch: torch.Tensor) -> Callable[[dict], list[torch.Tensor]]:
    """``model``'s next-token loss on a fixed batch, as :func:`lorabench.cost.make_step`'s ``forward``: from the
    embeddings given as input (the floor, whose weights take no gradient), else from the tokens."""

    def forward(inputs: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        embeds = {"inputs_embeds": inputs["embeds"]} if inputs else {"input_ids": batch}
        return [model(**embeds, labels=batch).loss]

    return forward


def model_step(name: str) -> Step:
    batch = torch.randint(0, 256, (8, 64), generator=torch.Generator().manual_seed(0))
    if name == "floor":
        frozen = small_llama().requires_grad_(False)
        embeds = frozen.get_input_embeddings()(batch).detach().requires_grad_()
        return make_step(frozen, {"embeds": embeds}, [torch.ones(())], forward=lm_loss(frozen, batch))
    variant, model, optimizer = adapted(entry(name), RANK, small_llama(), LLAMA_TARGETS, 2 * RANK, STEPS)
    return make_step(model, {}, [torch.ones(())], optimizer, variant, forward=lm_loss(model, batch))


@pytest.mark.parametrize("name", ["floor", *VARIANTS])
def test_bench_layer_step(benchmark, name: str) -> None:
    benchmark.group = f"one layer 1024x1024, {TOKENS} tokens, r={RANK}"
    benchmark.pedantic(layer_candidate(name).step, rounds=10, warmup_rounds=2)


@pytest.mark.parametrize("name", ["floor", *VARIANTS])
def test_bench_model_step(benchmark, name: str) -> None:
    benchmark.group = f"llama hidden 256 x 2 layers, batch 8 x 64, r={RANK}"
    benchmark.pedantic(model_step(name), rounds=5, warmup_rounds=1)


def peak_step_mib(name: str) -> float:
    """Peak of memory allocated during one first step (activations, grads, optimizer state, temporaries), from
    torch.profiler's memory timeline as the cost stage reads it; weights that exist before the step are not in it."""
    return peak_of_step(layer_candidate(name).step, torch.device("cpu"), profile_cpu=True) / 2**20


def test_resampled_step_memory_stays_near_lora_and_far_below_full() -> None:
    peaks = {name: peak_step_mib(name) for name in ("floor", "peft_lora", "lora", "resampled", "full")}
    print("\npeak MiB of one step, one 1024x1024 layer:", json.dumps({k: round(v, 2) for k, v in peaks.items()}))
    assert peaks["resampled"] <= 1.1 * peaks["lora"]
    assert peaks["full"] > peaks["lora"] + 3 * 1024 * 1024 * 4 / 2**20  # grad + two Adam moments of W


def test_step_time_targets(request: pytest.FixtureRequest) -> None:
    """The cost stage on one 1024x1024 layer at ranks 8 and 64, with its configured rounds (the schema's
    defaults; the smoke grid's two rounds and cap when benchmarks are disabled): its targets table, printed
    (``-s``), not asserted."""
    config = yaml.safe_load(SMOKE.read_text())
    if not request.config.getoption("benchmark_disable"):
        del config["cost"]
    job = replace(
        stages.cost_job(load_grid(config), "cpu"),
        target_ranks=[64],
        variants=tuple(entry(name) for name in ("additive", "resampled")),
    )
    table = pd.DataFrame(measure_shape_set(LAYER, TOKENS, job, torch.device("cpu")))
    print("\n" + "\n".join(section_cost_targets(table.assign(stage_seconds=0.0))))
    assert (table.loc[table["status"] == "ok", "step_ms"] > 0).all()
