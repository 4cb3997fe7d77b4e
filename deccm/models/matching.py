"""In-batch matching losses over the similarity matrix S = Z_m Z_vᵀ (§3, §9.1).

S[i, j] is music i against video j; the diagonal holds the positive pairs. The
music-anchored direction ranks the videos of row i, the video-anchored one ranks the
music of column j (rows of Sᵀ).
"""
from __future__ import annotations

import torch


def _pairwise(sim: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(positives (B, 1), off-diagonal mask (B, B)) for one anchoring direction."""
    pos = sim.diagonal().unsqueeze(1)
    off = ~torch.eye(sim.shape[0], dtype=torch.bool, device=sim.device)
    return pos, off


def faithful_direction(sim: torch.Tensor, margin: float, k: int) -> torch.Tensor:
    """The authors' term for one direction: mean over rows of the k *largest*
    clip(s_ii − s_ij − δ, 0, 1e6), j ≠ i. It enters the loss with a minus sign (§3)."""
    pos, off = _pairwise(sim)
    a = (pos - sim - margin).clamp(0.0, 1e6)
    a = a.masked_fill(~off, -1.0)  # the diagonal is never selected
    k = min(k, sim.shape[1] - 1)
    return a.topk(k, dim=1).values.mean()


def faithful_matching_loss(sim: torch.Tensor, margin: float, k: int, music_factor: float = 1.0) -> torch.Tensor:
    """−(λ·L_mus + L_vid) exactly as coded (§3, bug §9.1: rewards already-separated pairs)."""
    return -(music_factor * faithful_direction(sim, margin, k) + faithful_direction(sim.T, margin, k))


def hinge_direction(sim: torch.Tensor, margin: float, k: int, valid: torch.Tensor | None = None,
                    row_weight: torch.Tensor | None = None) -> torch.Tensor:
    """Max-margin term for one direction: mean_rows mean top-k_j [δ − s_ii + s_ij]₊ over the
    *hardest* negatives j ≠ i (§9.1 fix). ``valid`` (B, B) drops pairs that are not true
    negatives (e.g. another row with the same track); ``row_weight`` (B,) weights rows (IPS)."""
    pos, off = _pairwise(sim)
    mask = off if valid is None else off & valid
    viol = (margin - pos + sim).clamp(min=0.0).masked_fill(~mask, 0.0)
    k = max(1, min(k, sim.shape[1] - 1))
    top = viol.topk(k, dim=1).values  # (B, k) hardest violations (masked pairs are 0)
    n_valid = mask.sum(dim=1).clamp(max=k).clamp(min=1)
    per_row = top.sum(dim=1) / n_valid
    if row_weight is None:
        return per_row.mean()
    return (per_row * row_weight).sum() / row_weight.sum()


def hinge_matching_loss(sim: torch.Tensor, margin: float, k: int, music_factor: float = 1.0,
                        same_track: torch.Tensor | None = None, row_weight: torch.Tensor | None = None) -> torch.Tensor:
    """λ·L_mus + L_vid with the max-margin hinge; ``same_track`` (B, B) bool marks pairs whose
    music is the same track, which are masked out as negatives in both directions."""
    valid = None if same_track is None else ~same_track
    return (music_factor * hinge_direction(sim, margin, k, valid, row_weight)
            + hinge_direction(sim.T, margin, k, None if valid is None else valid.T, row_weight))
