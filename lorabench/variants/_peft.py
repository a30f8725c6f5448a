"""What every variant built on PEFT's own implementation shares: seeded injection, merging, saving."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig, PeftConfig, PeftModel, get_peft_model
from peft.tuners.lora import LoraLayer
from torch import nn

from lorabench.variants.base import AdapterSpec, Variant


def lora_config(spec: AdapterSpec, **overrides: Any) -> LoraConfig:
    """PEFT's LoraConfig for ``spec``; ``task_type`` stays None so it also wraps single layers (benchmarks)."""
    settings = dict(
        r=spec.rank, lora_alpha=spec.alpha, target_modules=list(spec.target_modules), lora_dropout=spec.dropout
    )
    return LoraConfig(**(settings | overrides))


def lora_factors(model: nn.Module) -> Iterator[tuple[nn.Parameter, nn.Parameter]]:
    """``(lora_A, lora_B)`` weights of every PEFT LoRA layer, for variants that re-initialise or freeze one."""
    for module in model.modules():
        if isinstance(module, LoraLayer):
            for adapter in module.lora_A:
                yield module.lora_A[adapter].weight, module.lora_B[adapter].weight


class PeftVariant(Variant):
    unstackable = None
    """A variant that is one PEFT config; subclasses give the config and, if needed, adjust the fresh model."""

    def peft_config(self) -> PeftConfig:
        raise NotImplementedError

    def prepare(self, model: PeftModel) -> None:
        """Hook run right after injection, under the same seeded RNG (re-initialise, freeze, snapshot)."""

    def apply(self, model: nn.Module) -> PeftModel:
        # PEFT draws its random init from the global RNG: seed a forked copy so runs are reproducible
        # and the caller's RNG stream is left untouched.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.spec.seed)
            peft_model = get_peft_model(model, self.peft_config())
            self.prepare(peft_model)
        return peft_model

    def merge(self, model: PeftModel) -> nn.Module:
        return model.merge_and_unload()

    def save(self, model: PeftModel, directory: Path) -> None:
        model.save_pretrained(str(directory))
