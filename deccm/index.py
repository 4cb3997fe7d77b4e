"""Top-k search of a catalog's track vectors, from a thousand tracks to millions.

Every deccm model scores a (video, track) pair as an inner product q · p (docs/method.md §6),
so serving is maximum-inner-product search over the catalog's vectors:

* :class:`ExactIndex` (default): streams the catalog in blocks of rows, keeps a running
  top-k per query, and breaks ties by the lower track id exactly like
  :func:`deccm.metrics.top_k`. Memory is one (queries × block) score matrix whatever the
  catalog size, and the ranking is that of scoring the whole catalog at once.
* :class:`IVFIndex` (optional, ``faiss-cpu``): an inverted-file index over k-means cells;
  a query scans the ``nprobe`` cells nearest to it instead of the whole catalog. It is
  approximate: ``benchmarks/catalog.py`` measures its recall@10 against exact search and
  its latency at 10k–1M tracks (docs/benchmarks.md).

:func:`build_index` picks one by name (``exact``, ``ivf``).
"""
from __future__ import annotations

import logging
import math
from typing import Protocol

import numpy as np

from deccm import metrics

log = logging.getLogger(__name__)
BLOCK = 131072  # catalog rows per score block: 512 KiB of scores per query at float32
INDEXES = ("exact", "ivf")


class SearchError(ValueError):
    """The index cannot be built or queried; the message says why and what to do."""


class Index(Protocol):
    """What serving needs: the top-k (ids, scores), each (N, k), for query vectors (N, D)."""

    def search(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]: ...


def _queries(q: np.ndarray, dim: int) -> np.ndarray:
    q = np.ascontiguousarray(np.atleast_2d(q), dtype=np.float32)
    if q.ndim != 2 or q.shape[1] != dim:
        raise SearchError(f"query vectors must be (N, {dim}), got shape {q.shape}")
    if not np.isfinite(q).all():
        raise SearchError("query vectors contain NaN or inf")
    return q


def _by_score_then_id(scores: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row, the k best candidates by (−score, id); NaN scores rank last."""
    by_id = np.argsort(ids, axis=1, kind="stable")
    scores, ids = np.take_along_axis(scores, by_id, 1), np.take_along_axis(ids, by_id, 1)
    key = np.where(np.isnan(scores), np.inf, -scores.astype(np.float64))
    order = np.argsort(key, axis=1, kind="stable")[:, :k]  # stable: equal scores keep the lower id first
    return np.take_along_axis(ids, order, 1), np.take_along_axis(scores, order, 1)


class ExactIndex:
    """Exact inner-product top-k, streamed over blocks of catalog rows."""

    def __init__(self, vectors: np.ndarray, block: int = BLOCK):
        self.vectors = np.ascontiguousarray(vectors, dtype=np.float32)  # (M, D)
        if self.vectors.ndim != 2 or len(self.vectors) == 0:
            raise SearchError(f"catalog vectors must be a non-empty (M, D) array, got shape {self.vectors.shape}")
        self.block = int(block)

    def search(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        q = _queries(q, self.vectors.shape[1])
        m = len(self.vectors)
        if not 1 <= k <= m:
            raise SearchError(f"k must be in [1, {m}] for a catalog of {m} tracks, got {k}")
        best_i = np.zeros((len(q), 0), np.int64)
        best_s = np.zeros((len(q), 0), np.float32)
        for start in range(0, m, self.block):
            s = q @ self.vectors[start:start + self.block].T  # (N, B)
            part = metrics.top_k(s, min(k, s.shape[1]))  # the block's best by (−score, id): the global best is among them
            best_i, best_s = _by_score_then_id(np.concatenate([best_s, np.take_along_axis(s, part, 1)], 1),
                                               np.concatenate([best_i, part + start], 1), k)
        return best_i, best_s


class IVFIndex:
    """Approximate inner-product top-k with a faiss inverted-file index (``faiss-cpu``)."""

    def __init__(self, vectors: np.ndarray, nlist: int | None = None, nprobe: int = 32, seed: int = 0):
        try:
            import faiss
        except ImportError:
            raise SearchError("the ivf index needs faiss-cpu. Fix: pip install 'deccm[scale]' (or use index exact).") from None
        x = np.ascontiguousarray(vectors, dtype=np.float32)
        if x.ndim != 2 or len(x) == 0 or not np.isfinite(x).all():
            raise SearchError(f"catalog vectors must be a finite, non-empty (M, D) array, got shape {x.shape}")
        m, d = x.shape
        self.nlist = int(nlist or max(1, min(m // 39, round(math.sqrt(m)))))  # √M cells; faiss wants ≥ 39 points per cell
        self.nprobe = min(int(nprobe), self.nlist)
        quantizer = faiss.IndexFlatIP(d)
        self.index = faiss.IndexIVFFlat(quantizer, d, self.nlist, faiss.METRIC_INNER_PRODUCT)
        rng = np.random.default_rng(seed)
        n_train = min(m, 64 * self.nlist)  # k-means on a sample: 64 points per cell keeps a 1M-track build to seconds
        sample = x[rng.choice(m, size=n_train, replace=False)] if n_train < m else x
        self.index.cp.seed = seed
        self.index.cp.min_points_per_centroid = 16  # the sample above is deliberate: no warning about it
        self.index.train(sample)
        self.index.add(x)
        self.index.nprobe = self.nprobe
        self.m, self.dim = m, d
        self._exact = ExactIndex(x)  # the same array (no copy): fills a query whose probed cells run short
        log.info("ivf index: %d tracks in %d cells, nprobe %d", m, self.nlist, self.nprobe)

    def search(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        q = _queries(q, self.dim)
        if not 1 <= k <= self.m:
            raise SearchError(f"k must be in [1, {self.m}] for a catalog of {self.m} tracks, got {k}")
        scores, ids = self.index.search(q, k)
        if (ids < 0).any():  # the probed cells held fewer than k tracks: fill from exact search, never return holes
            bad = (ids < 0).any(1)
            ids[bad], scores[bad] = self._exact.search(q[bad], k)
        return ids.astype(np.int64), scores


def check_kind(kind: str) -> str:
    """``kind`` if it names an index, else a clear error."""
    if kind not in INDEXES:
        raise SearchError(f"index {kind!r} is unknown. Fix: one of {', '.join(INDEXES)}.")
    return kind


def build_index(vectors: np.ndarray, kind: str = "exact", **options: int) -> Index:
    """The index named ``kind`` over the catalog vectors (M, D)."""
    return (ExactIndex if check_kind(kind) == "exact" else IVFIndex)(vectors, **options)
