"""Linear erasure of the uploader's taste from video vectors (LEACE, Belrose et al., 2023).

Given video vectors x (N, D) and each row's uploader prior z (N, G), find the affine map

    x' = x − M (x − μ),   M = Σ^{1/2} U Uᵀ Σ^{-1/2},

with Σ the covariance of x, μ its mean and U an orthonormal basis of the column space of
Σ^{-1/2} Cov(x, z). Afterwards Cov(x', z) = 0, so no linear predictor reads the taste off
x' better than a constant, while x moves as little as possible (in the Σ⁻¹ norm). Scores
q'·p then cannot lean on the taste the logs taught the encoder (docs/results.md).

Erasing all of the taste also erases content that the taste happens to shape (a hip-hop fan
films street dance, which hip-hop does fit). :func:`content_view` reads the content of a video
vector that predicts its music on PGC (professional edits: no uploader taste), and
:func:`residualize` gives the part of the taste that this content does not explain. Fed to
:func:`fit_eraser` instead of the taste, only the directions that carry taste *beyond*
content are removed (docs/method.md §5.4).
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F


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


def _ridge(a: torch.Tensor, b: torch.Tensor, ridge: float) -> torch.Tensor:
    """Coefficients of [a ; 1] → b (float64), the slopes shrunk by λ·mean(diag(aᵀa)), the intercept not."""
    a1 = torch.cat([a, torch.ones_like(a[:, :1])], dim=1)
    gram = a1.T @ a1
    eye = torch.eye(len(gram), dtype=gram.dtype, device=gram.device)
    eye[-1, -1] = 0
    reg = ridge * gram.diagonal()[:-1].mean().clamp_min(1e-12)
    return torch.linalg.solve(gram + reg * eye, a1.T @ b)


def _apply(a: torch.Tensor, coef: torch.Tensor) -> torch.Tensor:
    return a @ coef[:-1] + coef[-1]


def content_view(q_ref: torch.Tensor, y_ref: torch.Tensor, q: torch.Tensor, ridge: float = 1e-3) -> torch.Tensor:
    """(N, G) the part of video vectors q that predicts y, a music label (e.g. genre one-hot), fitted on
    reference pairs (q_ref (N_ref, D), y_ref (N_ref, G)) that carry no uploader taste: the PGC segments.

    On PGC a direction of q that only follows the uploader's taste (a visual style) predicts
    nothing about the music, so it gets no weight; content that fits a genre does.
    """
    return _apply(q.double(), _ridge(q_ref.double(), y_ref.double(), ridge)).to(q.dtype)


def residualize(z: torch.Tensor, c: torch.Tensor, folds: int = 5, ridge: float = 1e-3) -> torch.Tensor:
    """z − ẑ(c): each row's z (N, G) minus its out-of-fold ridge prediction from content c (N, D).

    The prediction for a block of rows is fitted on the other blocks (contiguous, deterministic),
    so the residual holds what c cannot predict on rows it was not fitted to: no overfit to
    small data. Float64 inside, z's dtype out.
    """
    zd, cd = z.double(), c.double()
    n = len(zd)
    edges = torch.linspace(0, n, max(2, min(folds, n // 2)) + 1).long().tolist()
    out = torch.empty_like(zd)
    for lo, hi in zip(edges[:-1], edges[1:]):
        fit = torch.cat([torch.arange(0, lo), torch.arange(hi, n)]).to(zd.device)
        out[lo:hi] = zd[lo:hi] - _apply(cd[lo:hi], _ridge(cd[fit], zd[fit], ridge))
    return out.to(z.dtype)


@torch.no_grad()
def fit_taste_eraser(embed: Callable[[torch.Tensor], torch.Tensor], x_v: torch.Tensor, video: torch.Tensor,
                     prior: torch.Tensor, pgc: tuple[torch.Tensor, torch.Tensor] | None = None,
                     residual: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(μ, M) erasing the taste from ``embed``'s video vectors of the training rows ``x_v[video]``.

    ``prior`` (N, G) is each row's uploader prior. With ``residual``, ``pgc`` = (segment features
    (N_p, F_v), their music's genre (N_p,)) and the concept erased is the prior's residual after
    the vectors' PGC-genre content: taste that is content stays.
    """
    def vectors(x: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        return torch.cat([embed(x[ids[s:s + 4096]]) for s in range(0, len(ids), 4096)])

    q = vectors(x_v, video)
    concept = prior.to(q.dtype)
    if residual:
        if pgc is None:
            raise ValueError("erase_residual reads content off PGC pairs; none were given")
        xs, genre = pgc
        q_ref = vectors(xs, torch.arange(len(xs), device=xs.device))
        concept = residualize(concept, content_view(q_ref, F.one_hot(genre, prior.shape[1]).to(q.dtype), q))
    return fit_eraser(q, concept)
