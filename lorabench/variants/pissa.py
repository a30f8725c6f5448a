"""PiSSA (Meng et al., 2024): LoRA initialised from the top-r singular triplets of W, via PEFT.

PiSSA moves the principal part out of the base weight, so the base model is mutated. To keep the
saved adapter usable on the *original* weights, the initial adapter is kept and PEFT converts the
trained one into a plain rank-2r LoRA at save time (``path_initial_model_for_weight_conversion``).
"""

from __future__ import annotations

import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from peft import LoraConfig, PeftModel

from lorabench.variants import register
from lorabench.variants._peft import lora_config
from lorabench.variants.base import OptionError
from lorabench.variants.peft_lora import PeftLoRA


@dataclass(frozen=True)
class PissaOptions:
    """How PEFT computes the principal components; the randomised SVD is the fast choice for large layers."""

    pissa_init: str = field(
        default="pissa",
        metadata={
            "help": "PEFT's init_lora_weights: pissa (exact SVD) or pissa_niter_<k> (randomised SVD, k iterations)"
        },
    )

    def __post_init__(self) -> None:
        if not re.fullmatch(r"pissa(_niter_[1-9][0-9]*)?", self.pissa_init):
            raise OptionError(
                f"pissa_init must be pissa or pissa_niter_<k> (e.g. pissa_niter_4), not {self.pissa_init!r}",
                "pissa_init",
            )


@register("pissa")
class PiSSA(PeftLoRA):
    source = "Meng et al. 2024, principal-singular-value init (PEFT init_lora_weights='pissa')"
    Options = PissaOptions

    def peft_config(self) -> LoraConfig:
        return lora_config(self.spec, init_lora_weights=self.options.pissa_init)

    def prepare(self, model: PeftModel) -> None:
        self._initial_dir = tempfile.TemporaryDirectory(prefix="pissa_")
        model.save_pretrained(str(self._initial_adapter()))

    def _initial_adapter(self) -> Path:
        return Path(self._initial_dir.name) / "pissa_init"

    def save(self, model: PeftModel, directory: Path) -> None:
        """A rank-2r LoRA adapter for the unmutated base model (PEFT's PiSSA-to-LoRA conversion)."""
        model.save_pretrained(str(directory), path_initial_model_for_weight_conversion=str(self._initial_adapter()))
