"""Resampled random projections (docs/variants.md §2): full-rank SGD in expectation, LoRA-sized memory.

Every ``resample_every`` steps (option, default 1) the factors ``U`` (m, r), ``V`` (r, n)
are drawn afresh with i.i.d. N(0, 1/r) entries, so ``E[U U^T] = I_m``, ``E[V^T V] = I_n`` and the
expected first-order update is ``-2 lr G``.

Implementation: the layer computes ``base(x) + U V x - U0 V0 x``, where ``U0``, ``V0`` are the
factors at the last merge. After *every* optimizer step the exact change ``U'V' - U0 V0`` is merged
into ``W`` (a rank-2r ``addmm_``, no m x n temporary) and ``U0, V0 := U', V'``; so at every forward
``U = U0``, ``V = V0`` and the adapter term is exactly zero. A custom autograd function therefore
passes the base output through untouched and only computes, in backward, the factor gradients
``G V^T = delta^T (X V^T)`` and ``U^T G = (delta U)^T X`` from the layer input ``X`` the base layer
saves anyway: no extra forward work, no m x n gradient and no m x n optimizer state. Merging every
step is the same as merging once per redraw (the changes telescope) but keeps one code path.
At a redraw the optimizer state of ``U``, ``V`` is dropped: it belonged to the old directions. ``U0``, ``V0``
are buffers: the memory account counts them as the variant's state.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lorabench.variants import register
from lorabench.variants._layers import (
    AdapterLayer,
    adapter_layers,
    dense_weight,
    layer_shape,
    merge_adapters,
    save_adapter_tensors,
    wrap_targets,
)
from lorabench.variants.base import AdapterSpec, OptionError, Variant, reset_optimizer_state


def draw_factors(
    m: int, n: int, r: int, generator: torch.Generator, batch: tuple[int, ...] = ()
) -> tuple[torch.Tensor, torch.Tensor]:
    """``U`` (*batch, m, r), ``V`` (*batch, r, n), N(0, 1/r), on the CPU so every device gets the same draw."""
    std = r**-0.5
    U = torch.randn(*batch, m, r, generator=generator) * std
    V = torch.randn(*batch, r, n, generator=generator) * std
    return U, V


def factor_gradients(
    x: torch.Tensor, delta: torch.Tensor, U: torch.Tensor, V: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(G V^T, U^T G)`` for ``G = delta^T x`` without forming ``G``; ``x`` (tokens, n), ``delta`` (tokens, m)."""
    grad_U = delta.mT @ (x @ V.mT)
    grad_V = (delta @ U).mT @ x
    return grad_U, grad_V


