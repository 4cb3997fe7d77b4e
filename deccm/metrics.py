"""Ranking, calibration and exposure metrics (§7): small pure numpy functions, RecBole style.

Conventions shared by every function:

- A *rank* is 0-based: rank 0 is the top of the list.
- Ranks are **pessimistic**. Every competitor whose score ties the positive's, and every
  NaN on either side, counts as ranked above the positive. A constant or broken scorer
  therefore gets the worst rank and never a free hit. The authors' code (torch.topk
  order, ties unhandled) can only be more generous than this.
- ``weights`` are per-row and must already sum to 1, like the §7 inverse-popularity
  weights (``RankRows.weight``). None means w_i = 1/N, i.e. the unweighted metric.
- Large (N, M) score matrices are processed in row chunks, so memory stays bounded.
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

# Largest number of matrix elements one chunk may hold (about 32 MB of int64).
_CHUNK_ELEMS = 1 << 22
_WEIGHT_TOL = 1e-6


def _row_chunks(n_rows: int, n_cols: int) -> Iterator[slice]:
    """Row slices covering ``n_rows`` such that each chunk holds at most _CHUNK_ELEMS cells."""
    step = max(1, _CHUNK_ELEMS // max(1, n_cols))
    for start in range(0, n_rows, step):
        yield slice(start, min(start + step, n_rows))


def _as_2d(name: str, a: np.ndarray) -> np.ndarray:
    a = np.asarray(a)
    if a.ndim != 2:
        raise ValueError(f"{name} must be 2-D (rows, items), got shape {a.shape}")
    return a


def _weights(weights: np.ndarray | None, n: int) -> np.ndarray:
    """Validated per-row weights: None → 1/N; else non-negative, shape (N,), summing to 1."""
    if n == 0:
        raise ValueError("no rows to score: the metric of an empty split is undefined")
    if weights is None:
        return np.full(n, 1.0 / n)
    w = np.asarray(weights, dtype=np.float64)
    if w.shape != (n,):
        raise ValueError(f"weights must have shape ({n},) to match the ranks, got {w.shape}")
    if not np.all(np.isfinite(w)) or np.any(w < 0):
        raise ValueError("weights must be finite and non-negative. Fix: recompute the inverse-popularity weights")
    total = float(w.sum())
    if abs(total - 1.0) > _WEIGHT_TOL:
        raise ValueError(
            f"weights sum to {total:.9g}, not 1, so the weighted sum is not a rate. "
            "Fix: normalise them first (w = w / w.sum())"
        )
    return w


# --------------------------------------------------------------------------- ranks


def positive_rank(scores: np.ndarray) -> np.ndarray:
    """0-based pessimistic rank of the positive in column 0 of ``scores`` (N, C).

    r_i = #{j > 0 : not (s_ij < s_i0)}, i.e. ties and NaNs count against the positive.
    """
    s = _as_2d("scores", scores)
    return np.count_nonzero(~(s[:, 1:] < s[:, :1]), axis=1)


def catalog_rank(scores: np.ndarray, positives: np.ndarray) -> np.ndarray:
    """0-based pessimistic rank of each row's positive id among all M items of ``scores`` (N, M).

    r_i = #{j ≠ p_i : not (s_ij < s_ip_i)}; the positive's own cell always passes the test,
    hence the −1.
    """
    s = _as_2d("scores", scores)
    pos = np.asarray(positives, dtype=np.int64)
    if pos.shape != (s.shape[0],):
        raise ValueError(f"positives must have shape ({s.shape[0]},), got {pos.shape}")
    out = np.empty(s.shape[0], dtype=np.int64)
    for sl in _row_chunks(*s.shape):
        block = s[sl]
        pos_score = block[np.arange(block.shape[0]), pos[sl]]
        out[sl] = np.count_nonzero(~(block < pos_score[:, None]), axis=1) - 1
    return out


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """(N, k) item ids by descending score; ties go to the lower id, NaN ranks last.

    Per row: t = k-th largest score (np.partition, linear time); keep every item with
    s > t, then the lowest-id items with s = t until k are kept; sort those k by (−s, id).
    A plain argpartition would pick an arbitrary subset of the items tied at t.
    """
    s = _as_2d("scores", scores)
    n, m = s.shape
    if not 1 <= k <= m:
        raise ValueError(f"k must be in [1, {m}] for a catalog of {m} items, got {k}")
    out = np.empty((n, k), dtype=np.int64)
    for sl in _row_chunks(n, m):
        neg = -np.asarray(s[sl], dtype=np.float64)
        neg[np.isnan(neg)] = np.inf
        t = np.partition(neg, k - 1, axis=1)[:, k - 1 : k]
        above = neg < t
        tied = neg == t
        room = k - np.count_nonzero(above, axis=1, keepdims=True)
        keep = above | (tied & (np.cumsum(tied, axis=1) <= room))
        ids = np.nonzero(keep)[1].reshape(-1, k)  # ascending id within each row
        order = np.argsort(np.take_along_axis(neg, ids, axis=1), axis=1, kind="stable")
        out[sl] = np.take_along_axis(ids, order, axis=1)
    return out


# --------------------------------------------------------------------------- accuracy


def hit_vector(ranks: np.ndarray, k: int) -> np.ndarray:
    """Per-row hit: h_i = 1[r_i < k], as float (N,)."""
    return (np.asarray(ranks) < k).astype(np.float64)


def ndcg_vector(ranks: np.ndarray, k: int) -> np.ndarray:
    """Per-row NDCG with one relevant item (IDCG = 1): g_i = 1[r_i < k] / log2(r_i + 2)."""
    r = np.asarray(ranks, dtype=np.float64)
    return np.where(r < k, 1.0 / np.log2(r + 2.0), 0.0)


def hit_rate(ranks: np.ndarray, k: int, weights: np.ndarray | None = None) -> float:
    """HR@K = Σ_i w_i · 1[r_i < K]; with the §7 popularity weights, the authors' "Recall@K"."""
    h = hit_vector(ranks, k)
    return float(_weights(weights, h.shape[0]) @ h)


