"""Linear erasure of the uploader's taste from video vectors (LEACE, Belrose et al., 2023).

Given video vectors x (N, D) and each row's uploader prior z (N, G), find the affine map

    x' = x − M (x − μ),   M = Σ^{1/2} U Uᵀ Σ^{-1/2},

with Σ the covariance of x, μ its mean and U an orthonormal basis of the column space of
Σ^{-1/2} Cov(x, z). Afterwards Cov(x', z) = 0, so no linear predictor reads the taste off
x' better than a constant, while x moves as little as possible (in the Σ⁻¹ norm). Scores
q'·p then cannot lean on the taste the logs taught the encoder (docs/results.md).
"""
from __future__ import annotations

import torch


def fit_eraser(x: torch.Tensor, z: torch.Tensor, eps: float = 1e-6) -> tuple[torch.Tensor, torch.Tensor]:
    """(μ (D,), M (D, D)) that erase z's linear information from x; float64 inside, x's dtype out."""
    xd, zd = x.double(), z.double()
    mu = xd.mean(0)
    xc, zc = xd - mu, zd - zd.mean(0)
    sigma = xc.T @ xc / len(xd)  # (D, D)
    cross = xc.T @ zc / len(xd)  # (D, G)
    evals, evecs = torch.linalg.eigh(sigma)
    keep = evals > eps * evals.max().clamp_min(1e-30)
    v, e = evecs[:, keep], evals[keep]
    whiten, unwhiten = (v / e.sqrt()) @ v.T, (v * e.sqrt()) @ v.T  # Σ^{-1/2}, Σ^{1/2} on Σ's support
    u, s, _ = torch.linalg.svd(whiten @ cross, full_matrices=False)
    u = u[:, s > 1e-8 * s.max().clamp_min(1e-30)]
    m = unwhiten @ u @ u.T @ whiten
    return mu.to(x.dtype), m.to(x.dtype)


def erase(x: torch.Tensor, mu: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """x' = x − (x − μ) Mᵀ for rows x (B, D)."""
    return x - (x - mu) @ m.T
