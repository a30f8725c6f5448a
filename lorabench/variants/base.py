"""The contract every variant implements, and the spec it is built from.

A variant is one small module in ``lorabench/variants/`` that subclasses :class:`Variant`
and decorates it with ``@register("name")`` (see ``lorabench/variants/__init__.py``).
The training loop only talks to this interface, so the grid picks a new module up by name.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from torch import nn


@dataclass(frozen=True)
class AdapterSpec:
    """What the grid asks of a variant at one grid point."""

    rank: int
    alpha: float
    target_modules: tuple[str, ...]
    seed: int = 0
    dropout: float = 0.0
    options: dict[str, Any] = field(default_factory=dict)
    """Variant-specific settings from the config, e.g. ``resample_every`` or a PEFT config."""


class Variant:
    """Base class: subclasses override :meth:`apply` and, where they need them, the hooks."""

    name: ClassVar[str]
    source: ClassVar[str]
    """Where the method comes from, shown by ``lorabench variants``: a paper, MATH.md §, or PEFT."""
    in_default_grid: ClassVar[bool] = True
    """False for generic entries that need settings from the config (``peft``): ``all`` skips them."""
    uses_rank: ClassVar[bool] = True
    """False for methods without a rank (full fine-tuning): the grid runs them once per rank set."""

    def __init__(self, spec: AdapterSpec) -> None:
        self.spec = spec

    def apply(self, model: nn.Module) -> nn.Module:
        """Return ``model`` ready to train: exactly the trainable parameters require grad."""
        raise NotImplementedError

    def after_step(self, model: nn.Module, optimizer: Any) -> None:
        """Called after every ``optimizer.step()``; resampled variants merge and redraw here."""

    def merge(self, model: nn.Module) -> nn.Module:
        """Return a plain transformers model with the learnt update folded into its weights."""
        raise NotImplementedError

    def save(self, model: nn.Module, directory: Path) -> None:
        """Write the trained state (PEFT's adapter format for LoRA-family variants)."""
        raise NotImplementedError

    @classmethod
    def rank_problem(cls, m: int, n: int, r: int) -> str | None:
        """Why rank ``r`` cannot adapt an ``(m, n)`` layer, or None; checked before any job runs."""
        if cls.uses_rank and not 1 <= r <= min(m, n):
            return f"rank {r} must be between 1 and min(m, n) = {min(m, n)}"
        return None

    @classmethod
    def trainable_parameters(cls, m: int, n: int, r: int) -> int:
        """Trainable parameters this variant adds to one ``(m, n)`` layer at rank ``r``."""
        raise NotImplementedError

    def layer_parameters(self, m: int, n: int, r: int) -> int:
        """:meth:`trainable_parameters` for this spec; only variants whose count depends on
        ``spec.options`` (the generic ``peft`` path) override it."""
        return self.trainable_parameters(m, n, r)
