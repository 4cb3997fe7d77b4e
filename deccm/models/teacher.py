"""The cross-modal VAE: the PGC teacher of §4, and (trained on UGC) the plain matching baseline.

Shapes: B batch, F_v video features, F_m music features, D latent.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from deccm.models.config import ModelConfig
from deccm.models.matching import faithful_matching_loss, hinge_matching_loss
from deccm.models.vae import Decoder, Encoder, prior_kl, reparameterize


@dataclass
class Posteriors:
    """Gaussian posteriors of both modalities, each (B, D)."""

    mu_v: torch.Tensor
    logvar_v: torch.Tensor
    mu_m: torch.Tensor
    logvar_m: torch.Tensor


def matching_loss(cfg: ModelConfig, sim: torch.Tensor, music_ids: torch.Tensor | None,
                  row_weight: torch.Tensor | None) -> torch.Tensor:
    """The configured in-batch matching loss on S = Z_m Z_vᵀ (B, B)."""
    if cfg.hinge == "faithful":
        return faithful_matching_loss(sim, cfg.margin, cfg.top_k, cfg.music_factor)
    same = None
    if cfg.mask_same_track and music_ids is not None:
        same = music_ids[:, None] == music_ids[None, :]
    return hinge_matching_loss(sim, cfg.margin, cfg.top_k, cfg.music_factor, same, row_weight)


class CrossModalVAE(nn.Module):
    """Enc_m (F_m→D), Enc_v (F_v→D), Dec_m (D→F_m), Dec_v (D→F_v), §4."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.enc_m = Encoder(cfg.music_dim, cfg.latent_dim, cfg.dropout, cfg.unit_logvar, cfg.balance_blocks)
        self.enc_v = Encoder(cfg.video_dim, cfg.latent_dim, cfg.dropout, cfg.unit_logvar, cfg.balance_blocks)
        self.dec_m = Decoder(cfg.latent_dim, cfg.music_dim, cfg.dropout)
        self.dec_v = Decoder(cfg.latent_dim, cfg.video_dim, cfg.dropout)

    def set_blocks(self, video: list[int], music: list[int]) -> None:
        """The feature blocks of each input (sizes); used with ``balance_blocks``."""
        self.enc_v.set_blocks(video)
        self.enc_m.set_blocks(music)

    def posteriors(self, x_v: torch.Tensor, x_m: torch.Tensor) -> Posteriors:
        mu_v, lv_v = self.enc_v(x_v)
        mu_m, lv_m = self.enc_m(x_m)
        return Posteriors(mu_v, lv_v, mu_m, lv_m)

    def loss(self, x_v: torch.Tensor, x_m: torch.Tensor, prior: torch.Tensor | None = None,
             music_ids: torch.Tensor | None = None, row_weight: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, float]]:
        """L_T = matching + KL_prior(m) + KL_prior(v) + w_rec·L_rec (§4).

        The student's signature: ``prior`` (the uploader's genre prior) is ignored, since PGC
        pairs have no uploader; one signature keeps the training loop free of a teacher branch.
        """
        p = self.posteriors(x_v, x_m)
        z_v = reparameterize(p.mu_v, p.logvar_v, self.training)
        z_m = reparameterize(p.mu_m, p.logvar_m, self.training)
        match = matching_loss(self.cfg, z_m @ z_v.T, music_ids, row_weight)  # S: (B, B)
        kl = prior_kl(p.mu_m, p.logvar_m) + prior_kl(p.mu_v, p.logvar_v)
        rec = F.mse_loss(self.dec_m(z_v), x_m) + F.mse_loss(self.dec_v(z_m), x_v)  # cross-generation
        total = match + kl + self.cfg.rec_weight * rec
        return total, {"match": match.item(), "kl_prior": kl.item(), "rec": rec.item()}

    @torch.no_grad()
    def video_embed(self, x_v: torch.Tensor) -> torch.Tensor:
        """q = μ_v in eval mode (§6)."""
        return self.enc_v(x_v)[0]

    @torch.no_grad()
    def music_embed(self, x_m: torch.Tensor) -> torch.Tensor:
        """p_m = μ_m in eval mode."""
        return self.enc_m(x_m)[0]