def ndcg(ranks: np.ndarray, k: int, weights: np.ndarray | None = None) -> float:
    """NDCG@K = Σ_i w_i · 1[r_i < K] / log2(r_i + 2)  (one relevant item, so IDCG = 1)."""
    g = ndcg_vector(ranks, k)
    return float(_weights(weights, g.shape[0]) @ g)


def recall_at_k(catalog_ranks: np.ndarray, k: int) -> float:
    """Full-catalog Recall@K with one positive per row: (1/N) Σ_i 1[r_i < K] (the teacher's HR@25)."""
    return hit_rate(catalog_ranks, k)


def reciprocal_rank_vector(ranks: np.ndarray) -> np.ndarray:
    """Per-row reciprocal rank 1 / (r_i + 1) (0-based ranks), the terms of MRR."""
    return 1.0 / (np.asarray(ranks, dtype=np.float64) + 1.0)


def mrr(ranks: np.ndarray, weights: np.ndarray | None = None) -> float:
    """MRR = Σ_i w_i / (r_i + 1)."""
    rr = reciprocal_rank_vector(ranks)
    return float(_weights(weights, rr.shape[0]) @ rr)


def median_rank(ranks: np.ndarray) -> float:
    """Median of the 1-based ranks, median_i (r_i + 1): the retrieval-literature MedR."""
    r = np.asarray(ranks, dtype=np.float64)
    if r.size == 0:
        raise ValueError("no rows to score: the median rank of an empty split is undefined")
    return float(np.median(r + 1.0))


def expected_random_hit_rate(k: int, n_candidates: int = 101) -> float:
    """Chance HR@K of a random ranker over C candidates: min(K, C) / C."""
    return min(k, n_candidates) / n_candidates


def expected_random_ndcg(k: int, n_candidates: int = 101) -> float:
    """Chance NDCG@K over C candidates, the rank being uniform: (1/C) Σ_{r < min(K,C)} 1/log2(r + 2)."""
    r = np.arange(min(k, n_candidates), dtype=np.float64)
    return float(np.sum(1.0 / np.log2(r + 2.0)) / n_candidates)