def merged_update(
    U0: torch.Tensor, V0: torch.Tensor, dU: torch.Tensor, dV: torch.Tensor, *, exact: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rank-2r factors ``(L, R)`` of the change to ``W`` after ``U0 -> U0 + dU``, ``V0 -> V0 + dV``.

    ``L @ R = U'V' - U0 V0`` when ``exact``, else its first-order part ``U0 dV + dU V0`` (used by
    the Monte Carlo check in ``lorabench.theory``).
    """
    right = V0 + dV if exact else V0
    return torch.cat([U0, dU], dim=-1), torch.cat([dV, right], dim=-2)


class _PassThroughWithFactorGrads(torch.autograd.Function):
    """Forward: the base output unchanged. Backward: the gradient of ``U V x - U0 V0 x`` at ``U = U0``."""

    @staticmethod
    def forward(ctx: Any, base_out: torch.Tensor, x: torch.Tensor, U: torch.Tensor, V: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x, U, V)
        return base_out.view_as(base_out)

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor, None, torch.Tensor, torch.Tensor]:
        x, U, V = ctx.saved_tensors
        grad_U, grad_V = factor_gradients(x.reshape(-1, x.shape[-1]), grad_out.reshape(-1, grad_out.shape[-1]), U, V)
        # The input gradient of U V x - U0 V0 x cancels exactly at U = U0: only the base layer's remains.
        return grad_out, None, grad_U, grad_V


class ResampledLayer(AdapterLayer):
    def __init__(self, base_layer: nn.Module, rank: int, generator: torch.Generator) -> None:
        super().__init__(base_layer)
        m, n = layer_shape(base_layer)
        like = dict(dtype=base_layer.weight.dtype, device=base_layer.weight.device)
        self.generator = generator
        self.U = nn.Parameter(torch.empty(m, rank, **like))
        self.V = nn.Parameter(torch.empty(rank, n, **like))
        self.register_buffer("U0", torch.empty_like(self.U), persistent=False)
        self.register_buffer("V0", torch.empty_like(self.V), persistent=False)
        self.redraw()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _PassThroughWithFactorGrads.apply(self.base_layer(x), x, self.U, self.V)

    def pending_update(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Factors of ``U V - U0 V0``, the change not yet in ``W`` (zero right after a merge)."""
        return merged_update(self.U0, self.V0, self.U - self.U0, self.V - self.V0, exact=True)

    @torch.no_grad()
    def merge_step(self) -> None:
        """Fold the exact ``U V - U0 V0`` into ``W`` and make the current factors the new reference."""
        dense_weight(self.base_layer).addmm_(*self.pending_update())
        self.U0.copy_(self.U)
        self.V0.copy_(self.V)

    @torch.no_grad()
    def redraw(self) -> None:
        (m, r), n = self.U.shape, self.V.shape[1]
        U, V = draw_factors(m, n, r, self.generator)
        for target, value in ((self.U, U), (self.V, V), (self.U0, U), (self.V0, V)):
            target.copy_(value)

    def delta_weight(self) -> torch.Tensor:
        left, right = self.pending_update()
        return left @ right


@dataclass(frozen=True)
class ResampledOptions:
    """What docs/variants.md §2 leaves free: how often the random factors are redrawn."""

    resample_every: int = field(
        default=1, metadata={"help": "draw U, V afresh every this many optimizer steps", "period": True}
    )

    def __post_init__(self) -> None:
        if self.resample_every < 1:
            raise OptionError(
                f"resample_every must be a positive number of steps, not {self.resample_every}", "resample_every"
            )


@register("resampled")
class Resampled(Variant):
    source = "docs/variants.md §2 (seed 000): random U, V redrawn every step; cf. flora, relora"
    unstackable = None
    Options = ResampledOptions
    optimizer = "sgd"
    optimizer_policy = "warn"  # runs under AdamW, but each step after a redraw is Adam's first: a sign update

    def __init__(self, spec: AdapterSpec) -> None:
        super().__init__(spec)
        if spec.dropout:
            raise ValueError(
                f"resampled refuses dropout (train.dropout = {spec.dropout}): its adapter adds nothing "
                "to the forward pass, so there is nothing to drop; set train.dropout to 0 for its grid"
            )
        self.steps = 0

    def apply(self, model: nn.Module) -> nn.Module:
        generator = torch.Generator().manual_seed(self.spec.seed)
        return wrap_targets(model, self.spec, lambda _, layer: ResampledLayer(layer, self.spec.rank, generator))

    def after_step(self, model: nn.Module, optimizer: Any) -> None:
        self.steps += 1
        redraw = self.steps % self.options.resample_every == 0
        for _, layer in adapter_layers(model):
            layer.merge_step()
            if redraw:
                layer.redraw()
                reset_optimizer_state(optimizer, (layer.U, layer.V))

    def merge(self, model: nn.Module) -> nn.Module:
        return merge_adapters(model)

    def save(self, model: nn.Module, directory: Path) -> None:
        """The trained weights of the target layers (the only tensors training changed), by module name."""
        weights = {f"{name}.weight": layer.base_layer.weight for name, layer in adapter_layers(model)}
        save_adapter_tensors(directory, weights, self.name, self.spec, resample_every=self.options.resample_every)

    @classmethod
    def trainable_parameters(cls, m: int, n: int, r: int) -> int:
        return r * (m + n)
