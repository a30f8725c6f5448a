"""Frozen-A LoRA (docs/variants.md §4, LoRA-FA): train B only, A stays at its random init."""

from __future__ import annotations

from peft import LoraConfig, PeftModel

from lorabench.variants import register
from lorabench.variants._peft import PeftVariant, lora_config, lora_factors


@register("frozen_a")
class FrozenA(PeftVariant):
    source = "docs/variants.md §4; Zhang et al. 2023 (LoRA-FA); PEFT LoRA with lora_A frozen"

    def peft_config(self) -> LoraConfig:
        return lora_config(self.spec)

    def prepare(self, model: PeftModel) -> None:
        for lora_A, _ in lora_factors(model):
            lora_A.requires_grad_(False)

    @classmethod
    def trainable_parameters(cls, m: int, n: int, r: int) -> int:
        return m * r
