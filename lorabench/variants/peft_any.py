"""Any PEFT method, benchmarked from a config dict alone: ``options["peft_config"] = {"peft_type": "LOHA", ...}``."""

from __future__ import annotations

import dataclasses
from typing import Any

from peft import PEFT_TYPE_TO_CONFIG_MAPPING, PeftConfig

from lorabench.variants import register
from lorabench.variants._peft import PeftVariant


@register("peft")
class AnyPeft(PeftVariant):
    source = "any PEFT method, from the config dict in options['peft_config']"
    in_default_grid = False

    def peft_config(self) -> PeftConfig:
        settings = dict(self._settings())
        config_class = self._config_class(settings["peft_type"])
        field_names = {f.name for f in dataclasses.fields(config_class)}
        from_spec = {"r": self.spec.rank, "target_modules": list(self.spec.target_modules)}
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
    def trainable_parameters(cls, m: int, n: int, r: int) -> int:
        raise NotImplementedError("the 'peft' count depends on options['peft_config']: "
                                  "use get('peft')(spec).layer_parameters(m, n, r)")
