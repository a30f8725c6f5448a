"""Forgetting and benchmark measures beyond the task's own exact-match accuracy.

``lm_eval``: lm-evaluation-harness scores of the in-memory model; ``perplexity``: mean token
cross-entropy on held-out source text; ``weights``: intruder dimensions and effective rank of dW.

"Before" numbers of a PEFT-wrapped model come from :func:`adapter_disabled`; variants that are not
PEFT models have no switch, so the loop measures them before ``Variant.apply``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn


@contextmanager
def adapter_disabled(model: nn.Module) -> Iterator[nn.Module]:
    """Run the block on the base model of a PEFT ``model`` (PEFT's ``disable_adapter()``).

    Raises ``TypeError`` for other models rather than silently measuring the tuned model as "before".
    """
    from peft import PeftModel  # deferred: peft's import cost is only paid by runs that use it

    if not isinstance(model, PeftModel):
        raise TypeError(f"{type(model).__name__} is not a PEFT model: measure 'before' ahead of Variant.apply instead")
    with model.disable_adapter():
        yield model
