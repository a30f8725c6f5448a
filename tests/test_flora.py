"""Random-projection gradient compression (docs/variants.md §5): unbiased for full SGD, rank r per step."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from variants_fixtures import OneConv1D, one_torch_thread  # noqa: F401  (autouse)

from lorabench.train import TrainSettings, make_optimizer
from lorabench.variants import AdapterSpec, get
from lorabench.variants.base import OneLayer
from lorabench.variants.flora import dense_gradient, draw_projection, project


@pytest.mark.parametrize("m, n, r, seed", [(6, 8, 2, 0), (5, 12, 3, 1), (4, 4, 1, 2)])
def test_the_mean_projected_gradient_is_the_gradient(m: int, n: int, r: int, seed: int) -> None:
    """E[G P P^T] = G for P with N(0, 1/r) entries, and E||G (P P^T - I)||^2 = ||G||^2 (n + 1) / r (the Wishart
    second moment), so the mean of N draws misses G by sqrt((n + 1) / (r N)) relative: checked at 2.5x that, and
    the single draws' mean squared error at 15% of its formula."""
    generator = torch.Generator().manual_seed(seed)
    G = torch.randn(m, n, generator=generator, dtype=torch.float64)
    draws = 4000
    projected = torch.stack([project(G, draw_projection(n, r, generator, G)) for _ in range(draws)])
    relative = ((projected.mean(0) - G).norm() / G.norm()).item()
    assert relative < 2.5 * math.sqrt((n + 1) / (r * draws)), relative
    single = ((projected - G).pow(2).sum((1, 2)).mean() / G.pow(2).sum()).item()
    assert single == pytest.approx((n + 1) / r, rel=0.15)


@pytest.mark.parametrize("layer_type", [OneLayer, OneConv1D])
def test_an_sgd_step_is_minus_lr_times_the_projected_gradient_of_rank_r(layer_type: type) -> None:
    """Through the variant's hook: W' - W = -lr (G P) P^T with the layer's P, of rank r, for Linear and Conv1D."""
    m, n, r, lr = 12, 10, 3, 0.1
    variant = get("flora")(AdapterSpec(rank=r, alpha=2.0 * r, target_modules=("layer",), seed=4))
    model = variant.apply(layer_type(m, n))
    layer = model.layer
    before = layer.weight.detach().clone()
    x, upstream = torch.randn(7, n), torch.randn(7, m)
    optimizer = make_optimizer(
        variant.parameter_groups(model, lr), TrainSettings(steps=1, batch_size=7, lr=lr, optimizer=variant.optimizer)
    )
    (model(x) * upstream).sum().backward()
    G = dense_gradient(layer).clone()
    variant.transform_gradients(model, step=0)
    optimizer.step()
    change = layer.weight.detach() - before
    change = change.T if layer_type is OneConv1D else change
    P = layer.flora_projection
    torch.testing.assert_close(change, -lr * (G @ P) @ P.T)
    assert torch.linalg.matrix_rank(change).item() == r
    assert [name for name, p in model.named_parameters() if p.requires_grad] == ["layer.weight"]


def test_projections_are_redrawn_every_resample_every_steps() -> None:
    variant = get("flora")(AdapterSpec(rank=2, alpha=4.0, target_modules=("layer",), options={"resample_every": 2}))
    model = variant.apply(OneLayer(4, 6))
    seen = []
    for step in range(5):
        model(torch.randn(3, 6)).sum().backward()
        variant.transform_gradients(model, step)
        seen.append(model.layer.flora_projection.clone())
        model.zero_grad()
    same = [torch.equal(a, b) for a, b in itertools.pairwise(seen)]
    assert same == [True, False, True, False]  # redrawn before steps 2 and 4
