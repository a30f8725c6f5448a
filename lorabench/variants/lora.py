"""LoRA (Hu et al., 2021): our own implementation, saved in PEFT's format so PEFT can load it."""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn
from transformers.pytorch_utils import Conv1D

from lorabench.variants import register
from lorabench.variants._layers import (
    AdapterLayer,
    adapter_layers,
    fusable,
    layer_shape,
    low_rank_linear,
    merge_adapters,
    wrap_targets,
)
from lorabench.variants._peft import lora_config
from lorabench.variants.base import Variant


class LoRALayer(AdapterLayer):
    """``base(x) + (alpha/r) B A x`` with PEFT's layout: ``lora_A`` (r, n) kaiming-uniform, ``lora_B`` (m, r) zero."""

    def __init__(
        self, base_layer: nn.Module, rank: int, scale: float, dropout: float, generator: torch.Generator
    ) -> None:
        super().__init__(base_layer)
        m, n = layer_shape(base_layer)
        weight = base_layer.weight
        lora_A = torch.empty(rank, n)  # drawn on the CPU: the same numbers whatever device the model is on
        nn.init.kaiming_uniform_(lora_A, a=math.sqrt(5), generator=generator)
        self.lora_A = nn.Parameter(lora_A.to(weight))
        self.lora_B = nn.Parameter(torch.zeros(m, rank, dtype=weight.dtype, device=weight.device))
        self.scale = scale
        self.dropout = nn.Dropout(dropout) if dropout else nn.Identity()
        self.fused = not dropout and fusable(base_layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fused:  # no pass over the activations beyond the two skinny products (lorabench/cost.py measures it)
            return low_rank_linear(x, self.base_layer, self.lora_A, self.lora_B, self.scale)
        # Scaling the r-wide intermediate instead of the m-wide output (as PEFT does) saves a pass.
        return self.base_layer(x) + F.linear(F.linear(self.dropout(x), self.lora_A) * self.scale, self.lora_B)

    def delta_weight(self) -> torch.Tensor:
        return self.scale * (self.lora_B @ self.lora_A)


@register("lora")
class LoRA(Variant):
    source = "Hu et al. 2021 (own implementation; saves PEFT's adapter format)"
    unstackable = None

    def apply(self, model: nn.Module) -> nn.Module:
        generator = torch.Generator().manual_seed(self.spec.seed)
        scale = self.spec.alpha / self.spec.rank
        return wrap_targets(
            model, self.spec, lambda _, layer: LoRALayer(layer, self.spec.rank, scale, self.spec.dropout, generator)
        )

    def merge(self, model: nn.Module) -> nn.Module:
        return merge_adapters(model)

    def save(self, model: nn.Module, directory: Path) -> None:
        """PEFT's files and key names (``adapter_model.safetensors``, ``adapter_config.json``), so that
        ``PeftModel.from_pretrained`` loads it."""
        layers = adapter_layers(model)
        tensors = {
            f"base_model.model.{name}.{factor}.weight": getattr(layer, factor).detach().contiguous().cpu()
            for name, layer in layers
            for factor in ("lora_A", "lora_B")
        }
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        save_file(tensors, directory / "adapter_model.safetensors", metadata={"format": "pt"})
        fan_in_fan_out = any(isinstance(layer.base_layer, Conv1D) for _, layer in layers)
        lora_config(self.spec, fan_in_fan_out=fan_in_fan_out).save_pretrained(str(directory))

    @classmethod
    def trainable_parameters(cls, m: int, n: int, r: int) -> int:
        return r * (m + n)
