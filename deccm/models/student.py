"""The DecCM student (§5): its own VAE, a genre-confounder table, a fusion layer and a
frozen teacher that it is distilled towards.

Shapes: B batch, G genres, D latent.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from deccm.models.config import ModelConfig
from deccm.models.erasure import erase, fit_taste_eraser
from deccm.models.ridge import RidgeMatcher
from deccm.models.teacher import CrossModalVAE, matching_loss
from deccm.models.vae import faithful_distill_kl, gaussian_kl, prior_kl, reparameterize


class Fusion(nn.Module):
    """How the confounder c = Σ_g d_g E_g meets the music latent z.

    ``linear`` (as coded, §5.1): z̃ = W[c ; z] + b, and the score is z̃ · q. The c part adds
    q·W_c c, the same for every candidate of a video, so it cannot change a ranking (§6).
    ``interaction`` (fixed): z̃ = z and the score gains c · (A μ): a genre-dependent
    per-track term, which is what an uploader's taste adds to the log-odds of a pick in the
    causal story (§1). It does not cancel, so the backdoor average over d can matter. The
    content path stays the identity: a learned projection of the noise-dominated training
    latent (§9.12) collapsed it to half of plain matching's accuracy (docs/results.md).
    """

    def __init__(self, latent_dim: int, kind: str):
        super().__init__()
        self.kind = kind
        if kind == "linear":
            self.lin = nn.Linear(2 * latent_dim, latent_dim)
        else:
            self.taste = nn.Linear(latent_dim, latent_dim, bias=False)  # A

    def content_part(self, c: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """z̃ (B, D): the part of the music latent that meets the video latent."""
        if self.kind == "linear":
            return self.lin(torch.cat([c.expand_as(z), z], dim=-1))  # (B, 2D) → (B, D)
        return z

    def taste_scores(self, c: torch.Tensor, mu: torch.Tensor) -> torch.Tensor | None:
        """(B_m, B_c) term c_j · A μ_i added to the similarity, or None for ``linear``."""
        if self.kind == "linear":
            return None
        return self.taste(mu) @ c.reshape(-1, mu.shape[-1]).T


class _GradReverse(torch.autograd.Function):
    """Identity forward, −gradient backward: what the adversary learns, the encoder unlearns."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, x: torch.Tensor) -> torch.Tensor:
        return x.view_as(x)

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor) -> torch.Tensor:
        return -grad