# --------------------------------------------------------------------------- calibration


def calibration_kl(history: np.ndarray, rec_genres: np.ndarray, n_genres: int, alpha: float = 0.01) -> float:
    """Miscalibration C_KL of Steck (2018), as used by DecRS: how far lists drift from users' genre mix.

    p_u = genre mix of the history (rows of ``history`` (N, G), normalised here, so counts
    work too); q_u = genre mix of the top-K list (``rec_genres`` (N, K) ids, −1 = unknown,
    ignored); q~ = (1 − α) q + α p keeps the log finite;
    C_KL = mean_u Σ_g p_ug log(p_ug / q~_ug), terms with p_ug = 0 contributing 0.
    Rows with an empty history or no known genre in their list are undefined and skipped.
    """
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}: 0 makes the KL infinite, 1 makes it 0")
    h = _as_2d("history", history).astype(np.float64)
    g = _as_2d("rec_genres", rec_genres).astype(np.int64)
    n = h.shape[0]
    if h.shape[1] != n_genres or g.shape[0] != n:
        raise ValueError(f"history must be (N, {n_genres}) and rec_genres (N, K) with the same N; "
                         f"got {h.shape} and {g.shape}")
    if np.any(h < 0) or not np.all(np.isfinite(h)):
        raise ValueError("history must be finite and non-negative")
    if np.any((g < -1) | (g >= n_genres)):
        raise ValueError(f"rec_genres must hold genre ids in [0, {n_genres}) or -1 for unknown")
    known = g >= 0
    rows = np.broadcast_to(np.arange(n)[:, None], g.shape)
    counts = np.bincount((rows * n_genres + g)[known], minlength=n * n_genres).reshape(n, n_genres)
    h_tot = h.sum(axis=1)
    q_tot = counts.sum(axis=1)
    ok = (h_tot > 0) & (q_tot > 0)
    if not ok.any():
        raise ValueError("no row has both a non-empty history and a known genre in its list")
    p = h[ok] / h_tot[ok, None]
    q = counts[ok] / q_tot[ok, None]
    q_mix = (1.0 - alpha) * q + alpha * p
    ratio = np.ones_like(p)
    np.divide(p, q_mix, out=ratio, where=p > 0)  # p_g = 0 → log 1 = 0
    return float((p * np.log(ratio)).sum(axis=1).mean())


def genre_share_vector(rec_genres: np.ndarray, genre: int) -> np.ndarray:
    """Per-row share of one genre among the row's K recommended slots (N, K) → (N,)."""
    g = np.atleast_2d(np.asarray(rec_genres))
    if g.shape[1] == 0:
        raise ValueError("no recommended slots")
    return (g == genre).mean(axis=1)


def genre_share(rec_genres: np.ndarray, genre: int) -> float:
    """Share of one genre among all recommended slots: #{slots of genre g} / #slots.

    Unknown (−1) slots stay in the denominator, so the shares of all genres plus the
    unknown share sum to 1.
    """
    g = np.asarray(rec_genres)
    if g.size == 0:
        raise ValueError("no recommended slots")
    return float(np.count_nonzero(g == genre) / g.size)


# --------------------------------------------------------------------------- exposure


def _exposure(top_items: np.ndarray, n_items: int) -> np.ndarray:
    """c_j = number of top-K slots holding item j, for every j in the catalog (M,)."""
    t = np.asarray(top_items, dtype=np.int64).ravel()
    if t.size == 0:
        raise ValueError("no recommended slots")
    if t.min() < 0 or t.max() >= n_items:
        raise ValueError(f"top_items must hold item ids in [0, {n_items})")
    return np.bincount(t, minlength=n_items)


def catalog_coverage(top_items: np.ndarray, n_items: int) -> float:
    """Coverage = |∪_u top-K(u)| / M: the fraction of the catalog recommended at least once."""
    return float(np.count_nonzero(_exposure(top_items, n_items)) / n_items)


