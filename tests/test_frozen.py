"""Frozen-A and frozen-B LoRA (docs/variants.md §4): the frozen factor never moves, the other one learns."""

from __future__ import annotations

import pytest
import torch
from variants_fixtures import FAMILIES, make_variant, one_torch_thread, tiny_model, train  # noqa: F401

from lorabench.variants._peft import lora_factors


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize(("name", "frozen", "trained"), [("frozen_a", 0, 1), ("frozen_b", 1, 0)])
def test_frozen_factor_stays_bit_identical_through_training(family: str, name: str, frozen: int, trained: int) -> None:
    variant = make_variant(family, name)
    model = variant.apply(tiny_model(family))
    before = [tuple(f.detach().clone() for f in pair) for pair in lora_factors(model)]
    train(variant, model, steps=5)
    after = list(lora_factors(model))
    assert len(after) == len(before) > 0
    for old, new in zip(before, after, strict=True):
        assert torch.equal(old[frozen], new[frozen])
        assert not new[frozen].requires_grad
        assert not torch.equal(old[trained], new[trained])


def test_frozen_b_starts_from_zero_a_and_a_random_b_with_a_transposed_spectrum() -> None:
    """B ~ U(+-1/sqrt(m)): B B^T then has frozen_a's A^T A spectrum, so the arms take equal steps."""
    model = make_variant("llama", "frozen_b").apply(tiny_model("llama"))
    for lora_A, lora_B in lora_factors(model):
        m = lora_B.shape[0]
        assert not lora_A.any()
        assert 0.9 / m**0.5 < lora_B.abs().max() <= 1 / m**0.5
