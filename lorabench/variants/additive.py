"""Additive decomposition (docs/variants.md §3): ``dW[i, j] = U[i, j mod r] + V[i mod r, j]``.

Same parameter count as LoRA, ``r (m + n)``, but ``rank(dW) <= 2r``. The forward never builds ``dW``: with
``c = alpha/r``, ``fold(x)`` = x's ``n/r`` chunks of ``r`` summed and ``tile(v)`` = ``v`` repeated ``m/r`` times,
``c dW x = U (c fold(x)) + tile(c V x)``. Fold and tile are constants (0/1 matrices ``F``, ``T``), so they are
done as a reshape-and-sum and a broadcast add into the output being written, not as matmuls with stored
matrices: no fold or tile is held, no gradient is taken for them, and the skinny products are LoRA's in number.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from lorabench.variants import register
from lorabench.variants._layers import (
    AdapterLayer,
    adapter_layers,
    dense_weight,
    fusable,
    layer_shape,
    merge_adapters,
    save_adapter_tensors,
    wrap_targets,
)
from lorabench.variants.base import Variant


def additive_delta(U: torch.Tensor, V: torch.Tensor) -> torch.Tensor:
    """Dense ``dW`` = ``U [I_r ... I_r] + [I_r; ...; I_r] V``: for merging and tests, never for training."""
    (m, r), n = U.shape, V.shape[-1]
    return U.repeat(1, n // r) + V.repeat(m // r, 1)


def fold(x: torch.Tensor, r: int) -> torch.Tensor:
    """``F x`` over the last dimension: its ``n/r`` chunks of length ``r`` summed, ``(..., n) -> (..., r)``."""
    return x.unflatten(-1, (-1, r)).sum(-2)


def add_tiled(out: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``out + T v`` over the last dimension, in place: ``v`` (..., r) added to each of out's chunks of ``r``."""
    out.unflatten(-1, (-1, v.shape[-1])).add_(v.unsqueeze(-2))
    return out


def additive_forward(x: torch.Tensor, U: torch.Tensor, V: torch.Tensor, scale: float) -> torch.Tensor:
    """``scale * dW x`` without ``dW``, through autograd (the path with dropout or a base layer of another kind)."""
    r = U.shape[1]
    folded = fold(x, r) * scale
    return (folded @ U.mT).unflatten(-1, (-1, r)).add((x @ V.mT * scale).unsqueeze(-2)).flatten(-2)


class _AdditiveLinear(torch.autograd.Function):
    """``x W^T + b + c dW x`` for a frozen ``W``, gradients for ``x``, ``U`` and ``V`` only (docs/variants.md §3):
    ``dU = (c F x)^T``-weighted ``g``, ``dV = c (g T)^T x``, ``dx = g W + c (g T) V + tile_n(c g U)``. Saved: the
    input (as LoRA saves it) and the r-wide ``c F x``; the factors are parameters, not copies."""

    @staticmethod
    def forward(
        ctx: Any,
        x: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        U: torch.Tensor,
        V: torch.Tensor,
        scale: float,
    ) -> torch.Tensor:
        r = U.shape[1]
        x2 = x.reshape(-1, x.shape[-1])
        folded = fold(x2, r) * scale
        y = folded @ U.mT if bias is None else torch.addmm(bias, folded, U.mT)
        y.addmm_(x2, weight.mT)
        add_tiled(y, (x2 @ V.mT) * scale)
        needs_x, _, _, needs_U, needs_V, _ = ctx.needs_input_grad
        ctx.save_for_backward(
            x if needs_V else None,
            folded if needs_U else None,
            weight if needs_x else None,
            U if needs_x else None,
            V if needs_x else None,
        )
        ctx.scale, ctx.has_bias, ctx.shape, ctx.r = scale, bias is not None, x.shape, r
        return y.view(*x.shape[:-1], y.shape[-1])

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor):
        x, folded, weight, U, V = ctx.saved_tensors
        needs_x, _, needs_b, needs_U, needs_V, _ = ctx.needs_input_grad
        g = grad.reshape(-1, grad.shape[-1])
        grad_x = grad_b = grad_U = grad_V = None
        g_tiled = fold(g, ctx.r) * ctx.scale if needs_x or needs_V else None  # c g T: (tokens, r)
        if needs_U:
            grad_U = (folded.mT @ g).mT
        if needs_V:
            grad_V = g_tiled.mT @ x.reshape(-1, x.shape[-1])
        if needs_x:
            grad_x = add_tiled((g_tiled @ V).addmm_(g, weight), (g @ U) * ctx.scale).view(ctx.shape)
        if needs_b and ctx.has_bias:
            grad_b = g.sum(0)
        return grad_x, None, grad_b, grad_U, grad_V, None


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
        self.scale = scale
        self.dropout = nn.Dropout(dropout) if dropout else nn.Identity()
        self.fused = not dropout and fusable(base_layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fused:
            return _AdditiveLinear.apply(
                x, dense_weight(self.base_layer), self.base_layer.bias, self.U, self.V, self.scale
            )
        return self.base_layer(x) + additive_forward(self.dropout(x), self.U, self.V, self.scale)

    def delta_weight(self) -> torch.Tensor:
        return self.scale * additive_delta(self.U, self.V)


@register("additive")
class Additive(Variant):
    source = "docs/variants.md §3 (seed 000): additive rank-2r decomposition"
    unstackable = None

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
