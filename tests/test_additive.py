"""The additive decomposition (docs/variants.md §3): efficient forward, gradients, rank, invalid ranks."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from variants_fixtures import make_variant, one_torch_thread, tiny_model  # noqa: F401

from lorabench.theory import additive_rank
from lorabench.variants import AdapterSpec, get
from lorabench.variants.additive import additive_delta, additive_forward
from lorabench.variants.base import OneLayer

shapes = st.tuples(st.integers(1, 6), st.integers(1, 8), st.integers(1, 8))  # r, m/r, n/r


def random_factors(m: int, n: int, r: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(m, r, generator=generator, dtype=torch.float64), torch.randn(
        r, n, generator=generator, dtype=torch.float64
    )


def test_dense_update_is_the_formula_entry_by_entry() -> None:
    U, V = random_factors(6, 9, 3, seed=0)
    dW = additive_delta(U, V)
    assert all(dW[i, j] == U[i, j % 3] + V[i % 3, j] for i in range(6) for j in range(9))


@settings(max_examples=40, deadline=None)
@given(shape=shapes, tokens=st.integers(1, 4), scale=st.floats(0.1, 4.0), seed=st.integers(0, 2**16))
def test_efficient_forward_equals_the_dense_product(
    shape: tuple[int, int, int], tokens: int, scale: float, seed: int
) -> None:
    r, m, n = shape[0], shape[0] * shape[1], shape[0] * shape[2]
    U, V = random_factors(m, n, r, seed)
    x = torch.randn(2, tokens, n, dtype=torch.float64, generator=torch.Generator().manual_seed(seed + 1))
    efficient = additive_forward(x, U, V, scale)
    torch.testing.assert_close(efficient, scale * x @ additive_delta(U, V).T)


@settings(max_examples=25, deadline=None)
@given(shape=shapes, seed=st.integers(0, 2**16))
def test_factor_gradients_are_block_row_and_column_sums_of_G(shape: tuple[int, int, int], seed: int) -> None:
    """dL/dU[i, k] = sum_{j = k mod r} G[i, j] and dL/dV[k, j] = sum_{i = k mod r} G[i, j] (alpha = r)."""
    r, m, n = shape[0], shape[0] * shape[1], shape[0] * shape[2]
    layer = get("additive")(AdapterSpec(rank=r, alpha=r, target_modules=("layer",))).apply(OneLayer(m, n)).layer
    generator = torch.Generator().manual_seed(seed)
    x, delta = torch.randn(5, n, generator=generator), torch.randn(5, m, generator=generator)
    (layer(x) * delta).sum().backward()
    G = delta.T @ x  # the full gradient of W
    torch.testing.assert_close(layer.U.grad, G.unflatten(1, (n // r, r)).sum(1), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(layer.V.grad, G.unflatten(0, (m // r, r)).sum(0), atol=1e-5, rtol=1e-5)


def test_rank_of_the_update_is_2r_for_random_factors() -> None:
    table = additive_rank([(8, 12, 1), (16, 24, 4), (64, 32, 8)], seed=0)
    assert table["rank"].tolist() == [2, 8, 16]
    assert (table["rank"] == table["expected"]).all()


def test_both_factors_start_at_zero_and_still_learn() -> None:
    variant = make_variant("gpt2", "additive")
    layer = variant.apply(tiny_model("gpt2")).transformer.h[0].attn.c_attn
    assert not layer.U.any() and not layer.V.any()
    layer(torch.randn(3, 64)).sum().backward()
    assert layer.U.grad.abs().sum() > 0 and layer.V.grad.abs().sum() > 0


def test_rank_that_does_not_divide_the_layer_is_a_clear_error_naming_it() -> None:
    """GPT-2's c_attn is (m=192, n=64): r = 3 divides 192 but not 64."""
    with pytest.raises(ValueError, match=r"'transformer\.h\.0\.attn\.c_attn' of shape \(m=192, n=64\).*divide"):
        make_variant("gpt2", "additive", rank=3).apply(tiny_model("gpt2"))
    assert get("additive").rank_problem(192, 64, 3) is not None
    assert get("additive").rank_problem(192, 64, 8) is None


@settings(max_examples=30, deadline=None)
@given(shape=shapes, tokens=st.integers(1, 5), bias=st.booleans(), seed=st.integers(0, 2**16))
def test_fused_layer_computes_the_naive_formula_and_all_its_gradients(
    shape: tuple[int, int, int], tokens: int, bias: bool, seed: int
) -> None:
    """In float64: output and the gradients of x, U, V and the bias equal autograd's through the dense
    ``x (W + c dW)^T + b``, though the fused function never builds dW nor differentiates fold and tile."""
    r, m, n = shape[0], shape[0] * shape[1], shape[0] * shape[2]
    torch.manual_seed(seed)
    base = OneLayer(m, n, bias=bias).double()
    layer = get("additive")(AdapterSpec(rank=r, alpha=3.0 * r, target_modules=("layer",))).apply(base).layer
    assert layer.fused
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        layer.U.copy_(torch.randn(m, r, generator=generator, dtype=torch.float64))
        layer.V.copy_(torch.randn(r, n, generator=generator, dtype=torch.float64))
    layer.base_layer.requires_grad_(True)
    x = torch.randn(2, tokens, n, dtype=torch.float64, generator=generator, requires_grad=True)
    upstream = torch.randn(2, tokens, m, dtype=torch.float64, generator=generator)
    trained = [x, layer.U, layer.V, *([layer.base_layer.bias] if bias else [])]
    fused = layer(x)
    fused_grads = torch.autograd.grad(fused, trained, upstream)
    W = layer.base_layer.weight.detach()
    naive = x @ (W + 3.0 * additive_delta(layer.U, layer.V)).T + (layer.base_layer.bias if bias else 0)
    torch.testing.assert_close(fused, naive)
    for got, expected in zip(fused_grads, torch.autograd.grad(naive, trained, upstream), strict=True):
        torch.testing.assert_close(got, expected)


def test_additive_saves_what_lora_saves_and_holds_no_fold_or_tile() -> None:
    """The constant blocks are neither buffers nor saved for backward: the input and an r-wide intermediate,
    as LoRA's fused function saves (its A's gradient needs x, its B's the r-wide x A^T)."""
    from lorabench.measure import saved_activation_bytes

    saved = {}
    for name in ("lora", "additive"):
        model = get(name)(AdapterSpec(rank=4, alpha=8, target_modules=("layer",))).apply(OneLayer(32, 48))
        assert not list(model.buffers())
        x = torch.randn(10, 48, requires_grad=True)
        saved[name] = saved_activation_bytes(model, lambda model=model, x=x: model(x).sum())
    assert saved["additive"] == saved["lora"] == (10 * 48 + 10 * 4) * 4
