"""Taste-free weights for logged choices: content and the uploader's taste (docs/method.md §7, "The promotion gate").

A logged clip's pick is, at genre level, P(g | v, u) ∝ q(g | v) · r_u(g): q the genre mix the
clip's *content* calls for (what a choice free of the taste would be), r_u the uploader's taste.
The importance weight that turns a logged row into a taste-free one is

    w_i = q(g_i | v_i) / P(g_i | v_i, u_i) = Σ_g q(g | v_i) r_u(g) / r_u(g_i)

(within a genre both choices follow the same affinity). The uploader's prior alone (1 / e_i,
``deccm.gate.inverse_propensities``) drops the per-clip sum, so a clip whose content fits the
uploader's favourite genre is under-weighted, and it divides by the content's genre mix too.

- q is a multinomial logit on the video features (standardised, PCA to ≤ 64 dims), fitted on
  the PGC pairs: professionally edited, so free of any uploader's taste by construction. Its L2
  is chosen on PGC val (cross-entropy); where no L2 beats the PGC genre share there, q is that
  share (too few pairs to read content). The logs' choices may be softer than PGC's, so q is
  tempered, q^τ.
- r_u is fitted on the uploader's training rows under that model (MM iterations, Hunter 2004),
  shrunk toward the global genre share with α pseudo-rows; an uploader without rows has r = 1.
- τ and α are chosen by the likelihood of the ``val`` rows' logged genres: data the deployment
  has, no oracle.

:func:`fit` returns None where this cannot be fitted (no PGC, no genres, no uploaders in train or
val); the gate then falls back to the uploader prior and says so.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from deccm.data import Dataset, RankRows

L2S = (1e-4, 1e-3, 1e-2)  # content model ridge, chosen on PGC val
TAUS = (0.5, 0.75, 1.0)  # temper of q for the logged choices, chosen on UGC val
ALPHAS = (1.0, 3.0, 10.0, 30.0)  # pseudo-rows of the taste's shrinkage, chosen on UGC val
PCA_DIMS = 64
PCA_ROWS = 8000  # the PCA is fitted on at most this many PGC rows (evenly spaced: deterministic)
MIN_PGC = 50
MM_ITERS = 100
CHUNK = 8192  # clips projected at a time


@dataclass
class TasteFree:
    """The fitted model: content genre logit (standardise → project → W, b), temper τ, and per-uploader taste r."""

    mean: np.ndarray  # (D,)
    scale: np.ndarray  # (D,)
    projection: np.ndarray  # (D, P)
    W: np.ndarray  # (P, G)
    b: np.ndarray  # (G,)
    tau: float
    alpha: float
    l2: float
    taste: np.ndarray  # (U, G) r_u, rows sum to 1
    pgc_val_ce: float
    val_loglik: float

    def content(self, features: np.ndarray) -> np.ndarray:
        """(N, G) q(g | v)^τ, renormalised: the taste-free genre mix of each clip's content."""
        z = _project(features, self.mean, self.scale, self.projection) @ self.W + self.b  # (N, G)
        z = self.tau * (z - z.max(axis=1, keepdims=True))  # q^τ ∝ exp(τ·logit)
        q = np.exp(z)
        return q / q.sum(axis=1, keepdims=True)

    def weights(self, ds: Dataset, rows: RankRows) -> np.ndarray:
        """(N,) w_i = Σ_g q(g|v_i) r_u(g) / r_u(g_i) for logged rows with uploaders (1 for an unknown uploader)."""
        q = self.content(ds.ugc.video_features[rows.video])
        r = self._taste_of(np.asarray(rows.uploader), q.shape[1])
        g = ds.ugc.music_genre[rows.music]
        return (q * r).sum(axis=1) / r[np.arange(len(g)), g]

    def describe(self) -> str:
        content = ("PGC genre share (the genre model did not beat it on PGC val)" if np.isinf(self.l2)
                   else f"PGC genre model, L2 {self.l2:g}")
        return (f"content-aware propensities ({content}, val cross-entropy {self.pgc_val_ce:.3f}; "
                f"temper τ {self.tau:g}, taste shrinkage α {self.alpha:g}, chosen on val log-likelihood {self.val_loglik:.4f})")

    def _taste_of(self, uploader: np.ndarray, g: int) -> np.ndarray:
        known = (uploader >= 0) & (uploader < len(self.taste))
        r = np.full((len(uploader), g), 1.0 / g)
        r[known] = self.taste[uploader[known]]
        return r


