"""rsLoRA (Kalajdzievski, 2023): LoRA scaled by alpha/sqrt(r) instead of alpha/r, via PEFT."""

from __future__ import annotations

from lorabench.variants import register
from lorabench.variants.peft_lora import PeftLoRA


@register("rslora")
class RsLoRA(PeftLoRA):
    source = "Kalajdzievski 2023, rank-stabilised LoRA (PEFT use_rslora)"
    config_overrides = {"use_rslora": True}
