"""Any PEFT method, benchmarked from a config dict alone: ``options["peft_config"] = {"peft_type": "LOHA", ...}``.

Honest about what runs: a method that cannot wrap a targeted layer type is refused before any job
(:meth:`AnyPeft.layer_problem`); AdaLoRA gets its schedule from the grid (``total_step`` = the run's
steps, the grid's rank as its final average budget ``target_r``, starting from ``init_r`` = 1.5x as its
authors do) and its rank reallocation after every step; the record's ``extra.rank_used`` says which
rank the method ended with.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from peft import PEFT_TYPE_TO_CONFIG_MAPPING, PeftConfig, PeftModel, PeftType, get_peft_model
from peft import __version__ as peft_version
from peft.tuners.adalora import AdaLoraModel
from torch import nn

from lorabench.variants import register
from lorabench.variants._peft import PeftVariant
from lorabench.variants.base import AdapterSpec, OptionError

RANK_FIELDS = ("target_r", "r")
"""The PEFT config field the grid's rank fills, first match: AdaLoRA's final budget, everyone else's rank."""


def config_class(peft_type: Any) -> type[PeftConfig]:
    """PEFT's config dataclass for ``peft_type`` (any case); an error that lists PEFT's types."""
    known = {member.value: member for member in PeftType}
    if str(peft_type).upper() not in known:
        raise OptionError(
            f"unknown peft_type {peft_type!r}; PEFT {peft_version} knows {', '.join(sorted(known))}", "peft_config"
        )
    return PEFT_TYPE_TO_CONFIG_MAPPING[known[str(peft_type).upper()]]


@dataclass(frozen=True)
class AnyPeftOptions:
    """The PEFT config is the whole method: checked here, so that a typo fails before any job, not in each run."""

    peft_config: dict[str, Any] = field(
        metadata={
            "help": "keyword arguments of the PEFT config class of `peft_type` (e.g. {peft_type: LOHA, alpha: 8}); "
            "r (AdaLoRA: target_r), target_modules and AdaLoRA's total_step default to the grid's"
        }
    )

    def __post_init__(self) -> None:
        if "peft_type" not in self.peft_config:
            raise OptionError("peft_config needs a peft_type, e.g. {peft_type: LOHA}", "peft_config")
        config = config_class(self.peft_config["peft_type"])
        accepted = {f.name for f in dataclasses.fields(config)}
        if unknown := sorted(set(self.peft_config) - accepted):
            raise OptionError(
                f"peft_config: {config.__name__} has no field(s) {unknown}; its fields: {', '.join(sorted(accepted))}",
                "peft_config",
            )


@register("peft")
class AnyPeft(PeftVariant):
    source = "any PEFT method, from the config dict in options['peft_config']"
    unstackable = (
        "stacked, its gradients are summed in another order than alone (its layers are several autograd "
        "steps): float rounding that a long run grows into different results"
    )
    in_default_grid = False
    Options = AnyPeftOptions

    def __init__(self, spec: AdapterSpec) -> None:
        super().__init__(spec)
        self.steps = 0

    def peft_config(self) -> PeftConfig:
        settings = dict(self.options.peft_config)
        config = config_class(settings["peft_type"])
        field_names = {f.name for f in dataclasses.fields(config)}
        from_spec = {"target_modules": list(self.spec.target_modules), "total_step": self.spec.total_steps}
        if rank_field := next((name for name in RANK_FIELDS if name in field_names), None):
            from_spec[rank_field] = self.spec.rank
            if rank_field == "target_r":  # AdaLoRA prunes from a larger start: PEFT's defaults are 12 -> 8
                from_spec["init_r"] = math.ceil(1.5 * self.spec.rank)
        settings |= {key: value for key, value in from_spec.items() if key in field_names and key not in settings}
        return config(**settings)

    @classmethod
    def ranked(cls, options: dict[str, Any]) -> bool:
        """A method whose config has no rank field (IA3) runs once per grid point set, at rank 0."""
        try:
            config = config_class(options.get("peft_config", {}).get("peft_type", "LORA"))
        except OptionError:  # an unknown peft_type: refused when the options are parsed, naming the known ones
            return cls.uses_rank
        return any(name in RANK_FIELDS for name in (f.name for f in dataclasses.fields(config)))

    def layer_problem(self, name: str, layer: nn.Module) -> str | None:
        """Inject this config into a stand-in holding a copy of ``layer`` under its own name (IA3 checks its
        ``feedforward_modules`` against the names): PEFT's own refusal, if any."""
        stand_in = nn.Module()
        stand_in.add_module(name.rsplit(".", 1)[-1], copy.deepcopy(layer))
        try:
            get_peft_model(stand_in, self.peft_config())
        except Exception as error:  # PEFT raises TypeError, ValueError or NotImplementedError here
            return f"PEFT cannot build it: {type(error).__name__}: {error}"
        return None

    def after_step(self, model: nn.Module, optimizer: Any) -> None:
        """AdaLoRA: score importance from this step's gradients and mask ranks to the budget (PEFT's loop)."""
        self.steps += 1
        if isinstance(model.base_model, AdaLoraModel):
            model.base_model.update_and_allocate(self.steps)

    def record_extra(self, model: PeftModel) -> dict[str, float]:
        """``rank_used``: the rank per adapted layer the method ended with, averaged; 0 for a method without
        one. AdaLoRA's is what its allocation kept, not the grid's rank."""
        config = model.peft_config["default"]
        if getattr(config, "rank_pattern", None):
            kept = [sum(mask) for mask in config.rank_pattern.values()]
            return {"rank_used": sum(kept) / len(kept)}
        rank_field = next((name for name in ("init_r", "r") if hasattr(config, name)), None)
        return {"rank_used": float(getattr(config, rank_field)) if rank_field else 0.0}

    @classmethod
    def trainable_parameters(cls, m: int, n: int, r: int) -> int:
        raise NotImplementedError(
            "the 'peft' count depends on options['peft_config']: use get('peft')(spec).layer_parameters(m, n, r)"
        )