def gini(top_items: np.ndarray, n_items: int) -> float:
    """Gini index of item exposure over the whole catalog (never-shown items count as 0).

    With c_(1) ≤ … ≤ c_(M) the sorted exposure counts:
    G = Σ_i (2i − M − 1) c_(i) / (M Σ_i c_(i)).  0 = equal exposure; all slots on one
    item gives the maximum (M − 1)/M.
    """
    c = np.sort(_exposure(top_items, n_items)).astype(np.float64)
    i = np.arange(1, n_items + 1, dtype=np.float64)
    return float(np.sum((2.0 * i - n_items - 1.0) * c) / (n_items * c.sum()))


def tail_share_vector(top_items: np.ndarray, tail_mask: np.ndarray) -> np.ndarray:
    """Per-row share of the row's K recommended slots that hold a long-tail item (N, K) → (N,).

    With the same K in every row, its mean is :func:`tail_share`.
    """
    mask = np.asarray(tail_mask, dtype=bool)
    _exposure(top_items, mask.shape[0])  # validates the ids
    return mask[np.atleast_2d(np.asarray(top_items, dtype=np.int64))].mean(axis=1)


def tail_share(top_items: np.ndarray, tail_mask: np.ndarray) -> float:
    """Share of recommended slots holding a long-tail item: mean over slots of tail[item]."""
    mask = np.asarray(tail_mask, dtype=bool)
    c = _exposure(top_items, mask.shape[0])
    return float(c[mask].sum() / c.sum())


# --------------------------------------------------------------------------- agreement


