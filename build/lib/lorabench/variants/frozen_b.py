"""Frozen-B LoRA (docs/variants.md §4, the reverse arm of Zhu et al. 2024): train A from zero, B frozen random."""

from __future__ import annotations

import math

from peft import LoraConfig, PeftModel
from torch import nn

from lorabench.variants import register
from lorabench.variants._peft import PeftVariant, lora_config, lora_factors


@register("frozen_b")
class FrozenB(PeftVariant):
    source = "docs/variants.md §4; Zhu et al. 2024 (asymmetry of LoRA factors); PEFT LoRA with lora_B frozen"

    def peft_config(self) -> LoraConfig:
        return lora_config(self.spec)

    def prepare(self, model: PeftModel) -> None:
        for lora_A, lora_B in lora_factors(model):
            nn.init.zeros_(lora_A)
            # Uniform(+-1/sqrt(m)), i.e. A's usual law transposed: B B^T then has the same spectrum as
            # frozen_a's A^T A, so both arms take equally large steps at the same learning rate.
            nn.init.kaiming_uniform_(lora_B, a=math.sqrt(5), mode="fan_out")
            lora_B.requires_grad_(False)

    @classmethod
    def trainable_parameters(cls, m: int, n: int, r: int) -> int:
        return r * n
