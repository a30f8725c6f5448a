"""Step time and peak memory of every variant, beside PEFT's LoRA and the frozen forward+backward floor.

Figures, not assertions on time: ``pytest tests/benchmarks --benchmark-enable`` measures; by default
(``--benchmark-disable``) every benchmark runs once as a smoke test. Timings use one CPU thread; on a
shared machine add ``--benchmark-timer=time.process_time`` (CPU time, blind to waiting for a core)
and trust :func:`test_step_time_ratios`, which interleaves the variants it compares. The memory
check is deterministic (allocation sizes, not timings), so it does assert the docs/variants.md target:
resampled peaks near LoRA, far below full fine-tuning.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable

import pytest
import torch
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM

from lorabench.cost import peak_of_step
from lorabench.variants import AdapterSpec, get
from lorabench.variants.base import OneLayer
from tests.variants_fixtures import one_torch_thread  # noqa: F401  (autouse: tiny steps run best on one thread)

RANK = 8
LAYER = (1024, 1024)
TOKENS = (4, 128)
LLAMA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
VARIANTS = ["peft_lora", "lora", "additive", "resampled", "frozen_a", "frozen_b", "rslora", "dora", "pissa", "vera",
            "peft", "full"]
OPTIONS = {"peft": {"peft_config": {"peft_type": "LOHA"}}}
Step = Callable[[], None]




def small_llama() -> LlamaForCausalLM:
    """Bigger than the test models so adapter costs show, small enough for one CPU thread."""
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(vocab_size=256, hidden_size=256, intermediate_size=512, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=128))


def adapted(name: str, model: nn.Module, targets: tuple[str, ...]) -> tuple[nn.Module, Callable]:
    variant = get(name)(AdapterSpec(rank=RANK, alpha=2 * RANK, target_modules=targets, options=OPTIONS.get(name, {})))
    return variant.apply(model), variant.after_step


def training_step(model: nn.Module, after_step: Callable, loss: Callable[[nn.Module], torch.Tensor]) -> Step:
    """Forward, backward, AdamW step and the variant's hook: what one step of the real loop costs."""
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)

    def step() -> None:
        loss(model).backward()
        optimizer.step()
        optimizer.zero_grad()
        after_step(model, optimizer)

    return step


def layer_step(name: str) -> Step:
    """One (1024 x 1024) layer on 512 tokens; its input requires grad as inside a network."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(*TOKENS, LAYER[1], generator=generator, requires_grad=True)
    upstream = torch.randn(*TOKENS, LAYER[0], generator=generator)
    layer_loss = lambda model: (model(x) * upstream).sum()
    if name == "floor":
        frozen = OneLayer(*LAYER).requires_grad_(False)
        return lambda: layer_loss(frozen).backward()
    return training_step(*adapted(name, OneLayer(*LAYER), ("layer",)), layer_loss)


def model_step(name: str) -> Step:
    batch = torch.randint(0, 256, (8, 64), generator=torch.Generator().manual_seed(0))
    if name == "floor":
        frozen = small_llama().requires_grad_(False)

        def floor() -> None:
            embeds = frozen.get_input_embeddings()(batch).requires_grad_()
            frozen(inputs_embeds=embeds, labels=batch).loss.backward()

        return floor
    model, after_step = adapted(name, small_llama(), LLAMA_TARGETS)
    return training_step(model, after_step, lambda m: m(input_ids=batch, labels=batch).loss)


@pytest.mark.parametrize("name", ["floor", *VARIANTS])
def test_bench_layer_step(benchmark, name: str) -> None:
    benchmark.group = f"one layer {LAYER[0]}x{LAYER[1]}, {TOKENS[0] * TOKENS[1]} tokens, r={RANK}"
    benchmark.pedantic(layer_step(name), rounds=10, warmup_rounds=2)


@pytest.mark.parametrize("name", ["floor", *VARIANTS])
def test_bench_model_step(benchmark, name: str) -> None:
    benchmark.group = f"llama hidden 256 x 2 layers, batch 8 x 64, r={RANK}"
    benchmark.pedantic(model_step(name), rounds=5, warmup_rounds=1)


def peak_step_mib(step: Step) -> float:
    """Peak of memory allocated during one first step (activations, grads, optimizer state, temporaries), from
    torch.profiler's memory timeline as the cost stage reads it; weights that exist before the step are not in it."""
    return peak_of_step(step, torch.device("cpu"), profile_cpu=True) / 2**20


def test_resampled_step_memory_stays_near_lora_and_far_below_full() -> None:
    peaks = {name: peak_step_mib(layer_step(name)) for name in ("floor", "peft_lora", "lora", "resampled", "full")}
    print("\npeak MiB of one step, one 1024x1024 layer:", json.dumps({k: round(v, 2) for k, v in peaks.items()}))
    assert peaks["resampled"] <= 1.1 * peaks["lora"]
    assert peaks["full"] > peaks["lora"] + 3 * LAYER[0] * LAYER[1] * 4 / 2**20  # grad + two Adam moments of W


def test_step_time_ratios(request: pytest.FixtureRequest) -> None:
    """Best-of-N CPU time per layer step, variants interleaved so load swings hit them alike.

    Targets: lora <= 1.05 x peft_lora, additive <= lora. Printed (``-s``), not asserted.
    """
    rounds = 1 if request.config.getoption("benchmark_disable") else 30
    steps = {name: layer_step(name) for name in ("floor", "peft_lora", "lora", "additive", "resampled")}
    best = dict.fromkeys(steps, math.inf)
    for _ in range(rounds):
        for name, step in steps.items():
            start = time.process_time()
            step()
            best[name] = min(best[name], time.process_time() - start)
    ratios = {"lora/peft_lora": best["lora"] / best["peft_lora"], "additive/lora": best["additive"] / best["lora"],
              "resampled/lora": best["resampled"] / best["lora"]}
    print("\nbest ms:", {k: round(v * 1e3, 2) for k, v in best.items()}, "ratios:",
          {k: round(v, 3) for k, v in ratios.items()})
    assert all(v > 0 for v in best.values())
