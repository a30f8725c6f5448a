"""LoRA+ (Hayou et al., 2024): LoRA whose B factor learns ``lr_ratio`` times faster than A, via PEFT's LoRA."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import nn

from lorabench.variants import register
from lorabench.variants.peft_lora import PeftLoRA


@dataclass(frozen=True)
class LoRAPlusOptions:
    lr_ratio: float = field(
        default=16.0,
        metadata={
            "help": "lora_B's learning rate over lora_A's; 16 = 2^4, the paper's recommendation for fine-tuning "
            "language models (Hayou et al. 2024, section 4)"
        },
    )

    def __post_init__(self) -> None:
        if self.lr_ratio <= 0:
            raise ValueError(f"lr_ratio must be positive, got {self.lr_ratio}")


@register("loraplus")
class LoRAPlus(PeftLoRA):
    source = "Hayou et al. 2024, LoRA+ (PEFT LoRA; lora_B at lr_ratio x the lr, option lr_ratio, default 16)"
    Options = LoRAPlusOptions

    def parameter_groups(self, model: nn.Module, lr: float) -> list[dict[str, Any]]:
        """Every ``lora_B`` at ``lr_ratio * lr``, every other trainable parameter (A, a new head and its bias) at
        ``lr``.

        PEFT's ``create_loraplus_optimizer`` puts 1-D parameters (a head's bias) at ``lr_ratio * lr`` too, a side
        effect of grouping by dimension; the paper's argument concerns the two factors only, and keeping every
        other parameter at ``lr`` trains a new head alike under every LoRA-like variant (docs/variants.md §1)."""
        trainable = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
        return [
            {"params": [p for name, p in trainable if "lora_B" not in name], "lr": lr},
            {"params": [p for name, p in trainable if "lora_B" in name], "lr": self.options.lr_ratio * lr},
        ]
