"""Merge-and-restart LoRA (docs/variants.md §5; ReLoRA, Lialin et al. 2023): rank r per episode, rank k r after k
merges.

Every ``merge_every`` optimizer steps each layer's update ``(alpha/r) B A`` is merged into its weight, ``A`` is
drawn afresh, ``B`` set to zero and both factors' optimizer state reset: the outputs are unchanged across a merge
(``B = 0`` afterwards) and the next episode learns a new rank-r update on top. ReLoRA also prunes rather than
resets the optimizer state and warms the learning rate up after each restart; here the state is reset and the
run's schedule kept. Written as a user would: our ``lora`` layers, the ``after_step`` hook and the public helpers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lorabench.variants import adapter_layers, dense_weight, register, reset_optimizer_state, save_adapter_tensors
from lorabench.variants.base import AdapterSpec, OptionError
from lorabench.variants.lora import LoRA


@dataclass(frozen=True)
class ReLoRAOptions:
    merge_every: int = field(
        default=50,
        metadata={
            "help": "merge B A into the weight and restart the factors every this many optimizer steps",
            "period": True,
        },
    )

    def __post_init__(self) -> None:
        if self.merge_every < 1:
            raise OptionError(f"merge_every must be a positive number of steps, not {self.merge_every}", "merge_every")


@register("relora")
class ReLoRA(LoRA):
    source = "docs/variants.md §5; Lialin et al. 2023 (ReLoRA): LoRA merged and restarted every merge_every steps"
    Options = ReLoRAOptions

    def __init__(self, spec: AdapterSpec) -> None:
        super().__init__(spec)
        self.steps = 0
        self.merges = 0
        self.generator = torch.Generator().manual_seed(spec.seed + 1)  # restarts draw apart from the initial A

    def after_step(self, model: nn.Module, optimizer: Any) -> None:
        self.steps += 1
        if self.steps % self.options.merge_every == 0:
            self.restart(model, optimizer)

    @torch.no_grad()
    def restart(self, model: nn.Module, optimizer: Any) -> None:
        """Merge every layer's update into its weight, redraw ``A`` (LoRA's init), zero ``B``, reset their state."""
        for _, layer in adapter_layers(model):
            dense_weight(layer.base_layer).add_(layer.delta_weight())
            fresh = torch.empty_like(layer.lora_A, device="cpu")
            nn.init.kaiming_uniform_(fresh, a=math.sqrt(5), generator=self.generator)
            layer.lora_A.copy_(fresh)
            layer.lora_B.zero_()
            reset_optimizer_state(optimizer, (layer.lora_A, layer.lora_B))
        self.merges += 1

    def save(self, model: nn.Module, directory: Path) -> None:
        """The target layers' weights (earlier episodes merged in) and the current factors: PEFT's format would hold
        only the last episode's update."""
        tensors = {
            f"{name}.{key}": tensor
            for name, layer in adapter_layers(model)
            for key, tensor in (("weight", layer.base_layer.weight), ("lora_A", layer.lora_A), ("lora_B", layer.lora_B))
        }
        save_adapter_tensors(
            directory,
            tensors,
            self.name,
            self.spec,
            merge_every=self.options.merge_every,
            merges=self.merges,
            scale=self.spec.alpha / self.spec.rank,
        )

    def record_extra(self, model: nn.Module) -> dict[str, float]:
        return {"merges": float(self.merges)}
