"""The row protocol every dataset builder shares: priors, propensities, weights, negatives.

One implementation for the synthetic benchmark (``deccm.data.synth``), the demo corpus
(``deccm.data.corpus``) and user data (``deccm.data.assemble``), so a row means the same
thing whatever made it (``docs/method.md`` §2, §7, §9.13):

* ``prior`` (uploader prior ``d_b``): the uploader's genre distribution over training
  rows, smoothed toward the global training genre share ``s``,
  ``p_u[g] = (c_u[g] + α·s[g]) / (Σ_g c_u[g] + α)``, with ``c_u[g]`` the uploader's
  training rows whose positive has genre ``g``. Training rows leave themselves out
  (``c_u[genre(m_i)] -= 1``), so a prior never carries its own row's label. Without
  uploaders every row's prior is ``s``.
* ``propensity`` (for IPS): the row's prior mass on its positive's genre, clipped to
  ``[0.01, 1]``.
* ``weight`` (val/test): inverse popularity ``w_i = (1/(n(m_i)+1)) / Σ_j 1/(n(m_j)+1)``,
  ``n`` counted among *training* positives only, so weights sum to 1 per split.
* ``negatives`` (val/test): 100 distinct uniform tracks per row, never its positive.

Only :func:`sample_negatives` draws random numbers (one ``rng.random`` block per chunk of
rows), so builders that call :func:`rank_rows` split by split keep one draw order.
"""
from __future__ import annotations

import numpy as np

from deccm.data.format import N_NEGATIVES, RankRows, TrainRows

CHUNK = 4096  # rows per block when sampling negatives (bounds memory at CHUNK x n_tracks keys)
PROPENSITY_MIN = 0.01

# The manifest's description of each column, shared by every builder.
NOTES = {
    "weights": "inverse popularity 1/(n+1) of the positive among training positives, normalised to sum to 1",
    "prior": "leave-one-out smoothed genre distribution of the uploader's training rows",
    "propensity": "the row's prior mass on its positive's genre, clipped to [0.01, 1]",
}
PRIOR_WITHOUT_UPLOADERS = "no uploaders: every row's prior is the global genre share of the training positives"


def sample_negatives(rng: np.random.Generator, positives: np.ndarray, n_tracks: int, k: int = N_NEGATIVES) -> np.ndarray:
    """(N, k) distinct uniform negatives per row, never the row's positive; no Python row loop.

    Each row draws ``n_tracks`` uniform keys, the positive's key is set to +inf, and the
    ``k`` smallest keys are the negatives: a uniform k-subset of the other tracks.
    """
    out = np.empty((len(positives), k), dtype=np.int64)
    for s in range(0, len(positives), CHUNK):
        pos = positives[s:s + CHUNK]
        keys = rng.random((len(pos), n_tracks))
        keys[np.arange(len(pos)), pos] = np.inf  # the positive sorts last, never among the k smallest
        out[s:s + CHUNK] = np.argpartition(keys, k - 1, axis=1)[:, :k]
    return out


def inverse_popularity_weights(train_music: np.ndarray, positives: np.ndarray, n_tracks: int) -> np.ndarray:
    """w_i = (1/(n(m_i)+1)) / Σ_j (1/(n(m_j)+1)), n = count among training positives (§7)."""
    counts = np.bincount(train_music, minlength=n_tracks)
    w = 1.0 / (counts[positives] + 1.0)
    return w / w.sum()


def genre_share(train_genre: np.ndarray, g: int) -> np.ndarray:
    """s[g] = share of training positives in genre g: the prior of a row with no uploader history."""
    return np.bincount(train_genre, minlength=g) / len(train_genre)


def uploader_priors(uploader: np.ndarray, genre: np.ndarray, n_uploaders: int, g: int,
                    alpha: float, leave_one_out: bool, train_uploader: np.ndarray, train_genre: np.ndarray) -> np.ndarray:
    """Smoothed genre distribution of each row's uploader from training rows (optionally minus the row itself).

    p[i, g] = (c[u_i, g] - [leave_one_out and g == genre_i] + α·s[g]) / (Σ_g c[u_i, g] - leave_one_out + α),
    c = (uploader, genre) counts of the training rows, s = :func:`genre_share`.
    """
    counts = np.zeros((n_uploaders, g))
    np.add.at(counts, (train_uploader, train_genre), 1.0)
    glob = genre_share(train_genre, g)
    c = counts[uploader]
    if leave_one_out:
        c[np.arange(len(uploader)), genre] -= 1.0
    p = (c + alpha * glob) / (c.sum(axis=1, keepdims=True) + alpha)
    return p.astype(np.float32)


def propensities(prior: np.ndarray, genre: np.ndarray) -> np.ndarray:
    """e_i = clip(prior[i, genre(m_i)], 0.01, 1): the row's prior mass on its positive's genre."""
    return np.clip(prior[np.arange(len(genre)), genre], PROPENSITY_MIN, 1.0).astype(np.float32)


def prior_mean(prior: np.ndarray) -> np.ndarray:
    """Mean prior over training rows, renormalised to sum to 1 (float32)."""
    m = prior.mean(axis=0).astype(np.float32)
    m /= m.sum()
    return m


def _priors(uploader: np.ndarray | None, genre: np.ndarray, n_uploaders: int | None, g: int, alpha: float,
            leave_one_out: bool, train_uploader: np.ndarray | None, train_genre: np.ndarray) -> np.ndarray:
    if uploader is None or train_uploader is None:
        return np.broadcast_to(genre_share(train_genre, g), (len(genre), g)).astype(np.float32)
    if n_uploaders is None:
        n_uploaders = int(max(uploader.max(initial=-1), train_uploader.max(initial=-1))) + 1
    return uploader_priors(uploader, genre, n_uploaders, g, alpha, leave_one_out, train_uploader, train_genre)


def train_rows(video: np.ndarray, music: np.ndarray, video_genre: np.ndarray, track_genre: np.ndarray, n_genres: int,
               uploader: np.ndarray | None = None, n_uploaders: int | None = None, alpha: float = 1.0) -> TrainRows:
    """Training rows with leave-one-out uploader priors and propensities (global genre share without uploaders).

    ``track_genre`` is every track's genre group (M,), ``uploader`` each row's uploader id
    (or None), ``n_uploaders`` the size of the uploader id space (default: max id + 1).
    """
    genre = track_genre[music]
    prior = _priors(uploader, genre, n_uploaders, n_genres, alpha, True, uploader, genre)
    return TrainRows(video=video, music=music, video_genre=video_genre, prior=prior,
                     propensity=propensities(prior, genre), uploader=uploader)


def rank_rows(rng: np.random.Generator, video: np.ndarray, positives: np.ndarray, train: TrainRows,
              track_genre: np.ndarray, n_genres: int, uploader: np.ndarray | None = None,
              n_uploaders: int | None = None, alpha: float = 1.0) -> RankRows:
    """Val/test rows: 100 negatives (drawn from ``rng``), inverse-popularity weights and uploader priors
    from ``train`` only (its positives and uploaders); ``uploader`` is each row's uploader or None."""
    n_tracks = len(track_genre)
    return RankRows(
        video=video, music=positives,
        negatives=sample_negatives(rng, positives, n_tracks),
        weight=inverse_popularity_weights(train.music, positives, n_tracks),
        prior=_priors(uploader, track_genre[positives], n_uploaders, n_genres, alpha, False, train.uploader,
                      track_genre[train.music]),
        uploader=uploader,
    )
