"""The DecCM student (§5): its own VAE, a genre-confounder table, a fusion layer and a
frozen teacher that it is distilled towards.

Shapes: B batch, G genres, D latent.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from deccm.models.config import ModelConfig
from deccm.models.teacher import CrossModalVAE, matching_loss
from deccm.models.vae import faithful_distill_kl, gaussian_kl, prior_kl, reparameterize


class Fusion(nn.Module):
    """g([c ; z]) → D. ``linear``: one Linear(2D, D) as coded (§5.1), which makes the
    confounder a per-video constant in ranking (§6). ``mlp``: W_z z + MLP([c ; z]), so the
    confounder can interact with the track's content (a genre-dependent shift)."""

    def __init__(self, latent_dim: int, kind: str):
        super().__init__()
        self.kind = kind
        if kind == "linear":
            self.lin = nn.Linear(2 * latent_dim, latent_dim)
        else:
            self.skip = nn.Linear(latent_dim, latent_dim)
            self.mlp = nn.Sequential(nn.Linear(2 * latent_dim, latent_dim), nn.Tanh(), nn.Linear(latent_dim, latent_dim))

    def forward(self, c: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        cz = torch.cat([c.expand_as(z), z], dim=-1)  # (B, 2D)
        return self.lin(cz) if self.kind == "linear" else self.skip(z) + self.mlp(cz)


class DecCMStudent(nn.Module):
    def __init__(self, cfg: ModelConfig, teacher: CrossModalVAE | None, prior_mean: torch.Tensor):
        super().__init__()
        self.cfg = cfg
        self.vae = CrossModalVAE(cfg)
        self.deconfound = cfg.confounder != "none"
        if self.deconfound:
            self.confounder = nn.Embedding(cfg.n_genres, cfg.latent_dim)  # E ∈ R^{G×D}
            self.fusion = Fusion(cfg.latent_dim, cfg.fusion)
        self.register_buffer("prior_mean", prior_mean.float().reshape(cfg.n_genres))  # d̄ for inference
        self.teacher = teacher
        if teacher is not None:
            teacher.eval()
            for p in teacher.parameters():
                p.requires_grad_(False)

    def train(self, mode: bool = True) -> "DecCMStudent":
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()  # always run in eval mode (§5.1)
        return self

    def deconfounded(self, z_m: torch.Tensor, prior: torch.Tensor) -> torch.Tensor:
        """z̃_m = g([c ; z_m]) with c = Σ_g d_g E_g; prior is (G,) shared or (B, G) per row."""
        if not self.deconfound:
            return z_m
        c = prior @ self.confounder.weight  # (D,) or (B, D)
        return self.fusion(c, z_m)

    def loss(self, x_v: torch.Tensor, x_m: torch.Tensor, prior: torch.Tensor, music_ids: torch.Tensor | None = None,
             row_weight: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, float]]:
        """L_S = matching(z̃_m, z_v) + α·(KLd_m + KLd_v) + KL_prior(m) + KL_prior(v) + w_rec·L_rec (§5.4)."""
        cfg = self.cfg
        p = self.vae.posteriors(x_v, x_m)
        z_m = reparameterize(p.mu_m, p.logvar_m, self.training)
        z_v = reparameterize(p.mu_v, p.logvar_v, self.training)
        d = prior.mean(dim=0) if cfg.confounder == "batch-mean" else prior  # (G,) or (B, G)
        zt_m = self.deconfounded(z_m, d)
        match = matching_loss(cfg, zt_m @ z_v.T, music_ids, row_weight)  # S: (B, B)
        kl = prior_kl(p.mu_m, p.logvar_m) + prior_kl(p.mu_v, p.logvar_v)  # pre-fusion posteriors
        rec = F.mse_loss(self.vae.dec_m(z_v), x_m) + F.mse_loss(self.vae.dec_v(zt_m), x_v)
        total = match + kl + cfg.rec_weight * rec
        parts = {"match": match.item(), "kl_prior": kl.item(), "rec": rec.item()}
        if self.teacher is not None and cfg.distill != "off" and cfg.distill_weight > 0:
            with torch.no_grad():
                t = self.teacher.posteriors(x_v, x_m)
            kl_fn = faithful_distill_kl if cfg.distill == "faithful" else gaussian_kl
            distill = kl_fn(p.mu_m, p.logvar_m, t.mu_m, t.logvar_m) + kl_fn(p.mu_v, p.logvar_v, t.mu_v, t.logvar_v)
            total = total + cfg.distill_weight * distill
            parts["distill"] = distill.item()
        return total, parts

    @torch.no_grad()
    def video_embed(self, x_v: torch.Tensor) -> torch.Tensor:
        """q = μ_v (§6): no uploader information needed."""
        return self.vae.enc_v(x_v)[0]

    @torch.no_grad()
    def music_embed(self, x_m: torch.Tensor) -> torch.Tensor:
        """p_m = g([c̄ ; μ_m]) with c̄ from the training-set mean prior (§6)."""
        return self.deconfounded(self.vae.enc_m(x_m)[0], self.prior_mean)
