"""Tiny models and a tiny training loop for the variant tests (no hub access, CPU, seconds)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import torch
from torch import nn
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, PreTrainedModel
from transformers.pytorch_utils import Conv1D

from pathlib import Path

from peft import PeftModel

from lorabench.variants import AdapterSpec, Variant, get
from lorabench.variants._layers import find_targets, layer_shape

VOCAB = 48
TARGETS = {
    "llama": ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
    "gpt2": ("c_attn", "c_proj", "c_fc"),
}
FAMILIES = tuple(TARGETS)
GENERIC_PEFT = {
    "llama": {"peft_type": "LOHA", "alpha": 8},  # LyCORIS methods in PEFT cannot wrap GPT-2's Conv1D
    "gpt2": {"peft_type": "RANDLORA"},
}
"""The ``peft_config`` the generic ``peft`` variant runs with in these tests, per family."""


@pytest.fixture(autouse=True)
def one_torch_thread() -> Iterator[None]:
    """Tiny models run ~10x faster on one thread than fighting over the shared cores; import to enable."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_model(family: str, seed: int = 0) -> PreTrainedModel:
    """The grid's default size: hidden 64, 2 layers, 4 heads (Llama MLP 128, GPT-2 MLP 4 x 64)."""
    torch.manual_seed(seed)
    if family == "llama":
        config = LlamaConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                             num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=64,
                             pad_token_id=0, bos_token_id=1, eos_token_id=2)
        return LlamaForCausalLM(config)
    config = GPT2Config(vocab_size=VOCAB, n_embd=64, n_layer=2, n_head=4, n_positions=64,
                        bos_token_id=1, eos_token_id=2, pad_token_id=0)
    return GPT2LMHeadModel(config)


class OneConv1D(nn.Module):
    """``OneLayer``'s GPT-2 twin: the weight is stored transposed, (n, m)."""

    def __init__(self, m: int, n: int) -> None:
        super().__init__()
        self.layer = Conv1D(nf=m, nx=n)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


def make_spec(family: str, variant: str = "lora", rank: int = 4, **changes: Any) -> AdapterSpec:
    settings = dict(rank=rank, alpha=2.0 * rank, target_modules=TARGETS[family], seed=3,
                    options={"peft_config": GENERIC_PEFT[family]} if variant == "peft" else {})
    return AdapterSpec(**(settings | changes))


def make_variant(family: str, name: str, rank: int = 4, **changes: Any) -> Variant:
    return get(name)(make_spec(family, name, rank, **changes))


def token_batch(seed: int = 0, batch: int = 4, length: int = 12) -> dict[str, torch.Tensor]:
    """A fixed batch to memorise: the loss on it must fall under any working adapter."""
    ids = torch.randint(3, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}


def train(variant: Variant, model: torch.nn.Module, steps: int = 30, lr: float = 1e-2) -> list[float]:
    """The lead's loop in miniature: AdamW on the trainable parameters, ``after_step`` after each step."""
    batch = token_batch()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    losses = []
    for _ in range(steps):
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        variant.after_step(model, optimizer)
        losses.append(loss.item())
    return losses


def target_shapes(model: torch.nn.Module, targets: tuple[str, ...]) -> list[tuple[int, int]]:
    """``(m, n)`` of every layer a variant with these targets adapts, read from the unadapted model."""
    return [layer_shape(layer) for _, layer in find_targets(model, targets)]


def assert_saved_adapter_reproduces(family: str, name: str, directory: Path, **tolerance: float) -> None:
    """Train a few steps, save, reload onto a fresh base with ``PeftModel``: the logits must match."""
    variant = make_variant(family, name)
    model = variant.apply(tiny_model(family))
    train(variant, model, steps=5)
    variant.save(model, directory)
    reloaded = PeftModel.from_pretrained(tiny_model(family), str(directory))
    batch = token_batch()
    model.eval()  # GPT-2 has dropout
    reloaded.eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**batch).logits, model(**batch).logits, **tolerance)
