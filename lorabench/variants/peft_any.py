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
from typing import Any

from peft import PEFT_TYPE_TO_CONFIG_MAPPING, PeftConfig, PeftModel, get_peft_model
from peft.tuners.adalora import AdaLoraModel
from torch import nn

from lorabench.variants import register
from lorabench.variants._peft import PeftVariant
from lorabench.variants.base import AdapterSpec

RANK_FIELDS = ("target_r", "r")
"""The PEFT config field the grid's rank fills, first match: AdaLoRA's final budget, everyone else's rank."""


@register("peft")
class AnyPeft(PeftVariant):
    source = "any PEFT method, from the config dict in options['peft_config']"
    in_default_grid = False

    def __init__(self, spec: AdapterSpec) -> None:
        super().__init__(spec)
        self.steps = 0

    def peft_config(self) -> PeftConfig:
        settings = dict(self._settings())
        config_class = self._config_class(settings["peft_type"])
        field_names = {f.name for f in dataclasses.fields(config_class)}
        from_spec = {"target_modules": list(self.spec.target_modules), "total_step": self.spec.total_steps}
        if rank_field := next((name for name in RANK_FIELDS if name in field_names), None):
            from_spec[rank_field] = self.spec.rank
            if rank_field == "target_r":  # AdaLoRA prunes from a larger start: PEFT's defaults are 12 -> 8
                from_spec["init_r"] = math.ceil(1.5 * self.spec.rank)
        settings |= {key: value for key, value in from_spec.items() if key in field_names and key not in settings}
        return config_class(**settings)

    def _settings(self) -> dict[str, Any]:
        if "peft_config" not in self.spec.options:
            raise ValueError("variant 'peft' needs options['peft_config'], e.g. {'peft_type': 'LOHA', 'alpha': 8}")
        return self.spec.options["peft_config"]

    @staticmethod
    def _config_class(peft_type: str) -> type[PeftConfig]:
        known = {str(key.value): cls for key, cls in PEFT_TYPE_TO_CONFIG_MAPPING.items()}
        if str(peft_type).upper() not in known:
            raise ValueError(f"unknown peft_type {peft_type!r}; PEFT knows {', '.join(sorted(known))}")
        return known[str(peft_type).upper()]

    @classmethod
    def ranked(cls, options: dict[str, Any]) -> bool:
        """A method whose config has no rank field (IA3) runs once per grid point set, at rank 0."""
        try:
            config_class = cls._config_class(options.get("peft_config", {}).get("peft_type", "LORA"))
        except ValueError:  # an unknown peft_type: refused by layer_problem, which names the known ones
            return cls.uses_rank
        return any(name in RANK_FIELDS for name in (f.name for f in dataclasses.fields(config_class)))

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
        raise NotImplementedError("the 'peft' count depends on options['peft_config']: "
                                  "use get('peft')(spec).layer_parameters(m, n, r)")
