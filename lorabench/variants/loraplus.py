"""LoRA+ (Hayou et al., 2024): LoRA whose B factor learns ``lr_ratio`` times faster than A, via PEFT's LoRA."""

from __future__ import annotations

from typing import Any

from torch import nn

from lorabench.variants import register
from lorabench.variants.peft_lora import PeftLoRA

DEFAULT_LR_RATIO = 16.0
"""The paper's recommended ratio lambda = 2^4 for fine-tuning language models (Hayou et al. 2024, section 4)."""


@register("loraplus")
class LoRAPlus(PeftLoRA):
    source = "Hayou et al. 2024, LoRA+ (PEFT LoRA; lora_B at lr_ratio x the lr, option lr_ratio, default 16)"

    def parameter_groups(self, model: nn.Module, lr: float) -> list[dict[str, Any]]:
        """Every ``lora_B`` at ``lr_ratio * lr``, every other trainable parameter (A, a new head) at ``lr``."""
        trainable = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
        ratio = float(self.spec.options.get("lr_ratio", DEFAULT_LR_RATIO))
        return [
            {"params": [p for name, p in trainable if "lora_B" not in name], "lr": lr},
            {"params": [p for name, p in trainable if "lora_B" in name], "lr": ratio * lr},
        ]
