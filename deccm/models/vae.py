"""VAE building blocks shared by teacher and student (``docs/method.md`` §3).

Shapes: B batch, F input features (2048 video / 256 music), D latent (128).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def block_gains(blocks: list[int]) -> torch.Tensor:
    """(F,) per-feature gains that give each block of the input the same total variance after
    BatchNorm: g_b = √(F / (n_blocks · F_b)), so the gains keep Σ g² = F (docs/method.md §3.1)."""
    total, n = sum(blocks), len(blocks)
    return torch.cat([torch.full((d,), (total / (n * d)) ** 0.5) for d in blocks])


class Encoder(nn.Module):
    """x (B, F) → (μ, ℓ), each (B, D): BatchNorm [→ block gains] → Dropout → two linear heads (§3.1–3.3).

    μ is L2-normalised. ℓ (the log-variance) is L2-normalised too when ``unit_logvar``
    (what the authors' code does, §9.12: σ² ≈ 1 in every dimension); otherwise it is a
    free linear output clamped to [-10, 10].
    """

    def __init__(self, in_dim: int, latent_dim: int, dropout: float = 0.2, unit_logvar: bool = True,
                 balance_blocks: bool = False):
        super().__init__()
        self.bn = nn.BatchNorm1d(in_dim)
        if balance_blocks:  # all ones (one block) until set_blocks is called; stored with the weights
            self.register_buffer("gain", torch.ones(in_dim))
        else:
            self.gain = None
        self.drop = nn.Dropout(dropout)
        self.mu = nn.Linear(in_dim, latent_dim)
        self.logvar = nn.Linear(in_dim, latent_dim)
        self.unit_logvar = unit_logvar
        for lin in (self.mu, self.logvar):
            nn.init.xavier_normal_(lin.weight)
            nn.init.zeros_(lin.bias)

    def set_blocks(self, blocks: list[int]) -> None:
        """The input's feature blocks (their sizes, in order); only an encoder that balances them keeps them."""
        if self.gain is not None:
            if sum(blocks) != self.gain.numel():
                raise ValueError(f"feature blocks {blocks} add up to {sum(blocks)}, the encoder reads {self.gain.numel()} features")
            self.gain.copy_(block_gains(blocks))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.bn(x)
        if self.gain is not None:
            h = h * self.gain
        h = self.drop(h)
        mu = F.normalize(self.mu(h), dim=-1)
        logvar = self.logvar(h)
        logvar = F.normalize(logvar, dim=-1) if self.unit_logvar else logvar.clamp(-10.0, 10.0)
        return mu, logvar


class Decoder(nn.Module):
    """z (B, D) → x̂ (B, F): BatchNorm → Dropout → Linear → ReLU, as coded (§3, §9.11)."""

    def __init__(self, latent_dim: int, out_dim: int, dropout: float = 0.2):
        super().__init__()
        self.bn = nn.BatchNorm1d(latent_dim)
        self.drop = nn.Dropout(dropout)
        self.out = nn.Linear(latent_dim, out_dim)
        nn.init.xavier_normal_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return F.relu(self.out(self.drop(self.bn(z))))


def reparameterize(mu: torch.Tensor, logvar: torch.Tensor, training: bool) -> torch.Tensor:
    """z = μ + ε·exp(ℓ/2) while training (ℓ clamped ≤ 10); z = μ in eval (§3)."""
    if not training:
        return mu
    std = torch.exp(0.5 * logvar.clamp(max=10.0))
    return mu + torch.randn_like(std) * std


def prior_kl(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(μ, e^ℓ) ‖ N(0, I)) = mean_b −½ Σ_d (1 + ℓ − μ² − e^ℓ) (§3)."""
    return (-0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum(dim=-1)).mean()


def gaussian_kl(mu1: torch.Tensor, logvar1: torch.Tensor, mu2: torch.Tensor, logvar2: torch.Tensor) -> torch.Tensor:
    """Correct KL(q₁ ‖ q₂) for diagonal Gaussians, mean over the batch (§5.3):

    ½ Σ_d [ log(σ₂²/σ₁²) + (σ₁² + (μ₁ − μ₂)²)/σ₂² − 1 ].
    """
    var1, var2 = logvar1.exp(), logvar2.exp()
    kl = 0.5 * (logvar2 - logvar1 + (var1 + (mu1 - mu2).pow(2)) / var2 - 1.0)
    return kl.sum(dim=-1).mean()


def faithful_distill_kl(mu1: torch.Tensor, logvar1: torch.Tensor, mu2: torch.Tensor, logvar2: torch.Tensor) -> torch.Tensor:
    """The authors' distillation term, bug included (§5.3, §9.2):

    ½ · mean_b Σ_d [ log(σ₂²/σ₁²) − (σ₁² + (μ₁ − μ₂)²)/σ₂² ] − ½.
    The quadratic term has the wrong sign, so minimising it pushes μ₁ away from μ₂.
    """
    var1, var2 = logvar1.exp(), logvar2.exp()
    return 0.5 * (logvar2 - logvar1 - (var1 + (mu1 - mu2).pow(2)) / var2).sum(dim=-1).mean() - 0.5
