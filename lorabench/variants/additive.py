"""Additive decomposition (MATH.md section 3): ``dW[i, j] = U[i, j mod r] + V[i mod r, j]``.

Same parameter count as LoRA, ``r (m + n)``, but ``rank(dW) <= 2r``. The forward never builds
``dW``: with ``s`` = the input folded into ``n/r`` chunks of ``r`` and summed,
``dW x = U s + tile(V x, m/r)``. Folding and tiling are 0/1 matrices (``F`` (r, n), ``T`` (m, r)),
so this is ``[U, T] [F x; V x]``: two skinny matmuls of width 2r. On one CPU thread that measured
as fast as LoRA's two width-r matmuls and faster than a reshape-and-sum fold followed by a
broadcast add (the matmuls are memory-bound; each extra pass over the activations costs more).
Scaling follows LoRA: the update is ``(alpha/r) dW``.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from lorabench.variants import register
from lorabench.variants._layers import (
    AdapterLayer,
    adapter_layers,
    fusable,
    layer_shape,
    low_rank_linear,
    merge_adapters,
    save_adapter_tensors,
    wrap_targets,
)
from lorabench.variants.base import Variant


def additive_delta(U: torch.Tensor, V: torch.Tensor) -> torch.Tensor:
    """Dense ``dW`` = ``U [I_r ... I_r] + [I_r; ...; I_r] V``: for merging and tests, never for training."""
    (m, r), n = U.shape, V.shape[-1]
    return U.repeat(1, n // r) + V.repeat(m // r, 1)


def fold_and_tile(
    m: int, n: int, r: int, like: torch.Tensor, scale: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """``c F`` (r, n) and ``c T`` (m, r) for ``c = scale``: ``F x`` sums x's n/r chunks, ``T v = tile(v, m/r)``.

    Both carry ``c`` so that ``[U, cT] [cF x; V x] = c (U F x + T V x)`` needs no extra multiply.
    """
    eye = scale * torch.eye(r, dtype=like.dtype, device=like.device)
    return eye.repeat(1, n // r), eye.repeat(m // r, 1)


def additive_forward(x: torch.Tensor, U: torch.Tensor, V: torch.Tensor, fold: torch.Tensor,
                     tile: torch.Tensor) -> torch.Tensor:
    """``scale * dW x`` without ``dW``, for ``fold, tile = fold_and_tile(m, n, r, x, scale)``."""
    return F.linear(F.linear(x, torch.cat([fold, V])), torch.cat([U, tile], dim=1))


class AdditiveLayer(AdapterLayer):
    """``base(x) + (alpha/r) dW x``; both factors start at zero (neither one's gradient needs the other)."""

    def __init__(self, name: str, base_layer: nn.Module, rank: int, scale: float, dropout: float) -> None:
        super().__init__(base_layer)
        m, n = layer_shape(base_layer)
        if problem := Additive.rank_problem(m, n, rank):
            raise ValueError(f"additive adapter cannot fit layer {name!r} of shape (m={m}, n={n}): {problem}")
        like = dict(dtype=base_layer.weight.dtype, device=base_layer.weight.device)
        self.U = nn.Parameter(torch.zeros(m, rank, **like))
        self.V = nn.Parameter(torch.zeros(rank, n, **like))
        fold, tile = fold_and_tile(m, n, rank, base_layer.weight, scale)
        self.register_buffer("fold", fold, persistent=False)
        self.register_buffer("tile", tile, persistent=False)
        self.scale = scale
        self.dropout = nn.Dropout(dropout) if dropout else nn.Identity()
        self.fused = not dropout and fusable(base_layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fused:  # LoRA's fused function with the width-2r factors [cF; V], [U, cT]
            return low_rank_linear(x, self.base_layer, torch.cat([self.fold, self.V]), torch.cat([self.U, self.tile], 1),
                                   1.0)
        return self.base_layer(x) + additive_forward(self.dropout(x), self.U, self.V, self.fold, self.tile)

    def delta_weight(self) -> torch.Tensor:
        return self.scale * additive_delta(self.U, self.V)


@register("additive")
class Additive(Variant):
    source = "MATH.md section 3 (seed 000): additive rank-2r decomposition"

    def apply(self, model: nn.Module) -> nn.Module:
        spec = self.spec
        return wrap_targets(
            model, spec, lambda name, layer: AdditiveLayer(name, layer, spec.rank, spec.alpha / spec.rank, spec.dropout)
        )

    def merge(self, model: nn.Module) -> nn.Module:
        return merge_adapters(model)

    def save(self, model: nn.Module, directory: Path) -> None:
        layers = adapter_layers(model)
        tensors = {f"{name}.{factor}": getattr(layer, factor) for name, layer in layers for factor in "UV"}
        save_adapter_tensors(directory, tensors, self.name, self.spec, scale=self.spec.alpha / self.spec.rank)

    @classmethod
    def rank_problem(cls, m: int, n: int, r: int) -> str | None:
        if problem := super().rank_problem(m, n, r):
            return problem
        if m % r or n % r:
            return f"rank {r} must divide both m={m} and n={n} (the update tiles r x r identity blocks)"
        return None

    @classmethod
    def trainable_parameters(cls, m: int, n: int, r: int) -> int:
        return r * (m + n)
