"""VeRA (Kopiczko et al., 2024): frozen shared random A, B; train only two scaling vectors per layer, via PEFT."""

from __future__ import annotations

from peft import VeraConfig

from lorabench.variants import register
from lorabench.variants._peft import PeftVariant


@register("vera")
class VeRA(PeftVariant):
    source = "Kopiczko et al. 2024, vector-based random matrix adaptation (PEFT VeraConfig)"
    unstackable = (
        "stacked, its gradients are summed in another order than alone (its layers are several autograd "
        "steps): float rounding that a long run grows into different results"
    )

    def peft_config(self) -> VeraConfig:
        # VeRA has no alpha; its shared projections come from projection_prng_key, tied to the seed.
        return VeraConfig(
            r=self.spec.rank,
            target_modules=list(self.spec.target_modules),
            vera_dropout=self.spec.dropout,
            projection_prng_key=self.spec.seed,
            save_projection=True,
        )

    @classmethod
    def trainable_parameters(cls, m: int, n: int, r: int) -> int:
        return m + r  # lambda_b (one per output) and lambda_d (one per rank)
