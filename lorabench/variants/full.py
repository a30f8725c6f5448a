"""Full fine-tuning: the baseline every adapter is measured against (all parameters train)."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from lorabench.variants import register
from lorabench.variants.base import Variant


@register("full")
class Full(Variant):
    source = "full fine-tuning baseline (every parameter, embeddings and norms included)"
    unstackable = (
        "stacked, its gradients are summed in another order than alone (its layers are several autograd "
        "steps): float rounding that a long run grows into different results"
    )
    uses_rank = False

    def apply(self, model: nn.Module) -> nn.Module:
        return model.requires_grad_(True)

    def merge(self, model: nn.Module) -> nn.Module:
        return model

    def save(self, model: nn.Module, directory: Path) -> None:
        model.save_pretrained(str(directory))

    @classmethod
    def trainable_parameters(cls, m: int, n: int, r: int) -> int:
        return m * n  # the weight of one bias-free layer; a real model trains all of its parameters
