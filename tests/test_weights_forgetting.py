"""Weight-space forgetting: intruder dimensions and effective rank on matrices with known spectra."""

from __future__ import annotations

import math

import pytest
import torch

from lorabench.evaluation.weights import base_vectors, effective_rank, intruder_dimensions, weight_forgetting


def _orthonormal(rows: int, cols: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.linalg.qr(torch.randn(rows, cols, generator=generator)).Q


def _planted(base_rank: int = 4, m: int = 32, n: int = 24, strength: float = 50.0):
    """A rank-``base_rank`` W and W plus one strong direction outside W's column space."""
    u = _orthonormal(m, base_rank + 1, seed=0)
    v = _orthonormal(n, base_rank + 1, seed=1)
    base = u[:, :base_rank] @ torch.diag(torch.arange(base_rank, 0, -1.0)) @ v[:, :base_rank].T
    tuned = base + strength * torch.outer(u[:, base_rank], v[:, base_rank])
    return base, tuned


def test_identical_weights_have_no_intruders_and_zero_delta_rank():
    weight = torch.randn(32, 24, generator=torch.Generator().manual_seed(0))
    result = weight_forgetting({"q": weight}, {"q": weight.clone()}, k=10)
    assert result["layers"]["q"] == {"intruders": 0, "effective_rank": 0.0}
    assert result["intruder_dimensions_mean"] == 0.0
    assert result["delta_effective_rank_mean"] == 0.0


def test_a_planted_orthogonal_direction_is_one_intruder():
    base, tuned = _planted()
    assert intruder_dimensions(base, tuned, k=1) == 1


def test_a_planted_direction_inside_the_column_space_is_not_an_intruder():
    base, _ = _planted()
    assert intruder_dimensions(base, 3.0 * base, k=4) == 0


@pytest.mark.parametrize("rank", [1, 3, 7])
def test_effective_rank_of_equal_singular_values_is_the_rank(rank):
    u, v = _orthonormal(20, rank, seed=2), _orthonormal(12, rank, seed=3)
    assert math.isclose(effective_rank(2.5 * u @ v.T), rank, rel_tol=1e-4)


def test_effective_rank_drops_below_rank_for_unequal_singular_values():
    u, v = _orthonormal(20, 2, seed=4), _orthonormal(12, 2, seed=5)
    value = effective_rank(u @ torch.diag(torch.tensor([10.0, 0.1])) @ v.T)
    assert 1.0 < value < 1.2


def test_summary_means_average_over_layers():
    base, tuned = _planted()
    rank_two = _orthonormal(32, 2, seed=6) @ _orthonormal(24, 2, seed=7).T
    result = weight_forgetting({"a": base, "b": base}, {"a": tuned, "b": base + rank_two}, k=1)
    assert result["layers"]["a"]["intruders"] == 1
    assert math.isclose(result["layers"]["a"]["effective_rank"], 1.0, rel_tol=1e-4)
    assert math.isclose(result["layers"]["b"]["effective_rank"], 2.0, rel_tol=1e-4)
    assert result["intruder_dimensions_mean"] == pytest.approx((1 + result["layers"]["b"]["intruders"]) / 2)
    assert result["delta_effective_rank_mean"] == pytest.approx(1.5, rel=1e-4)


def test_bfloat16_weights_are_accepted():
    base, tuned = _planted()
    assert intruder_dimensions(base.bfloat16(), tuned.bfloat16(), k=1) == 1


def test_mismatched_layer_names_are_rejected():
    weight = torch.zeros(4, 4)
    with pytest.raises(ValueError, match="only in tuned: \\['v'\\]"):
        weight_forgetting({"q": weight}, {"q": weight, "v": weight})


def test_the_base_vectors_are_computed_once_and_reused_with_the_same_results():
    base, tuned = _planted()
    alone = weight_forgetting({"q": base}, {"q": tuned}, k=1)
    kept = base_vectors({"q": base})
    assert weight_forgetting({"q": base}, {"q": tuned}, k=1, vectors=kept) == alone
    assert set(kept) == {"q"} and kept["q"].shape == (32, 24)
    # a run of the job reads the kept vectors instead of decomposing the base again: planting the intruder's own
    # direction among them makes it no intruder
    kept["q"] = torch.linalg.qr(tuned).Q
    assert weight_forgetting({"q": base}, {"q": tuned}, k=1, vectors=kept)["layers"]["q"]["intruders"] == 0
    assert alone["layers"]["q"]["intruders"] == 1