def fit(ds: Dataset) -> TasteFree | None:
    """Fit q on PGC and r on UGC train, choosing L2 on PGC val and (τ, α) on UGC val; None where the data lacks a part."""
    genre, pgc, tr, val = ds.ugc.music_genre, ds.pgc, ds.ugc.train, ds.ugc.val
    if genre is None or (genre < 0).any() or pgc is None or tr.uploader is None or val is None or val.uploader is None:
        return None
    if len(pgc.train) < MIN_PGC or len(pgc.val) == 0 or len(pgc.music_features) != len(genre):
        return None  # too few professional pairs, or a PGC catalog that is not the UGC one
    tr_ok, val_ok = np.asarray(tr.uploader) >= 0, np.asarray(val.uploader) >= 0  # a negative id: no known uploader
    if not tr_ok.any() or not val_ok.any():
        return None  # checked before the genre model is fitted: nothing to fit the taste on
    g = ds.n_genres
    x = pgc.segment_features[pgc.train.segment]  # (N, D) float32
    mean, scale = x.mean(axis=0, dtype=np.float64), x.std(axis=0, dtype=np.float64) + 1e-6
    sub = (np.asarray(x[np.linspace(0, len(x) - 1, min(len(x), PCA_ROWS)).astype(int)], np.float64) - mean) / scale
    _, _, vt = np.linalg.svd(sub, full_matrices=False)
    proj = vt[: min(PCA_DIMS, vt.shape[0])].T  # (D, P)
    z = _project(x, mean, scale, proj)
    zv = _project(pgc.segment_features[pgc.val.segment], mean, scale, proj)
    y, yv = genre[pgc.train.music], genre[pgc.val.music]
    w, b, ce, l2 = min((_logit(z, y, zv, yv, g, l2) + (l2,) for l2 in L2S), key=lambda t: t[2])
    share = (np.bincount(y, minlength=g) + 1.0) / (len(y) + g)
    if ce >= -np.mean(np.log(share[yv])):  # the features tell no more than the genre share: q is the share
        w, b, ce, l2 = np.zeros_like(w), np.log(share), -float(np.mean(np.log(share[yv]))), float("inf")
    model = TasteFree(mean, scale, proj, w, b, 1.0, 0.0, l2, np.empty((0, g)), ce, -np.inf)
    u, gt = np.asarray(tr.uploader)[tr_ok], genre[tr.music[tr_ok]]
    vu, vg = np.asarray(val.uploader)[val_ok], genre[val.music[val_ok]]
    q1_tr = model.content(ds.ugc.video_features[tr.video[tr_ok]])  # τ = 1: q itself
    q1_val = model.content(ds.ugc.video_features[val.video[val_ok]])
    n_up = int(max(u.max(), vu.max())) + 1
    for tau in TAUS:
        q_tr, q_val = _temper(q1_tr, tau), _temper(q1_val, tau)
        for alpha in ALPHAS:
            r = _taste(q_tr, u, gt, n_up, g, alpha)
            p = q_val * r[vu]
            ll = float(np.mean(np.log(p[np.arange(len(vg)), vg] / p.sum(axis=1))))
            if ll > model.val_loglik:
                model.tau, model.alpha, model.taste, model.val_loglik = tau, alpha, r, ll
    return model


def effective_share(w: np.ndarray) -> float:
    """Kish's effective sample size as a share of the rows, (Σ w)² / (N Σ w²): 1 for equal weights, 1/N for one row."""
    w = np.asarray(w, np.float64)
    return float(w.sum() ** 2 / (len(w) * (w ** 2).sum()))


def _project(features: np.ndarray, mean: np.ndarray, scale: np.ndarray, proj: np.ndarray) -> np.ndarray:
    """(N, P) standardised features projected, CHUNK rows at a time (120k clips × 2048 in float64 would be 2 GB)."""
    parts = [((np.asarray(features[a:a + CHUNK], np.float64) - mean) / scale) @ proj for a in range(0, len(features), CHUNK)]
    return np.concatenate(parts) if parts else np.empty((0, proj.shape[1]))


def _temper(q: np.ndarray, tau: float) -> np.ndarray:
    p = np.clip(q, 1e-12, 1.0) ** tau
    return p / p.sum(axis=1, keepdims=True)


def _logit(z: np.ndarray, y: np.ndarray, zv: np.ndarray, yv: np.ndarray, g: int, l2: float) -> tuple[np.ndarray, np.ndarray, float]:
    """Multinomial logit by L-BFGS (float64, zero start: deterministic); returns W, b and the val cross-entropy."""
    zt, yt = torch.tensor(z), torch.tensor(y)
    w = torch.zeros(z.shape[1], g, dtype=torch.float64, requires_grad=True)
    b = torch.zeros(g, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=200, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(zt @ w + b, yt) + l2 * (w ** 2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        ce = float(torch.nn.functional.cross_entropy(torch.tensor(zv) @ w + b, torch.tensor(yv)))
    return w.detach().numpy(), b.detach().numpy(), ce


def _taste(q: np.ndarray, uploader: np.ndarray, genre: np.ndarray, n_up: int, g: int, alpha: float) -> np.ndarray:
    """(U, G) r_u maximising Σ_i log q_i(g_i) r_u(g_i) / Σ_g q_i(g) r_u(g) plus α pseudo-rows at the global share s.

    MM update r_u(g) ← (n_ug + α s_g) / (Σ_{i of u} q_i(g) / D_i + α s_g / Σ_g' s_g' r_u(g')), D_i = Σ_g q_i(g) r_u(g).
    """
    n = np.zeros((n_up, g))
    np.add.at(n, (uploader, genre), 1.0)
    s = (np.bincount(genre, minlength=g) + 1.0) / (len(genre) + g)  # +1: a genre missing from train keeps r > 0
    r = np.full((n_up, g), 1.0 / g)
    for _ in range(MM_ITERS):
        d = (q * r[uploader]).sum(axis=1)
        den = np.zeros((n_up, g))
        np.add.at(den, uploader, q / d[:, None])
        r = (n + alpha * s) / (den + alpha * s / (r @ s)[:, None])
        r /= r.sum(axis=1, keepdims=True)
    return r
