"""The exact memory account: bytes of what training holds, counted from tensor storages, not sampled."""

from __future__ import annotations

import gc
from pathlib import Path

import pytest
import torch
from torch import nn

from lorabench import runner
from lorabench.measure import saved_activation_bytes, storage_addresses, variant_state_bytes
from lorabench.models import build_embedded, character_tokenizer
from lorabench.runner import _memory_account
from lorabench.tasks.algorithmic import AlgorithmicTask
from lorabench.train import TrainSettings, longest_batch, train
from lorabench.variants import AdapterSpec, get
from tests.jobs import TINY_LLAMA, tiny_checkpoint, tiny_job
from tests.variants_fixtures import one_torch_thread  # noqa: F401  (autouse)

TOKENS, N_IN, N_OUT = 6, 5, 3


@pytest.mark.parametrize("input_requires_grad", [False, True])
def test_a_linear_layer_saves_its_input_once_and_its_weight_is_not_an_activation(input_requires_grad: bool) -> None:
    """Hand count: the weight's gradient needs the input x (6 x 5 float32 = 120 bytes); the input's gradient needs
    the weight, which is the model's, not an activation. Two views of x (the second call) are one storage."""
    layer = nn.Linear(N_IN, N_OUT)
    x = torch.randn(TOKENS, N_IN, requires_grad=input_requires_grad)
    counted = saved_activation_bytes(layer, lambda: layer(x).sum() + layer(x[:2]).sum())
    assert counted == TOKENS * N_IN * 4


def test_the_activation_batch_is_the_widest_a_step_can_draw_even_from_fewer_examples() -> None:
    rows = [([1] * length, [1] * length) for length in (2, 5, 3)]
    assert [len(ids) for ids, _ in longest_batch(rows, 2)] == [5, 3]
    assert [len(ids) for ids, _ in longest_batch(rows, 4)] == [5, 3, 2, 5]


def account(variant: str, seed: int, optimizer: str = "adamw") -> dict[str, int]:
    """The record's memory account of a short run of ``variant`` on a one-layer Llama, as the runner takes it."""
    tokenizer = character_tokenizer()
    model = build_embedded(TINY_LLAMA, tokenizer, seed=0)
    spec = AdapterSpec(rank=4, alpha=8, target_modules=("q_proj", "v_proj", "down_proj"), seed=seed)
    before = storage_addresses([*model.parameters(), *model.buffers()])
    model = get(variant)(spec).apply(model)
    examples = AlgorithmicTask("sort", seed=0, sizes=(64, 1, 1), min_len=2, max_len=9).split("train")
    settings = TrainSettings(steps=2, batch_size=8, lr=1e-3, optimizer=optimizer)
    outcome = train(model, tokenizer, examples, settings, seed, torch.device("cpu"))
    outcome.account["variant_state"] = variant_state_bytes(model, before)
    return _memory_account(outcome.account)


def test_account_orders_full_above_lora_above_frozen_a_as_their_state_sizes_say() -> None:
    full, lora, frozen_a = (account(variant, seed=0) for variant in ("full", "lora", "frozen_a"))
    for part in ("trainable_parameters", "gradients", "optimizer_state", "total"):
        assert full[part] > lora[part] > frozen_a[part], part
    assert lora["gradients"] == lora["trainable_parameters"]
    assert lora["optimizer_state"] > 2 * lora["trainable_parameters"]  # AdamW: two moments (and a step count)
    assert lora["saved_activations"] > frozen_a["saved_activations"]  # A's gradient needs the layer input


def test_variant_state_counts_buffers_and_frozen_factors_but_no_base_weight() -> None:
    """Resampled holds U0, V0 beside U, V (as large as them); frozen_a holds the frozen A (r x n per layer);
    LoRA, additive (no fold or tile held) and full hold nothing beyond what trains. Layers: q (32x32),
    v (32x32), down (32x64) at rank 4, float32."""
    frozen_a = 4 * (32 + 32 + 64) * 4
    resampled = account("resampled", seed=0, optimizer="sgd")
    assert resampled["variant_state"] == resampled["trainable_parameters"] == 4 * (64 + 64 + 96) * 4
    assert resampled["total"] == sum(value for part, value in resampled.items() if part != "total")
    assert account("frozen_a", seed=0)["variant_state"] == frozen_a
    for variant in ("lora", "additive", "full"):
        assert account(variant, seed=0)["variant_state"] == 0, variant


def test_account_is_the_same_for_every_seed() -> None:
    """Seeds draw different batches (of different widths) and adapter initialisations; the account sees neither."""
    assert account("lora", seed=0) == account("lora", seed=1) == account("lora", seed=0)


def live_tensors() -> tuple[int, int]:
    """Tensors Python can reach, and the bytes of their distinct storages, after a full collection."""
    gc.collect()
    tensors = [o for o in gc.get_objects() if issubclass(type(o), torch.Tensor)]  # type(): no deprecated getattr
    return len(tensors), sum({t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors}.values())


def test_counting_saved_activations_keeps_none_of_them_alive() -> None:
    """A saved output packed as itself would refer back to the graph node saving it: a cycle through C++ that no
    collection frees, holding every saved activation of the counted forward."""
    layer = nn.Linear(N_IN, N_OUT)
    before = live_tensors()
    saved_activation_bytes(layer, lambda: layer(torch.randn(TOKENS, N_IN)).relu().exp().sum())
    assert live_tensors() == before


def test_a_job_leaves_nothing_of_one_grid_point_to_the_next(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every point loads its model afresh; what one point held must be gone when the next starts, else each point
    starts higher than the one before and its measured peak memory depends on its place in the job."""
    checkpoint = tiny_checkpoint(tmp_path / "model")
    monkeypatch.chdir(tmp_path)
    runs = [
        ("lora", 2, "sort", 3e-3, 0),
        ("resampled", 2, "sort", 0.1, 0),
        ("peft_lora", 2, "sort", 3e-3, 1),
        ("full", 0, "sort", 5e-4, 1),
        ("lora", 2, "sort", 3e-3, 1),
    ]
    job = tiny_job(
        checkpoint,
        runs,
        source_tasks=["copy"],
        data={"test": 4},
        train={"steps": 2, "eval_at": [1]},
    )
    after_each: list[tuple[int, int]] = []
    written = runner.records.write
    monkeypatch.setattr(
        runner.records, "write", lambda record, path: (written(record, path), after_each.append(live_tensors()))
    )
    runner.run_job(job)
    assert len(after_each) == len(runs)
    assert after_each[1:] == after_each[:1] * (len(runs) - 1), f"(tensors, bytes) after each point: {after_each}"
