"""Tiny models and a tiny training loop for the variant tests (no hub access, CPU, seconds).

The models, batch and loop are the variant contract's (:mod:`lorabench.contract`), re-exported here.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from peft import PeftModel
from torch import nn
from transformers.pytorch_utils import Conv1D

from lorabench.contract import (  # noqa: F401  (re-exported for the tests)
    FAMILIES,
    GENERIC_PEFT,
    TARGETS,
    VOCAB,
    make_spec,
    tiny_model,
    token_batch,
)
from lorabench.contract import train_steps as train
from lorabench.variants import Variant, get
from lorabench.variants._layers import find_targets, layer_shape


@pytest.fixture(autouse=True)
def one_torch_thread() -> Iterator[None]:
    """Tiny models run ~10x faster on one thread than fighting over the shared cores; import to enable."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class OneConv1D(nn.Module):
    """``OneLayer``'s GPT-2 twin: the weight is stored transposed, (n, m)."""

    def __init__(self, m: int, n: int) -> None:
        super().__init__()
        self.layer = Conv1D(nf=m, nx=n)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


def make_variant(family: str, name: str, rank: int = 4, **changes: Any) -> Variant:
    return get(name)(make_spec(family, name, rank, **changes))


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
