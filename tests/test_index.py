"""Nearest-track search: the blocked exact index ranks like scoring the whole catalog; the faiss IVF index is close."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from deccm import metrics
from deccm.index import ExactIndex, IVFIndex, SearchError, build_index


@settings(max_examples=60, deadline=None)
@given(m=st.integers(1, 300), n=st.integers(1, 4), k=st.integers(1, 40), block=st.integers(1, 64), seed=st.integers(0, 10**6),
       dup=st.booleans())
def test_blocked_exact_search_is_the_full_ranking(m: int, n: int, k: int, block: int, seed: int, dup: bool) -> None:
    rng = np.random.default_rng(seed)
    v = rng.integers(-2, 3, size=(m, 4)).astype(np.float32)  # small integers: many exact ties across blocks
    if dup and m > 3:
        v[m // 2:] = v[0]
    q = rng.integers(-2, 3, size=(n, 4)).astype(np.float32)
    k = min(k, m)
    full = q @ v.T
    ids, scores = ExactIndex(v, block=block).search(q, k)
    np.testing.assert_array_equal(ids, metrics.top_k(full, k))  # ties go to the lower id, as everywhere in deccm
    np.testing.assert_array_equal(scores, np.take_along_axis(full, ids, 1))


def test_bad_queries_and_settings_get_clear_errors() -> None:
    v = np.eye(5, dtype=np.float32)
    idx = ExactIndex(v)
    with pytest.raises(SearchError, match=r"query vectors must be \(N, 5\), got shape \(1, 3\)"):
        idx.search(np.ones(3), 2)
    with pytest.raises(SearchError, match="NaN or inf"):
        idx.search(np.full(5, np.nan), 2)
    with pytest.raises(SearchError, match=r"k must be in \[1, 5\]"):
        idx.search(np.ones(5), 6)
    with pytest.raises(SearchError, match="non-empty"):
        ExactIndex(np.zeros((0, 5)))
    with pytest.raises(SearchError, match="index 'hnsw' is unknown. Fix: one of exact, ivf"):
        build_index(v, "hnsw")


def _clustered(m: int, d: int, seed: int) -> np.ndarray:
    """Embedding-like vectors: unit-norm points around 50 genre-like centres."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((50, d))
    x = centres[rng.integers(0, 50, m)] + 0.6 * rng.standard_normal((m, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def test_ivf_index_finds_nearly_the_exact_top10() -> None:
    v, q = _clustered(20000, 32, 0), _clustered(200, 32, 1)
    exact, _ = ExactIndex(v).search(q, 10)
    ivf = IVFIndex(v)
    ids, scores = ivf.search(q, 10)
    assert ivf.nlist == 141 and ids.shape == (200, 10) and (np.diff(scores, axis=1) <= 1e-6).all()
    assert all(len(set(r)) == 10 for r in ids) and ids.min() >= 0
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ids, exact)])
    assert recall >= 0.9, recall
    np.testing.assert_allclose(scores, np.take_along_axis(q @ v.T, ids, 1), rtol=1e-4, atol=1e-5)
    # probing every cell is exhaustive: the same lists as exact search (these scores have no ties)
    ids_all, _ = IVFIndex(v, nlist=16, nprobe=16).search(q, 10)
    np.testing.assert_array_equal(ids_all, exact)


def test_recommender_serves_through_either_index(tiny_dataset: Path, tmp_path: Path) -> None:
    from deccm.models import ModelConfig
    from deccm.runs import TrainConfig
    from deccm.serve import Recommender
    from deccm.train import train
    from deccm.data import load_dataset

    run = train("student", tiny_dataset, tmp_path / "s", ModelConfig.for_mode("fixed", distill="off"),
                TrainConfig(epochs=1, batch_size=64, seed=1, device="cpu"), variant="no-distill")
    x = load_dataset(tiny_dataset).ugc.video_features[:20]
    exact = Recommender.from_run(run, device="cpu")
    ivf = Recommender.from_run(run, device="cpu", index="ivf")  # 160 tracks: 4 cells, all probed
    full = exact.ranker.scores(x, load_dataset(tiny_dataset).ugc.music_features)
    np.testing.assert_array_equal(exact.rank_features(x, 10)[0], metrics.top_k(full, 10))
    np.testing.assert_array_equal(ivf.rank_features(x, 10)[0], exact.rank_features(x, 10)[0])
    with pytest.raises(SearchError, match="index 'annoy' is unknown"):
        Recommender.from_run(run, device="cpu", index="annoy")
