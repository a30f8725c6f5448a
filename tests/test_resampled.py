"""Resampled random projections (docs/variants.md §2): a zero forward, LoRA-sized gradients, exact merges."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from variants_fixtures import OneConv1D, make_variant, one_torch_thread, tiny_model, token_batch  # noqa: F401

from lorabench.train import TrainSettings, make_optimizer
from lorabench.variants import AdapterSpec, get
from lorabench.variants._layers import dense_weight
from lorabench.variants.base import OneLayer
from lorabench.variants.resampled import draw_factors


def resampled(module: nn.Module, rank: int = 2, seed: int = 0, **options: int) -> tuple[nn.Module, object]:
    variant = get("resampled")(AdapterSpec(rank=rank, alpha=1.0, target_modules=("layer",), seed=seed, options=options))
    return variant.apply(module), variant


@settings(max_examples=25, deadline=None)
@given(
    m=st.integers(1, 16), n=st.integers(1, 16), rank=st.integers(1, 4), conv1d=st.booleans(), seed=st.integers(0, 2**16)
)
def test_gradients_are_those_of_the_explicit_zero_product(m: int, n: int, rank: int, conv1d: bool, seed: int) -> None:
    """The custom backward equals autograd through ``base(x) + U V x - U0 V0 x`` at ``U = U0``, ``V = V0``."""
    torch.manual_seed(seed)
    model, _ = resampled(OneConv1D(m, n) if conv1d else OneLayer(m, n, bias=True), rank, seed)
    layer = model.layer
    x = torch.randn(3, 2, n, requires_grad=True)
    U, V = layer.U.detach().clone().requires_grad_(), layer.V.detach().clone().requires_grad_()
    x_explicit = x.detach().clone().requires_grad_()
    explicit = layer.base_layer(x_explicit) + x_explicit @ (U @ V - layer.U0 @ layer.V0).T
    y = model(x)
    assert torch.equal(y, layer.base_layer(x))  # the random product adds exactly nothing
    weights = torch.randn_like(y)
    (y * weights).sum().backward()
    (explicit * weights).sum().backward()
    for ours, reference in ((layer.U.grad, U.grad), (layer.V.grad, V.grad), (x.grad, x_explicit.grad)):
        torch.testing.assert_close(ours, reference, atol=1e-5, rtol=1e-5)
    assert layer.base_layer.weight.grad is None  # no m x n gradient anywhere


def test_one_sgd_step_through_the_training_optimizer_is_the_two_factor_update_with_its_square_term() -> None:
    """With ``optimizer: sgd`` a step changes W by -lr (U U^T G + G V^T V) + lr^2 G V^T U^T G (docs/variants.md §1),
    G = dL/dW."""
    model, variant = resampled(OneLayer(6, 5, bias=True), rank=2)
    layer = model.layer
    W0, U, V = (t.detach().clone() for t in (dense_weight(layer.base_layer), layer.U, layer.V))
    x, lr = torch.randn(7, 5), 0.05
    W = W0.clone().requires_grad_()
    nn.functional.linear(x, W, layer.base_layer.bias).square().sum().backward()
    G = W.grad
    optimizer = make_optimizer([layer.U, layer.V], TrainSettings(steps=1, batch_size=1, lr=lr, optimizer="sgd"))
    model(x).square().sum().backward()
    optimizer.step()
    variant.after_step(model, optimizer)
    expected = W0 - lr * (U @ U.T @ G + G @ V.T @ V) + lr**2 * G @ V.T @ U.T @ G
    torch.testing.assert_close(dense_weight(layer.base_layer), expected, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("conv1d", [False, True])
def test_after_step_merges_the_exact_update_and_redraws(conv1d: bool) -> None:
    model, variant = resampled(OneConv1D(12, 8) if conv1d else OneLayer(12, 8), rank=3)
    layer = model.layer
    W0 = dense_weight(layer.base_layer).detach().clone()
    optimizer = torch.optim.AdamW([layer.U, layer.V], lr=0.1)
    model(torch.randn(5, 8)).square().sum().backward()
    optimizer.step()
    expected = W0 + layer.U.detach() @ layer.V.detach() - layer.U0 @ layer.V0
    stepped_U = layer.U.detach().clone()
    variant.after_step(model, optimizer)
    torch.testing.assert_close(dense_weight(layer.base_layer), expected, atol=1e-6, rtol=1e-6)
    assert not torch.equal(layer.U, stepped_U)  # a fresh draw
    assert torch.equal(layer.U, layer.U0) and torch.equal(layer.V, layer.V0)
    assert layer.U not in optimizer.state and layer.V not in optimizer.state


def test_resample_every_k_keeps_factors_and_optimizer_state_between_draws() -> None:
    model, variant = resampled(OneLayer(10, 6), rank=2, resample_every=3)
    layer = model.layer
    optimizer = torch.optim.AdamW([layer.U, layer.V], lr=0.1)
    redrawn = []
    for _ in range(3):
        model(torch.randn(4, 6)).square().sum().backward()
        optimizer.step()
        optimizer.zero_grad()
        stepped_U = layer.U.detach().clone()
        variant.after_step(model, optimizer)
        redrawn.append(not torch.equal(layer.U, stepped_U))
        assert torch.equal(layer.U, layer.U0)  # merged every step: the forward stays exactly base(x)
    assert redrawn == [False, False, True]
    assert layer.U not in optimizer.state


def test_draws_have_variance_one_over_r_and_follow_the_seed() -> None:
    U, V = draw_factors(1000, 2000, 8, torch.Generator().manual_seed(0))
    assert U.shape == (1000, 8) and V.shape == (8, 2000)
    for factor in (U, V):  # r * sample variance ~ 1, standard error sqrt(2 / entries); allow 4 of them
        assert abs(factor.var().item() * 8 - 1) < 4 * (2 / factor.numel()) ** 0.5
    first = make_variant("llama", "resampled").apply(tiny_model("llama"))
    second = make_variant("llama", "resampled").apply(tiny_model("llama"))
    assert torch.equal(first.model.layers[1].mlp.up_proj.U, second.model.layers[1].mlp.up_proj.U)


def test_a_fresh_adapter_leaves_the_model_output_bit_identical() -> None:
    batch = token_batch()
    base = tiny_model("llama")
    with torch.no_grad():
        before = base(**batch).logits
        after = make_variant("llama", "resampled").apply(base)(**batch).logits
    assert torch.equal(before, after)
