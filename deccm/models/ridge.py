"""The closed-form linear baseline: ridge regression from video features to music features.

q(x_v) = normalise(((x_v − μ) / σ) W),  p(x_m) = normalise(x_m − m̄),  score = q · p (cosine),

with μ, σ the training rows' video feature mean and std, m̄ the catalog's mean music vector
and W the ridge solution on the logged (video, picked track) rows:

    W(λ) = (XᵀX + λI)⁻¹ Xᵀ Y,   X (N, F_v) standardised video features, Y (N, F_m) = x_m − m̄.

One eigendecomposition XᵀX = V diag(s) Vᵀ gives every W(λ) = V diag(1/(s+λ)) Vᵀ XᵀY, so
``deccm.train`` tries a grid of λ and keeps the best on validation (docs/method.md §8).
It is the first thing a careful reviewer would try, so the recommended model must beat it.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from deccm.models.config import ModelConfig
from deccm.models.erasure import erase, fit_taste_eraser

CHUNK = 8192


def lambda_grid(n_rows: int) -> list[float]:
    """λ tried on validation: 10^-4 … 10^2 times the row count (XᵀX of standardised features has trace N·F_v)."""
    return [float(n_rows * 10 ** (e / 2)) for e in range(-8, 5)]


class RidgeMatcher(nn.Module):
    """Linear map of standardised video features into the (centred) music feature space."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.register_buffer("x_mean", torch.zeros(cfg.video_dim))
        self.register_buffer("x_std", torch.ones(cfg.video_dim))
        self.register_buffer("m_mean", torch.zeros(cfg.music_dim))
        self.register_buffer("weight", torch.zeros(cfg.video_dim, cfg.music_dim))  # W (F_v, F_m)
        if cfg.erase_taste:  # the uploader taste erased from XW before normalising (identity until fit_eraser)
            self.register_buffer("erase_mean", torch.zeros(cfg.music_dim))
            self.register_buffer("erase_map", torch.zeros(cfg.music_dim, cfg.music_dim))

    def video_embed(self, x_v: torch.Tensor, erased: bool = True) -> torch.Tensor:  # (B, F_v) → (B, F_m), unit length
        q = ((x_v - self.x_mean) / self.x_std) @ self.weight
        if self.cfg.erase_taste and erased:
            q = erase(q, self.erase_mean, self.erase_map)
        return F.normalize(q, dim=-1)

    @torch.no_grad()
    def fit_eraser(self, x_v: torch.Tensor, video: torch.Tensor, prior: torch.Tensor,
                   pgc: tuple[torch.Tensor, torch.Tensor] | None = None) -> None:
        """Fit the taste eraser on the training rows, as the student does (deccm.models.erasure)."""
        raw = lambda x: ((x - self.x_mean) / self.x_std) @ self.weight
        mu, m = fit_taste_eraser(raw, x_v, video, prior, pgc, self.cfg.erase_residual)
        self.erase_mean.copy_(mu)
        self.erase_map.copy_(m)

    def music_embed(self, x_m: torch.Tensor) -> torch.Tensor:  # (M, F_m) → (M, F_m), unit length
        return F.normalize(x_m - self.m_mean, dim=-1)


class RidgeSolver:
    """The sufficient statistics of one training set; :meth:`weight` solves for any λ."""

    def __init__(self, x_v: torch.Tensor, x_m: torch.Tensor, video: torch.Tensor, music: torch.Tensor):
        """``x_v`` (N_video, F_v) and ``x_m`` (N_music, F_m) feature tables; ``video``/``music`` (N,) the rows."""
        dev = x_v.device
        f_v = x_v.shape[1]
        self.m_mean = x_m.double().mean(0)
        s1 = torch.zeros(f_v, dtype=torch.float64, device=dev)
        s2 = torch.zeros(f_v, f_v, dtype=torch.float64, device=dev)
        xy = torch.zeros(f_v, x_m.shape[1], dtype=torch.float64, device=dev)
        y_sum = torch.zeros_like(self.m_mean)
        for s in range(0, len(video), CHUNK):  # float64 sums in chunks: big row counts never sit in memory twice
            xb = x_v[video[s:s + CHUNK]].double()
            yb = x_m[music[s:s + CHUNK]].double() - self.m_mean
            s1 += xb.sum(0)
            s2 += xb.T @ xb
            xy += xb.T @ yb
            y_sum += yb.sum(0)
        n = len(video)
        self.x_mean = s1 / n
        var = (s2.diagonal() / n - self.x_mean ** 2).clamp_min(0)
        self.x_std = var.sqrt().clamp_min(1e-6)
        # standardised statistics: XᵀX = D⁻¹(S2 − n μμᵀ)D⁻¹, XᵀY = D⁻¹(XY − μ·ΣY)
        inv = 1.0 / self.x_std
        gram = (s2 - n * torch.outer(self.x_mean, self.x_mean)) * torch.outer(inv, inv)
        self.xty = (xy - torch.outer(self.x_mean, y_sum)) * inv[:, None]
        self.eigval, self.eigvec = torch.linalg.eigh(gram)
        self.eigval = self.eigval.clamp_min(0)
        self.proj = self.eigvec.T @ self.xty  # Vᵀ XᵀY
        self.n = n

    def weight(self, lam: float) -> torch.Tensor:
        """W(λ) (F_v, F_m) in float32."""
        return (self.eigvec @ (self.proj / (self.eigval + lam)[:, None])).float()

    def load_into(self, model: RidgeMatcher, lam: float) -> None:
        """Set ``model`` to the solution for λ."""
        with torch.no_grad():
            model.x_mean.copy_(self.x_mean.float())
            model.x_std.copy_(self.x_std.float())
            model.m_mean.copy_(self.m_mean.float())
            model.weight.copy_(self.weight(lam))
