"""Any PEFT method, benchmarked from a config dict alone: ``options["peft_config"] = {"peft_type": "LOHA", ...}``."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from peft import PEFT_TYPE_TO_CONFIG_MAPPING, PeftConfig, PeftType, get_peft_model
from peft import __version__ as peft_version

from lorabench.variants import register
from lorabench.variants._layers import OneLayer
from lorabench.variants._peft import PeftVariant
from lorabench.variants.base import OptionError


def config_class(peft_type: Any) -> type[PeftConfig]:
    """PEFT's config dataclass for ``peft_type`` (any case); an error that lists PEFT's types."""
    known = {member.value: member for member in PeftType}
    if str(peft_type).upper() not in known:
        raise OptionError(f"unknown peft_type {peft_type!r}; PEFT {peft_version} knows {', '.join(sorted(known))}",
                          "peft_config")
    return PEFT_TYPE_TO_CONFIG_MAPPING[known[str(peft_type).upper()]]


@dataclass(frozen=True)
class AnyPeftOptions:
    """The PEFT config is the whole method: checked here, so that a typo fails before any job, not in each run."""

    peft_config: dict[str, Any] = field(metadata={
        "help": "keyword arguments of the PEFT config class of `peft_type` (e.g. {peft_type: LOHA, alpha: 8}); "
                "r and target_modules default to the grid's"})

    def __post_init__(self) -> None:
        if "peft_type" not in self.peft_config:
            raise OptionError("peft_config needs a peft_type, e.g. {peft_type: LOHA}", "peft_config")
        config = config_class(self.peft_config["peft_type"])
        accepted = {f.name for f in dataclasses.fields(config)}
        if unknown := sorted(set(self.peft_config) - accepted):
            raise OptionError(f"peft_config: {config.__name__} has no field(s) {unknown}; its fields: "
                              f"{', '.join(sorted(accepted))}", "peft_config")


@register("peft")
class AnyPeft(PeftVariant):
    source = "any PEFT method, from the config dict in options['peft_config']"
    in_default_grid = False
    Options = AnyPeftOptions

    def peft_config(self) -> PeftConfig:
        settings = dict(self.options.peft_config)
        config = config_class(settings["peft_type"])
        field_names = {f.name for f in dataclasses.fields(config)}
        from_spec = {"r": self.spec.rank, "target_modules": list(self.spec.target_modules)}
        settings |= {key: value for key, value in from_spec.items() if key in field_names and key not in settings}
        return config(**settings)

    def layer_parameters(self, m: int, n: int, r: int) -> int:
        """Counted, not derived: inject this config at rank ``r`` into one ``(m, n)`` layer."""
        config = type(self)(dataclasses.replace(self.spec, rank=r)).peft_config()
        if hasattr(config, "target_modules"):
            config = dataclasses.replace(config, target_modules=["layer"])
        probe = get_peft_model(OneLayer(m, n), config)
        return sum(p.numel() for p in probe.parameters() if p.requires_grad)

    @classmethod
    def trainable_parameters(cls, m: int, n: int, r: int) -> int:
        raise NotImplementedError("the 'peft' count depends on options['peft_config']: "
                                  "use get('peft')(spec).layer_parameters(m, n, r)")