def rowwise_spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Mean over rows of Spearman's ρ between a[i] and b[i] (N, C), e.g. model vs true affinity.

    ρ_i = Pearson correlation of the average-tie ranks of a[i] and b[i]. Rows where either
    side is constant have no ρ and are skipped; if every row is, the result is NaN.
    """
    a = _as_2d("a", a)
    b = _as_2d("b", b)
    if a.shape != b.shape:
        raise ValueError(f"a and b must have the same shape, got {a.shape} and {b.shape}")
    from scipy.stats import rankdata  # here, not at the top: the DAG file reads the metric table while Airflow parses it

    ra = rankdata(a, axis=1)
    rb = rankdata(b, axis=1)
    ra -= ra.mean(axis=1, keepdims=True)
    rb -= rb.mean(axis=1, keepdims=True)
    ssa = np.sum(ra * ra, axis=1)
    ssb = np.sum(rb * rb, axis=1)
    ok = (ssa > 0) & (ssb > 0)
    if not ok.any():
        return float("nan")
    rho = np.sum(ra[ok] * rb[ok], axis=1) / np.sqrt(ssa[ok] * ssb[ok])
    return float(rho.mean())


def probe_r2(x_fit: np.ndarray, y_fit: np.ndarray, x_eval: np.ndarray, y_eval: np.ndarray, lam: float = 1.0) -> float:
    """Held-out R² of a linear probe: how much of ``y`` a ridge regression on ``x`` recovers.

    Fit on (x_fit, y_fit) with x standardised by the fit rows and penalty λ·N_fit; then
    R² = 1 − Σ‖y_eval − ŷ‖² / Σ‖y_eval − ȳ_fit‖² over the eval rows, all target columns
    pooled. 1: y is a linear function of x; ≈ 0 (or below): x says nothing about y.
    Used to ask how much a video embedding knows about the uploader's taste (docs/results.md).
    """
    xf, xe = _as_2d("x_fit", np.asarray(x_fit, np.float64)), _as_2d("x_eval", np.asarray(x_eval, np.float64))
    yf, ye = _as_2d("y_fit", np.asarray(y_fit, np.float64)), _as_2d("y_eval", np.asarray(y_eval, np.float64))
    if len(xf) != len(yf) or len(xe) != len(ye) or xf.shape[1] != xe.shape[1] or yf.shape[1] != ye.shape[1]:
        raise ValueError(f"shapes do not pair: x_fit {xf.shape}, y_fit {yf.shape}, x_eval {xe.shape}, y_eval {ye.shape}")
    mu, sd = xf.mean(0), xf.std(0) + 1e-8
    a, b = (xf - mu) / sd, (xe - mu) / sd
    ym = yf.mean(0)
    w = np.linalg.solve(a.T @ a + lam * len(a) * np.eye(a.shape[1]), a.T @ (yf - ym))
    sst = np.sum((ye - ym) ** 2)
    return float(1.0 - np.sum((ye - (b @ w + ym)) ** 2) / sst) if sst > 0 else float("nan")


# --------------------------------------------------------------------------- uncertainty


def bootstrap_ci(
    values: np.ndarray,
    weights: np.ndarray | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    groups: np.ndarray | None = None,
) -> tuple[float, float]:
    """Percentile bootstrap interval of the weighted mean θ = Σ_i w_i v_i / Σ_i w_i.

    ``values`` are per-row contributions (e.g. hit_vector); each replicate resamples the
    N rows with replacement, θ* = Σ_i n_i w_i v_i / Σ_i n_i w_i with n_i the draw counts,
    and the interval is the ((1−level)/2, (1+level)/2) quantiles of θ*. Weights need not
    sum to 1 here (θ is a ratio). Replicates run in chunks of at most _CHUNK_ELEMS draws.

    ``groups`` (N,) resamples clusters instead of rows (e.g. the video of each row, where a
    split holds several picks for one clip): rows of a cluster are not independent, and a
    row bootstrap would make the interval too narrow. Clusters are taken in order of first
    appearance, so with one row per cluster this is exactly the row bootstrap.
    """
    v = np.asarray(values, dtype=np.float64).ravel()
    n = v.shape[0]
    if n == 0:
        raise ValueError("no rows to bootstrap")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    w = np.ones(n) if weights is None else np.asarray(weights, dtype=np.float64).ravel()
    if w.shape != (n,) or np.any(w < 0) or not w.sum() > 0:
        raise ValueError(f"weights must be ({n},), non-negative, with a positive sum")
    wv = w * v
    if groups is not None:
        groups = np.asarray(groups).ravel()
        if groups.shape != (n,):
            raise ValueError(f"groups must be ({n},), one cluster label per row, got shape {groups.shape}")
        _, first, inverse = np.unique(groups, return_index=True, return_inverse=True)
        rank = np.empty(len(first), dtype=np.int64)
        rank[np.argsort(first, kind="stable")] = np.arange(len(first))  # cluster label → order of first appearance
        cluster = rank[inverse.ravel()]
        wv, w = np.bincount(cluster, weights=wv), np.bincount(cluster, weights=w)
        n = len(first)
    rng = np.random.default_rng(seed)
    stats = np.empty(n_boot)
    for sl in _row_chunks(n_boot, n):
        idx = rng.integers(0, n, size=(sl.stop - sl.start, n))
        stats[sl] = wv[idx].sum(axis=1) / w[idx].sum(axis=1)
    lo, hi = np.quantile(stats, [(1.0 - level) / 2.0, (1.0 + level) / 2.0])
    return float(lo), float(hi)


# --------------------------------------------------------------------------- the metric table


@dataclass(frozen=True)
class Metric:
    """One metric's meaning: which way is better, its range, and where its formula lives.

    ``direction`` is +1 (higher is better), −1 (lower is better) or 0 (a reference value
    of the data, not of the model). ``per_row``: ``deccm.evaluate.evaluate_split`` gives
    per-row values (a weighted mean), so it has bootstrap intervals and can be compared
    row by row by the gate (docs/method.md §7). ``card``: the model card's table shows it,
    under ``group`` ("ranking" or "bias"), explained by ``words``.
    """

    name: str
    direction: int
    low: float
    high: float
    formula: str
    per_row: bool
    group: str = ""  # "ranking", "bias" or "" (neither: a reference or a synthetic-only figure)
    words: str = ""  # what it measures, in a reader's words (the card's last column)
    card: bool = False

    @property
    def bounded(self) -> bool:
        return bool(np.isfinite(self.low) and np.isfinite(self.high))


def _table() -> dict[str, Metric]:
    inf = float("inf")
    rows = []
    for k in (10, 15, 20, 25):
        shown = k == 10
        rows += [Metric(f"HR_w@{k}", 1, 0.0, 1.0, "hit_rate with inverse-popularity weights (§7)", True, "ranking",
                        f"hit rate in the top {k} of 101 candidates, inverse-popularity weighted", shown),
                 Metric(f"NDCG_w@{k}", 1, 0.0, 1.0, "ndcg with inverse-popularity weights (§7)", True, "ranking",
                        f"NDCG@{k} of 101 candidates, inverse-popularity weighted", shown),
                 Metric(f"HR@{k}", 1, 0.0, 1.0, "hit_rate, unweighted (§7)", True, "ranking",
                        f"hit rate in the top {k} of 101 candidates", shown),
                 Metric(f"NDCG@{k}", 1, 0.0, 1.0, "ndcg, unweighted (§7)", True, "ranking", f"NDCG@{k} of 101 candidates",
                        shown)]
    rows += [Metric("Recall@10", 1, 0.0, 1.0, "recall_at_k over the full catalog", True, "ranking",
                    "the used track in the top 10 of the whole catalog", True),
             Metric("Recall@25", 1, 0.0, 1.0, "recall_at_k over the full catalog", True, "ranking",
                    "the used track in the top 25 of the whole catalog"),
             Metric("MRR", 1, 0.0, 1.0, "mrr over the full catalog", True, "ranking", "mean reciprocal rank in the whole catalog",
                    True),
             Metric("MedR", -1, 1.0, inf, "median_rank over the full catalog (1-based)", False, "ranking",
                    "median rank in the whole catalog (lower is better)", True),
             Metric("genre_KL@10", -1, 0.0, inf, "calibration_kl of all top-10 slots against the split's positives", False,
                    "bias", "KL(genre mix of the used tracks ‖ of the top-10 lists), lower = better calibrated", True),
             Metric("C_KL@10", -1, 0.0, inf, "calibration_kl against each row's uploader prior", False, "bias",
                    "KL(uploader's genre history ‖ top-10 genre mix), lower = better calibrated", True),
             Metric("top_genre_share@10", -1, 0.0, 1.0, "genre_share of the most-picked training genre", True, "bias",
                    "share of top-10 slots in the most popular genre (lower = less popularity bias)", True),
             Metric("coverage@10", 1, 0.0, 1.0, "catalog_coverage of the top-10 lists", False, "bias",
                    "share of the catalog that appears in some top-10 list", True),
             Metric("Gini@10", -1, 0.0, 1.0, "gini of top-10 exposure", False, "bias", "inequality of exposure (lower = fairer)",
                    True),
             Metric("tail_share@10", 1, 0.0, 1.0, "tail_share of the top-10 slots", True, "bias",
                    "share of top-10 slots given to long-tail tracks", True),
             Metric("top_genre_catalog_share", 0, 0.0, 1.0, "the catalog's share of that genre (reference)", False),
             Metric("spearman_truth", 1, -1.0, 1.0, "rowwise_spearman against the true affinity (synthetic)", False),
             Metric("taste_R2", -1, -inf, 1.0, "probe_r2 of the uploader's taste from video vectors", False)]
    return {m.name: m for m in rows}


METRICS: dict[str, Metric] = _table()


def metric(name: str) -> Metric:
    """The table's entry for ``name``; an unknown name is an error that lists the known ones."""
    if name not in METRICS:
        raise ValueError(f"unknown metric {name!r}. Fix: use one of {sorted(METRICS)} (deccm.metrics.METRICS)")
    return METRICS[name]


def worse_by(name: str, value: float, reference: float) -> float:
    """How much worse ``value`` is than ``reference`` in the metric's own direction (negative = better)."""
    m = metric(name)
    if m.direction == 0:
        raise ValueError(f"{name} describes the data, not the model: it has no better or worse")
    return m.direction * (reference - value)
