"""LoRA through PEFT's own implementation: the reference the other LoRA-family variants are compared with."""

from __future__ import annotations

from typing import Any, ClassVar

from peft import LoraConfig

from lorabench.variants import register
from lorabench.variants._peft import PeftVariant, lora_config


@register("peft_lora")
class PeftLoRA(PeftVariant):
    source = "Hu et al. 2021 (PEFT LoraConfig)"
    config_overrides: ClassVar[dict[str, Any]] = {}
    """LoraConfig settings that turn plain LoRA into a relative (rsLoRA, DoRA, PiSSA)."""

    def peft_config(self) -> LoraConfig:
        return lora_config(self.spec, **self.config_overrides)

    @classmethod
    def trainable_parameters(cls, m: int, n: int, r: int) -> int:
        return r * (m + n)
