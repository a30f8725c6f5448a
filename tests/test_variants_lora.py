"""Our ``lora`` against PEFT's LoRA: same outputs and gradients, and a save PEFT can load."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from peft import PeftModel, get_peft_model
from torch import nn
from transformers.pytorch_utils import Conv1D
from variants_fixtures import (  # noqa: F401  (one_torch_thread is an autouse fixture)
    FAMILIES,
    OneConv1D,
    assert_saved_adapter_reproduces,
    make_spec,
    make_variant,
    one_torch_thread,
    tiny_model,
    token_batch,
    train,
)

from lorabench.variants import AdapterSpec, get
from lorabench.variants._layers import low_rank_linear
from lorabench.variants._peft import lora_config
from lorabench.variants.base import OneLayer

TOLERANCE = dict(atol=1e-5, rtol=1e-5)
"""float32; ours scales the r-wide intermediate where PEFT scales the output, so only rounding differs."""


def ours_and_peft(module: nn.Module, rank: int, seed: int) -> tuple[nn.Module, nn.Module]:
    """Both adapters on copies of ``module``, PEFT's given our factors, with a random (non-zero) B."""
    spec = AdapterSpec(rank=rank, alpha=2.0 * rank, target_modules=("layer",), seed=seed)
    theirs = get_peft_model(copy.deepcopy(module), lora_config(spec))
    ours = get("lora")(spec).apply(module)
    with torch.no_grad():
        ours.layer.lora_B.normal_(generator=torch.Generator().manual_seed(seed))
        theirs.base_model.model.layer.lora_A["default"].weight.copy_(ours.layer.lora_A)
        theirs.base_model.model.layer.lora_B["default"].weight.copy_(ours.layer.lora_B)
    return ours, theirs


@settings(max_examples=25, deadline=None)
@given(
    m=st.integers(1, 24),
    n=st.integers(1, 24),
    rank=st.integers(1, 6),
    tokens=st.integers(1, 5),
    conv1d=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_lora_matches_peft_outputs_and_gradients(
    m: int, n: int, rank: int, tokens: int, conv1d: bool, seed: int
) -> None:
    torch.manual_seed(seed)
    module = OneConv1D(m, n) if conv1d else OneLayer(m, n, bias=True)
    ours, theirs = ours_and_peft(module, rank, seed)
    x = torch.randn(2, tokens, n, requires_grad=True)
    x_theirs = x.detach().clone().requires_grad_()
    y, y_theirs = ours(x), theirs(x_theirs)
    torch.testing.assert_close(y, y_theirs, **TOLERANCE)
    weights = torch.randn_like(y)
    (y * weights).sum().backward()
    (y_theirs * weights).sum().backward()
    peft_layer = theirs.base_model.model.layer
    torch.testing.assert_close(x.grad, x_theirs.grad, **TOLERANCE)
    torch.testing.assert_close(ours.layer.lora_A.grad, peft_layer.lora_A["default"].weight.grad, **TOLERANCE)
    torch.testing.assert_close(ours.layer.lora_B.grad, peft_layer.lora_B["default"].weight.grad, **TOLERANCE)


def test_lora_init_follows_peft_and_the_seed() -> None:
    """A ~ kaiming-uniform, bound 1/sqrt(n) (PEFT's nn.Linear default); B zero; same seed, same A."""
    first = make_variant("llama", "lora").apply(tiny_model("llama"))
    second = make_variant("llama", "lora").apply(tiny_model("llama"))
    layer = first.model.layers[0].mlp.down_proj  # n = 128
    bound = 1 / math.sqrt(128)
    assert layer.lora_A.abs().max() <= bound and layer.lora_A.abs().max() > 0.9 * bound
    assert not layer.lora_B.any()
    assert torch.equal(layer.lora_A, second.model.layers[0].mlp.down_proj.lora_A)


@pytest.mark.parametrize("family", FAMILIES)
def test_lora_save_loads_in_peft_with_the_same_outputs(family: str, tmp_path) -> None:
    assert_saved_adapter_reproduces(family, "lora", tmp_path, **TOLERANCE)


def test_lora_saved_config_matches_the_spec(tmp_path) -> None:
    variant = get("lora")(make_spec("gpt2", "lora", rank=2))
    variant.save(variant.apply(tiny_model("gpt2")), tmp_path)
    config = PeftModel.from_pretrained(tiny_model("gpt2"), str(tmp_path)).peft_config["default"]
    assert (config.r, config.lora_alpha, config.fan_in_fan_out) == (2, 4.0, True)


@pytest.mark.parametrize("kind", ["linear", "linear_bias", "conv1d"])
@pytest.mark.parametrize("input_grad", [True, False])
def test_fused_low_rank_linear_is_autograd_s_base_plus_adapter(kind: str, input_grad: bool) -> None:
    """The fused function (LoRA's and additive's forward) gives autograd's outputs and gradients, in double."""
    torch.manual_seed(0)
    base = {"linear": nn.Linear(12, 8, bias=False), "linear_bias": nn.Linear(12, 8), "conv1d": Conv1D(8, 12)}[kind]
    base = base.double().requires_grad_(False)
    A = torch.randn(3, 12, dtype=torch.double, requires_grad=True)
    B = torch.randn(8, 3, dtype=torch.double, requires_grad=True)
    x = torch.randn(2, 5, 12, dtype=torch.double, requires_grad=input_grad)
    upstream = torch.randn(2, 5, 8, dtype=torch.double)
    wrt = (x, A, B) if input_grad else (A, B)
    fused = low_rank_linear(x, base, A, B, 0.7)
    plain = base(x) + (x @ A.T * 0.7) @ B.T
    torch.testing.assert_close(fused, plain)
    for got, want in zip(
        torch.autograd.grad(fused, wrt, upstream), torch.autograd.grad(plain, wrt, upstream), strict=True
    ):
        torch.testing.assert_close(got, want)
    assert torch.autograd.gradcheck(lambda *t: low_rank_linear(t[0] if input_grad else x, base, *t[-2:], 0.7), wrt)
