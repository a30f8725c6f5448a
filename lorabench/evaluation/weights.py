"""Weight-space forgetting: how far fine-tuning moved each adapted layer away from the base weights.

Two numbers per layer, both computable for every run without any benchmark:

* **Intruder dimensions** (Shuttleworth et al., 2024, "LoRA vs Full Fine-tuning: An Illusion of
  Equivalence"): of the top-``k`` left singular vectors of the tuned weight ``W + dW``, how many
  have a best absolute cosine similarity below ``threshold`` to *every* left singular vector of the
  base ``W``. Such directions are new to the layer; the paper links their count to forgetting.
* **Effective rank of dW** (Roy & Vetterli, 2007): ``exp(H(p))`` with ``p = s / sum(s)`` the
  normalised singular values of ``dW``; a rank-``r`` update with equal singular values has
  effective rank ``r``, and a zero update has effective rank 0.

Weights are ``(m, n)`` as ``nn.Linear`` stores them (the caller transposes GPT-2 ``Conv1D``).
SVDs run in float32 on the tensors' own device, so passing CUDA tensors makes 0.5B-model layers fast.
"""

from __future__ import annotations

import torch
from torch import Tensor


def intruder_dimensions(base: Tensor, tuned: Tensor, k: int = 10, threshold: float = 0.5) -> int:
    """Number of the top-``k`` singular directions of ``tuned`` that ``base`` has no close match for."""
    return _intruders(_left_singular_vectors(base.float()), tuned, k, threshold)


def _intruders(base_u: Tensor, tuned: Tensor, k: int, threshold: float) -> int:
    """:func:`intruder_dimensions` given the base's left singular vectors ``base_u``."""
    tuned_u = _left_singular_vectors(tuned.float())[:, :k]
    # Singular vectors are defined up to sign, hence the absolute cosine (columns are unit norm).
    best_cosine = (tuned_u.T @ base_u).abs().amax(dim=1)
    return int((best_cosine < threshold).sum())


def effective_rank(matrix: Tensor) -> float:
    """Roy & Vetterli's effective rank ``exp(entropy(s / sum(s)))``; 0 for a zero matrix."""
    singular_values = torch.linalg.svdvals(_tall(matrix.float()))
    total = singular_values.sum()
    if total <= 0:
        return 0.0
    p = singular_values / total
    p = p[p > 0]
    return float(torch.exp(-(p * p.log()).sum()))


def _left_singular_vectors(matrix: Tensor) -> Tensor:
    """``U`` of the thin SVD, columns by descending singular value; wide matrices go through ``matrix.T``."""
    if matrix.shape[0] < matrix.shape[1]:
        return torch.linalg.svd(matrix.T, full_matrices=False).Vh.T
    return torch.linalg.svd(matrix, full_matrices=False).U


def _tall(matrix: Tensor) -> Tensor:
    """The same singular values, in the orientation LAPACK factors fastest (3-4x for 896 x 4864 on CPU)."""
    return matrix.T if matrix.shape[0] < matrix.shape[1] else matrix


def base_vectors(base: dict[str, Tensor]) -> dict[str, Tensor]:
    """Each base layer's left singular vectors, for :func:`weight_forgetting`: every run of a job compares with the
    same base, so a job decomposes it once. Those SVDs are about 40% of the measure's time (random matrices of
    SmolLM2-135M's 210 layer shapes on one CPU thread: 12.6 s of 31.6 s, 2026-12-04); they hold about as much memory
    as the base weights themselves."""
    return {name: _left_singular_vectors(weight.float()) for name, weight in base.items()}


def weight_forgetting(
    base: dict[str, Tensor],
    tuned: dict[str, Tensor],
    k: int = 10,
    threshold: float = 0.5,
    vectors: dict[str, Tensor] | None = None,
) -> dict:
    """Per-layer intruder count and ``dW`` effective rank, plus their means over layers.

    ``vectors``: :func:`base_vectors` of ``base``, where the caller keeps them for several calls.

    Returns ``{"layers": {name: {"intruders": int, "effective_rank": float}},
    "intruder_dimensions_mean": float, "delta_effective_rank_mean": float}``.
    """
    if base.keys() != tuned.keys():
        raise ValueError(
            f"base and tuned must name the same layers; only in base: {sorted(base.keys() - tuned.keys())}, "
            f"only in tuned: {sorted(tuned.keys() - base.keys())}"
        )
    if not base:
        raise ValueError("weight_forgetting needs at least one layer")
    vectors = base_vectors(base) if vectors is None else vectors
    layers = {
        name: {
            "intruders": _intruders(vectors[name], tuned[name], k, threshold),
            "effective_rank": effective_rank(tuned[name].float() - base[name].float()),
        }
        for name in sorted(base)
    }
    return {
        "layers": layers,
        "intruder_dimensions_mean": sum(v["intruders"] for v in layers.values()) / len(layers),
        "delta_effective_rank_mean": sum(v["effective_rank"] for v in layers.values()) / len(layers),
    }
