"""The contract every variant implements, and the spec it is built from.

A variant is one small module (in ``lorabench/variants/``, in a file of the user's own named by the
config's ``variant_modules``, or in an installed package's entry point) that subclasses :class:`Variant`
and decorates it with ``@register("name")`` (see ``lorabench/variants/__init__.py``). The training loop
only talks to this interface, so the grid picks a new module up by name; ``lorabench test-variant NAME``
checks that a variant keeps it (:mod:`lorabench.contract`). docs/variants.md §6 lists the hooks and the helpers
a variant of one's own uses (``find_targets``, ``dense_weight``, ``adapter_layers``, ``reset_optimizer_state``,
all exported by ``lorabench.variants``).
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import re
import typing
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
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
    """Variant-specific settings from the config, e.g. ``resample_every`` or a PEFT config; the variant
    parses them into its :attr:`Variant.Options`."""
    total_steps: int | None = None
    """Optimizer steps the run will take, for methods with a schedule (AdaLoRA's rank budget)."""


class OneLayer(nn.Module):
    """The smallest adaptable model: one linear layer named ``layer`` (parameter probes, layer benchmarks)."""

    def __init__(self, m: int, n: int, bias: bool = False) -> None:
        super().__init__()
        self.layer = nn.Linear(n, m, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


@dataclass(frozen=True)
class NoOptions:
    """The options of a variant that has none of its own."""


class OptionError(ValueError):
    """A variant option the variant refuses; ``option`` names it (None: the options as a whole)."""

    def __init__(self, message: str, option: str | None = None) -> None:
        super().__init__(message)
        self.option = option


def yaml_number_hint(value: Any) -> str:
    """Why a number arrived as a string, or empty: YAML 1.1 (PyYAML, Snakemake) reads a float only with a dot
    and a signed exponent, so ``3e-3`` and ``1.0e3`` are strings, as is any quoted number."""
    if not isinstance(value, str):
        return ""
    try:
        float(value)
    except ValueError:
        return ""
    if re.fullmatch(r"\s*[-+]?[0-9.]+[eE][-+]?[0-9]+\s*", value):
        return (
            f" (YAML reads {value} as a string: write a dot and a signed exponent, e.g. 3.0e-3 or 1.0e+4, "
            "or plain digits, e.g. 0.003)"
        )
    return " (a quoted number is a string to YAML: drop the quotes)"


def _type_problem(value: Any, expected: Any) -> str | None:
    """Why ``value`` is not of the declared field type ``expected`` (int, float, str, bool, dict[...], list[...])."""
    kind = typing.get_origin(expected) or expected
    if kind is float:
        fits = isinstance(value, int | float) and not isinstance(value, bool)
    elif kind is int:
        fits = isinstance(value, int) and not isinstance(value, bool)
    else:
        fits = isinstance(value, kind)
    return None if fits else f"{value!r} is not of type {getattr(kind, '__name__', kind)}{yaml_number_hint(value)}"


class Variant:
    """Base class: subclasses override :meth:`apply` and, where they need them, the hooks."""

    name: ClassVar[str]
    source: ClassVar[str]
    """Where the method comes from, shown by ``lorabench variants``: a paper, a section of docs/variants.md, or PEFT."""
    optimizer: ClassVar[str | None] = None
    """The optimizer the variant's maths assumes (``sgd`` or ``adamw``): the default of its runs and of its contract
    test. None: any, the config's ``train.optimizer``. A config entry naming another one meets
    :attr:`optimizer_policy`."""
    optimizer_policy: ClassVar[str] = "refuse"
    """``refuse`` (a config entry with another optimizer is an error before any job) or ``warn`` (it runs, with a
    warning): for variants that still work, only not as their maths says."""
    in_default_grid: ClassVar[bool] = True
    """False for generic entries that need settings from the config (``peft``): ``all`` skips them."""
    uses_rank: ClassVar[bool] = True
    """False for methods without a rank (full fine-tuning): the grid runs them once per rank set."""
    unstackable: ClassVar[str | None] = "not shown to stack: its stacked runs are not tested equal to its lone runs"
    """Why runs of this variant that differ only in learning rate do not train as one computation (config
    ``jobs.stack``, :mod:`lorabench.stack`), shown by ``lorabench variants``; None for variants whose stacked
    records tests/test_stack.py checks equal to their lone ones. A hook that changed weights outside the variant's
    own layers would go unseen by a stack, so a variant of one's own stays alone unless it sets None."""
    Options: ClassVar[type] = NoOptions
    """The variant's own config options: a frozen dataclass whose fields carry a default (or none: required)
    and ``metadata={"help": ...}``, as PEFT's config dataclasses do; ``__post_init__`` refuses bad values. A field
    with ``metadata={"period": True}`` is a number of steps between events (a merge, a redraw): the contract test
    warns when its steps never reach it."""

    def __init__(self, spec: AdapterSpec) -> None:
        self.spec = spec
        self.options = parsed_options(type(self), spec.options)

    @classmethod
    def parse_options(cls, raw: Mapping[str, Any], settings: Collection[str] = ()) -> Any:
        """``raw`` as :attr:`Options`, so that a misspelt, mistyped or missing option is refused before any
        job instead of silently running the default. ``settings`` are keys the caller reads itself (the grid's
        per-variant settings): accepted beside the options and named in the refusal."""
        fields = {f.name: f for f in dataclasses.fields(cls.Options)}
        for key in raw:
            if key not in fields and key not in settings:
                close = difflib.get_close_matches(key, [*fields, *settings], n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise OptionError(
                    f"variant {cls.name!r} has no option {key!r}{hint}; {cls.describe_options(settings)}", key
                )
        types = typing.get_type_hints(cls.Options)
        for key in fields.keys() & raw.keys():
            if problem := _type_problem(raw[key], types[key]):
                raise OptionError(f"variant {cls.name!r} option {key!r}: {problem}", key)
        if missing := [f.name for f in fields.values() if _required(f) and f.name not in raw]:
            raise OptionError(
                f"variant {cls.name!r} needs options: {', '.join(missing)}; {cls.describe_options(settings)}",
                missing[0],
            )
        try:
            return cls.Options(**{key: raw[key] for key in fields.keys() & raw.keys()})
        except ValueError as error:  # the Options' own refusal (``__post_init__``)
            raise OptionError(f"variant {cls.name!r}: {error}", getattr(error, "option", None)) from None

    @classmethod
    def describe_options(cls, settings: Collection[str] = ()) -> str:
        """The options this variant accepts, with type, default and help: what a refusal offers instead."""
        types = typing.get_type_hints(cls.Options)
        described = [
            f"{f.name} ({getattr(types[f.name], '__name__', types[f.name])}, "
            f"{'required' if _required(f) else f'default {_default(f)!r}'})"
            f"{', a period in steps' if f.metadata.get('period') else ''}: {f.metadata.get('help', '')}"
            for f in dataclasses.fields(cls.Options)
        ]
        accepted = f"its options: {'; '.join(described)}" if described else "it has no options"
        return accepted + (f"; every entry also takes the settings {', '.join(settings)}" if settings else "")

    def apply(self, model: nn.Module) -> nn.Module:
        """Return ``model`` ready to train: exactly the trainable parameters require grad."""
        raise NotImplementedError

    def parameter_groups(self, model: nn.Module, lr: float) -> list[dict[str, Any]]:
        """The optimizer's parameter groups: every trainable parameter exactly once, at ``lr`` unless a
        group sets its own (LoRA+ trains B faster than A)."""
        return [{"params": [p for p in model.parameters() if p.requires_grad], "lr": lr}]

    def transform_gradients(self, model: nn.Module, step: int) -> None:
        """Called after the backward pass of optimizer step ``step`` (from 0) and before that step: change the
        gradients (``p.grad``) the optimizer will apply, e.g. project them (``flora``). The update itself is then
        the optimizer's, at its learning rate."""

    def after_step(self, model: nn.Module, optimizer: Any) -> None:
        """Called after every ``optimizer.step()``, while the step's gradients still exist (AdaLoRA reads
        them to reallocate its rank); resampled variants merge and redraw here, ``relora`` merges and restarts
        (:func:`reset_optimizer_state` drops what the optimizer knew of re-initialised parameters)."""

    def record_extra(self, model: nn.Module) -> dict[str, float]:
        """Facts about the trained model the grid cannot know, for the record's ``extra`` (e.g. the rank a
        generic PEFT method actually used)."""
        return {}

    def merge(self, model: nn.Module) -> nn.Module:
        """Return a plain transformers model with the learnt update folded into its weights."""
        raise NotImplementedError

    def save(self, model: nn.Module, directory: Path) -> None:
        """Write the trained state (PEFT's adapter format for LoRA-family variants); the pipeline calls it
        per run when the config sets ``train.save_adapters``. Optional: :func:`saves` tells."""
        raise NotImplementedError

    @classmethod
    def ranked(cls, options: dict[str, Any]) -> bool:
        """Whether the grid's ranks apply with these options; False runs the variant once, at rank 0."""
        return cls.uses_rank

    @classmethod
    def rank_problem(cls, m: int, n: int, r: int) -> str | None:
        """Why rank ``r`` cannot adapt an ``(m, n)`` layer, or None; checked before any job runs (r = 0: no rank)."""
        if r and not 1 <= r <= min(m, n):
            return f"rank {r} must be between 1 and min(m, n) = {min(m, n)}"
        return None

    def layer_problem(self, name: str, layer: nn.Module) -> str | None:
        """Why this variant cannot adapt the targeted layer ``name`` (``layer``: a weightless meta-device copy),
        or None; checked before any job runs, once per layer type of each model."""
        return None

    @classmethod
    def trainable_parameters(cls, m: int, n: int, r: int) -> int:
        """Trainable parameters of a model that is one bias-free ``(m, n)`` layer, at rank ``r``: for listings.

        Counted by default (:meth:`layer_parameters`), so a new variant needs no formula; a subclass may
        state one, and the contract test checks it against the count. A run's record counts its own
        model's parameters that require grad instead, where a factor shared by layers counts once.
        """
        return cls(AdapterSpec(rank=r, alpha=2.0 * r, target_modules=("layer",))).layer_parameters(m, n, r)

    def layer_parameters(self, m: int, n: int, r: int) -> int:
        """This spec's variant at rank ``r`` applied to one ``(m, n)`` layer: its parameters that require grad."""
        probe = type(self)(dataclasses.replace(self.spec, rank=r, target_modules=("layer",)))
        return sum(p.numel() for p in probe.apply(OneLayer(m, n)).parameters() if p.requires_grad)


def period_warnings(variant: type[Variant], options: Any, steps: int) -> list[str]:
    """The options of ``variant`` marked as periods (``metadata={"period": True}``: every so many steps) whose value
    ``steps`` optimizer steps never reach, so that a check of that many steps never exercises them."""
    return [
        f"option {f.name} = {getattr(options, f.name)} exceeds the {steps} steps run here: what it does every "
        f"{getattr(options, f.name)} steps never happens (run at least {getattr(options, f.name) + 1} steps)"
        for f in dataclasses.fields(options)
        if f.metadata.get("period") and getattr(options, f.name) > steps
    ]


def reset_optimizer_state(optimizer: Any, parameters: Iterable[nn.Parameter]) -> None:
    """Forget what ``optimizer`` holds for ``parameters`` (AdamW's moments and step count), so that their next step
    starts afresh, as after re-initialising them: a merge-and-restart (``relora``) or a redraw (``resampled``)."""
    for parameter in parameters:
        optimizer.state.pop(parameter, None)


def _required(option: dataclasses.Field) -> bool:
    return option.default is dataclasses.MISSING and option.default_factory is dataclasses.MISSING


def _default(option: dataclasses.Field) -> Any:
    return option.default if option.default_factory is dataclasses.MISSING else option.default_factory()


PARSED: dict[tuple[type, str], Any] = {}
"""(variant class, its options as sorted JSON) -> the parsed Options (:func:`parsed_options`)."""


def parsed_options(cls: type[Variant], options: Mapping[str, Any]) -> Any:
    """``cls``'s ``options`` parsed once per process: every grid point of a job, and every check of a grid, builds its
    variant from the same options, and the parsed Options are frozen, so one instance serves all. The options
    themselves are parsed, not their JSON text, which is only the key (``repr`` for what JSON cannot spell)."""
    key = (cls, json.dumps(options, sort_keys=True, default=repr))
    if key not in PARSED:
        PARSED[key] = cls.parse_options(options)
    return PARSED[key]


def saves(variant: type[Variant]) -> bool:
    """Whether ``variant`` implements :meth:`Variant.save` (the pipeline keeps adapters only for those)."""
    return variant.save is not Variant.save
