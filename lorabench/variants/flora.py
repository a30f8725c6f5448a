"""Random-projection gradient compression (docs/variants.md §5; Flora, Hao et al. 2024; cf. GaLore): no adapter.

The target layers' own weights train. Before each optimizer step each one's gradient ``G`` (m, n) is replaced by
``(G P) P^T`` for a random ``P`` (n, r) with i.i.d. N(0, 1/r) entries, so ``E[P P^T] = I_n`` and the expected
plain-SGD step is full SGD's, ``-lr G``, while each step has rank at most ``r``. ``P`` is redrawn every
``resample_every`` steps. Written as a user would, through the contract only: ``optimizer = "sgd"`` (AdamW's
normalisation would make the step biased), the ``transform_gradients`` hook, and the public helpers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from lorabench.variants import find_targets, layer_shape, register, save_adapter_tensors
from lorabench.variants.base import AdapterSpec, OptionError, Variant


def draw_projection(n: int, r: int, generator: torch.Generator, like: torch.Tensor) -> torch.Tensor:
    """``P`` (n, r), N(0, 1/r) entries, drawn on the CPU (the same numbers on every device): ``E[P P^T] = I_n``."""
    return (torch.randn(n, r, generator=generator) * r**-0.5).to(like)


def dense_gradient(layer: nn.Module) -> torch.Tensor:
    """The weight's gradient as an ``(m, n)`` view (GPT-2's ``Conv1D`` stores it transposed), for in-place edits."""
    return layer.weight.grad.T if isinstance(layer, Conv1D) else layer.weight.grad


def project(gradient: torch.Tensor, projection: torch.Tensor) -> torch.Tensor:
    """``(G P) P^T``: the gradient's rank-r random compression, unbiased for ``G``."""
    return (gradient @ projection) @ projection.mT


@dataclass(frozen=True)
class FloraOptions:
    resample_every: int = field(
        default=1, metadata={"help": "draw the projections afresh every this many optimizer steps", "period": True}
    )

    def __post_init__(self) -> None:
        if self.resample_every < 1:
            raise OptionError(
                f"resample_every must be a positive number of steps, not {self.resample_every}", "resample_every"
            )


@register("flora")
class Flora(Variant):
    source = "docs/variants.md §5; Hao et al. 2024 (Flora), cf. GaLore: each step's gradient projected to random rank r"
    unstackable = None
    Options = FloraOptions
    optimizer = "sgd"

    def __init__(self, spec: AdapterSpec) -> None:
        super().__init__(spec)
        self.generator = torch.Generator().manual_seed(spec.seed)

    def apply(self, model: nn.Module) -> nn.Module:
        """Train the target layers' weights only (their biases stay frozen, as under an adapter); each layer holds
        its current projection as a buffer, so the memory account counts it."""
        model.requires_grad_(False)
        for _, layer in find_targets(model, self.spec.target_modules):
            layer.weight.requires_grad_(True)
            n = layer_shape(layer)[1]
            layer.register_buffer(
                "flora_projection", draw_projection(n, self.spec.rank, self.generator, layer.weight), persistent=False
            )
        return model

    @torch.no_grad()
    def transform_gradients(self, model: nn.Module, step: int) -> None:
        redraw = step > 0 and step % self.options.resample_every == 0
        for _, layer in find_targets(model, self.spec.target_modules):
            gradient = dense_gradient(layer)
            if redraw:
                layer.flora_projection.copy_(
                    draw_projection(gradient.shape[1], self.spec.rank, self.generator, gradient)
                )
            gradient.copy_(project(gradient, layer.flora_projection))

    def merge(self, model: nn.Module) -> nn.Module:
        """The update is in the weights already; the projections go."""
        for _, layer in find_targets(model, self.spec.target_modules):
            del layer.flora_projection
        return model

    def save(self, model: nn.Module, directory: Path) -> None:
        """The trained weights of the target layers (the only tensors training changed), by module name."""
        weights = {f"{name}.weight": layer.weight for name, layer in find_targets(model, self.spec.target_modules)}
        save_adapter_tensors(directory, weights, self.name, self.spec, resample_every=self.options.resample_every)

    @classmethod
    def trainable_parameters(cls, m: int, n: int, r: int) -> int:
        return m * n  # the weight trains; only each step's update is rank r
