"""Monte Carlo checks of the claims in docs/variants.md, shared by the tests and the report figures.

Each function returns a tidy DataFrame and runs in well under 3 s on one CPU core with its defaults.
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd
import torch

from lorabench.variants.additive import additive_delta
from lorabench.variants.resampled import draw_factors, factor_gradients, merged_update


def resampled_update_error(
    m: int = 32,
    n: int = 24,
    r: int = 4,
    samples: Sequence[int] = (16, 64, 256, 1024, 4096),
    seed: int = 0,
    lr: float = 1e-2,
) -> pd.DataFrame:
    """Relative Frobenius error of the mean first-order resampled update against ``-2 lr G`` (docs/variants.md §2).

    Uses the ``resampled`` variant's own draw, gradient and merge code; the means are running means
    over one stream of draws, so the error at ``N`` samples should fall like ``1/sqrt(N)``.
    """
    generator = torch.Generator().manual_seed(seed)
    G = torch.randn(m, n, generator=generator, dtype=torch.float64)
    U, V = (f.double() for f in draw_factors(m, n, r, generator, batch=(max(samples),)))
    # G = delta^T x with x = I_n and delta = G^T: the variant's backward formula, fed the full gradient.
    grad_U, grad_V = factor_gradients(torch.eye(n, dtype=G.dtype), G.T, U, V)
    left, right = merged_update(U, V, -lr * grad_U, -lr * grad_V, exact=False)
    running_mean = (left @ right).cumsum(0) / torch.arange(1, max(samples) + 1, dtype=G.dtype)[:, None, None]
    target = -2 * lr * G
    errors = [float((running_mean[count - 1] - target).norm() / target.norm()) for count in samples]
    return pd.DataFrame({"samples": list(samples), "relative_error": errors})


def frozen_a_residual(
    ms: Sequence[int] = (16, 32, 64), rs: Sequence[int] = (1, 2, 4, 8), trials: int = 400, seed: int = 0
) -> pd.DataFrame:
    """Mean ``||(I - P) A*||_F^2`` over Gaussian ``A0``, ``A*`` (m, r), ``P`` the projector on ``A0``'s columns.

    docs/variants.md §4 expects ``r (m - r)``: each column of ``A*`` keeps ``m - r`` chi-square dimensions.
    """
    generator = torch.Generator().manual_seed(seed)
    rows = []
    for m in ms:
        for r in (r for r in rs if r < m):
            A0, A_star = torch.randn(2, trials, m, r, generator=generator, dtype=torch.float64)
            C = torch.linalg.lstsq(A0, A_star).solution  # the best C with A* ~ A0 C
            residual = (A_star - A0 @ C).square().sum(dim=(-2, -1)).mean()
            rows.append({"m": m, "r": r, "residual": float(residual), "expected": r * (m - r)})
    return pd.DataFrame(rows, columns=["m", "r", "residual", "expected"])


def additive_rank(
    shapes: Sequence[tuple[int, int, int]] = ((8, 12, 1), (16, 24, 4), (64, 32, 8), (12, 8, 4)), seed: int = 0
) -> pd.DataFrame:
    """Numerical rank of the additive ``dW`` (docs/variants.md §3) for random factors, against ``min(2r, m, n)``."""
    generator = torch.Generator().manual_seed(seed)
    rows = []
    for m, n, r in shapes:
        U = torch.randn(m, r, generator=generator, dtype=torch.float64)
        V = torch.randn(r, n, generator=generator, dtype=torch.float64)
        rank = int(torch.linalg.matrix_rank(additive_delta(U, V)))
        rows.append({"m": m, "n": n, "r": r, "rank": rank, "expected": min(2 * r, m, n)})
    return pd.DataFrame(rows, columns=["m", "n", "r", "rank", "expected"])
