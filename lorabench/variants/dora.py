"""DoRA (Liu et al., 2024): LoRA on the direction plus a trainable per-output magnitude, via PEFT."""

from __future__ import annotations

from lorabench.variants import register
from lorabench.variants.peft_lora import PeftLoRA


@register("dora")
class DoRA(PeftLoRA):
    source = "Liu et al. 2024, weight-decomposed LoRA (PEFT use_dora)"
    unstackable = (
        "stacked, its gradients are summed in another order than alone (its layers are several autograd "
        "steps): float rounding that a long run grows into different results"
    )
    config_overrides = {"use_dora": True}

    @classmethod
    def trainable_parameters(cls, m: int, n: int, r: int) -> int:
        return r * (m + n) + m  # + the magnitude vector, one entry per output