class DecCMStudent(nn.Module):
    def __init__(self, cfg: ModelConfig, teacher: CrossModalVAE | None, prior_mean: torch.Tensor):
        super().__init__()
        self.cfg = cfg
        self.vae = CrossModalVAE(cfg)
        self.deconfound = cfg.confounder != "none"
        if self.deconfound:
            self.confounder = nn.Embedding(cfg.n_genres, cfg.latent_dim)  # E ∈ R^{G×D}
            self.fusion = Fusion(cfg.latent_dim, cfg.fusion)
        if cfg.adversary > 0:  # reads the taste off the video latent; the encoder is trained to defeat it
            self.adversary = nn.Sequential(nn.Linear(cfg.latent_dim, cfg.latent_dim), nn.ReLU(), nn.Linear(cfg.latent_dim, cfg.n_genres))
        self.register_buffer("prior_mean", prior_mean.float().reshape(cfg.n_genres))  # d̄ for inference
        if cfg.erase_taste:  # x' = x − (x − μ)Mᵀ on the video vectors; identity until fit_eraser is called
            dim = cfg.latent_dim + (1 if self.deconfound and cfg.fusion == "interaction" else 0)
            self.register_buffer("erase_mean", torch.zeros(dim))
            self.register_buffer("erase_map", torch.zeros(dim, dim))
        # ridge_blend: the linear map of deccm.models.ridge, fitted in closed form before training (train.py);
        # its vectors are appended to the student's, so a score is a·(student's) + b·(ridge cosine). Each part has its
        # own eraser (measured better than one joint eraser: docs/results.md). (a, b) starts at (1, ridge_blend) and is
        # chosen on the PGC val pairs once training ends (train.py, docs/method.md §5.4); stored with the weights.
        ridge_cfg = cfg.replace(erase_residual=False) if cfg.ridge_erase_all else cfg  # its eraser: all of the taste, or as the student's
        self.ridge = RidgeMatcher(ridge_cfg) if cfg.ridge_blend > 0 else None
        if self.ridge is not None:
            self.register_buffer("blend", torch.tensor([1.0, cfg.ridge_blend]))
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

    def set_blocks(self, video: list[int], music: list[int]) -> None:
        """The feature blocks of each input (sizes); used with ``balance_blocks``."""
        self.vae.set_blocks(video, music)

    def similarity(self, z_m: torch.Tensor, mu_m: torch.Tensor, z_v: torch.Tensor, prior: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """S (B_m, B_v) for music latents against video latents, and the fused music latent.

        ``prior`` is (G,) shared by all pairs (batch mean, or the training mean at inference)
        or (B_v, G): the prior of each *video's* uploader, the one who picks the music.
        """
        if not self.deconfound:
            return z_m @ z_v.T, z_m
        c = prior @ self.confounder.weight  # (D,) or (B_v, D)
        zt_m = self.fusion.content_part(c if c.dim() == 1 else c.mean(dim=0), z_m)
        sim = zt_m @ z_v.T
        taste = self.fusion.taste_scores(c, mu_m)  # (B_m, 1) or (B_m, B_v)
        return (sim if taste is None else sim + taste), zt_m

    def loss(self, x_v: torch.Tensor, x_m: torch.Tensor, prior: torch.Tensor, music_ids: torch.Tensor | None = None,
             row_weight: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, float]]:
        """L_S = matching(z̃_m, z_v) + α·(KLd_m + KLd_v) + KL_prior(m) + KL_prior(v) + w_rec·L_rec (§5.4),
        plus λ_adv · H(d_b, softmax(h(GRL(μ_v)))) with an adversary (``cfg.adversary``)."""
        cfg = self.cfg
        p = self.vae.posteriors(x_v, x_m)
        z_m = reparameterize(p.mu_m, p.logvar_m, self.training)
        z_v = reparameterize(p.mu_v, p.logvar_v, self.training)
        d = prior.mean(dim=0) if cfg.confounder == "batch-mean" else prior  # (G,) or (B, G)
        sim, zt_m = self.similarity(z_m, p.mu_m, z_v, d)  # S: (B, B)
        match = matching_loss(cfg, sim, music_ids, row_weight)
        kl = prior_kl(p.mu_m, p.logvar_m) + prior_kl(p.mu_v, p.logvar_v)  # pre-fusion posteriors
        rec = F.mse_loss(self.vae.dec_m(z_v), x_m) + F.mse_loss(self.vae.dec_v(zt_m), x_v)
        total = match + kl + cfg.rec_weight * rec
        parts = {"match": match.item(), "kl_prior": kl.item(), "rec": rec.item()}
        if cfg.adversary > 0:
            # soft cross-entropy of the row's uploader prior d_b (B, G) against the adversary's guess from μ_v
            adv = -(prior * F.log_softmax(self.adversary(_GradReverse.apply(p.mu_v)), dim=-1)).sum(-1).mean()
            total = total + cfg.adversary * adv
            parts["adversary"] = adv.item()
        if self.teacher is not None and cfg.distill != "off" and cfg.distill_weight > 0:
            with torch.no_grad():
                t = self.teacher.posteriors(x_v, x_m)
            kl_fn = faithful_distill_kl if cfg.distill == "faithful" else gaussian_kl
            distill = kl_fn(p.mu_m, p.logvar_m, t.mu_m, t.logvar_m) + kl_fn(p.mu_v, p.logvar_v, t.mu_v, t.logvar_v)
            total = total + cfg.distill_weight * distill
            parts["distill"] = distill.item()
        return total, parts

    @torch.no_grad()
    def video_embed(self, x_v: torch.Tensor, erased: bool = True) -> torch.Tensor:
        """q = μ_v (§6): no uploader information needed; [μ_v ; 1] when a per-track taste term exists;
        with ``erase_taste`` the uploader prior's linear information is removed (``erased=False`` skips that);
        with ``ridge_blend``, [a·q ; b·q_ridge], (a, b) the ``blend`` weights."""
        q = self._own_video(x_v, erased)
        return q if self.ridge is None else torch.cat([self.blend[0] * q, self.blend[1] * self.ridge.video_embed(x_v, erased)], dim=1)

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        # a blend saved before its weights were chosen on PGC val scored with (1, ridge_blend): load it as such
        if self.ridge is not None:
            state_dict.setdefault(prefix + "blend", torch.tensor([1.0, self.cfg.ridge_blend]))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _own_video(self, x_v: torch.Tensor, erased: bool) -> torch.Tensor:
        q = self.vae.enc_v(x_v)[0]
        if self.deconfound and self.cfg.fusion == "interaction":
            q = torch.cat([q, torch.ones_like(q[:, :1])], dim=1)
        if self.cfg.erase_taste and erased:
            q = erase(q, self.erase_mean, self.erase_map)
        return q

    @torch.no_grad()
    def fit_eraser(self, x_v: torch.Tensor, video: torch.Tensor, prior: torch.Tensor,
                   pgc: tuple[torch.Tensor, torch.Tensor] | None = None) -> None:
        """Fit the taste eraser on the training rows (:func:`deccm.models.erasure.fit_taste_eraser`);
        ``erase_residual`` keeps the taste that the PGC pairs ``pgc`` show to be content."""
        was = self.training
        self.eval()
        mu, m = fit_taste_eraser(lambda x: self._own_video(x, erased=False), x_v, video, prior, pgc, self.cfg.erase_residual)
        self.train(was)
        self.erase_mean.copy_(mu)
        self.erase_map.copy_(m)

    @torch.no_grad()
    def music_embed(self, x_m: torch.Tensor) -> torch.Tensor:
        """p_m = g([c̄ ; μ_m]) with c̄ from the training-set mean prior (§6): the backdoor
        adjustment's average over the confounder; with ``interaction`` the per-track taste
        term c̄ · A μ_m rides along as a last column, so scores stay one dot product."""
        mu = self.vae.enc_m(x_m)[0]
        if self.ridge is not None:  # deconfound is off in every blend variant (train.py checks)
            return torch.cat([mu, self.ridge.music_embed(x_m)], dim=1)
        if not self.deconfound:
            return mu
        c = self.prior_mean @ self.confounder.weight  # (D,)
        p = self.fusion.content_part(c, mu)
        taste = self.fusion.taste_scores(c, mu)
        return p if taste is None else torch.cat([p, taste], dim=1)
