"""Metrics (§7): known answers, chance levels, pessimistic ties and the edge cases that hide bugs."""
from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from deccm import metrics as M

FAST = settings(max_examples=25, deadline=None)
KS = (1, 10, 15, 20, 25)


def _weights(draw: st.DrawFn, n: int) -> np.ndarray:
    raw = draw(hnp.arrays(np.float64, n, elements=st.floats(0.01, 100.0)))
    return raw / raw.sum()


@st.composite
def perfect_case(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray]:
    n = draw(st.integers(1, 40))
    c = draw(st.integers(1, 101))
    scores = draw(hnp.arrays(np.float64, (n, c), elements=st.floats(-1e6, 1e6)))
    scores[:, 0] = scores.max(axis=1) + 1.0  # strictly above every negative
    return scores, _weights(draw, n)


# --------------------------------------------------------------------------- ranks and accuracy


@FAST
@given(perfect_case())
def test_perfect_ranker_scores_one_for_any_normalised_weights(case: tuple[np.ndarray, np.ndarray]) -> None:
    scores, w = case
    ranks = M.positive_rank(scores)
    assert np.all(ranks == 0)
    for k in KS:
        assert M.hit_rate(ranks, k, w) == pytest.approx(1.0, abs=1e-12)
        assert M.ndcg(ranks, k, w) == pytest.approx(1.0, abs=1e-12)
    assert M.mrr(ranks, w) == pytest.approx(1.0, abs=1e-12)
    assert M.median_rank(ranks) == 1.0


@settings(max_examples=5, deadline=None)
@given(st.integers(0, 2**32 - 1))
def test_random_ranker_matches_chance_within_its_standard_error(seed: int) -> None:
    n, c = 20_000, 101
    ranks = M.positive_rank(np.random.default_rng(seed).random((n, c)))
    for k in KS:
        p = M.expected_random_hit_rate(k, c)
        assert p == k / c
        assert abs(M.hit_rate(ranks, k) - p) < 5 * math.sqrt(p * (1 - p) / n)
        # NDCG per row is g(r) = 1/log2(r+2) for r<K, r uniform on 0..C-1: mean and SE from that law.
        g = np.where(np.arange(c) < k, 1 / np.log2(np.arange(c) + 2), 0.0)
        mean, sd = g.mean(), g.std()
        assert M.expected_random_ndcg(k, c) == pytest.approx(mean, rel=1e-12)
        assert abs(M.ndcg(ranks, k) - mean) < 5 * sd / math.sqrt(n)


@FAST
@given(st.integers(1, 30), st.integers(2, 101), st.floats(-1e3, 1e3))
def test_constant_scorer_never_hits(n: int, c: int, value: float) -> None:
    ranks = M.positive_rank(np.full((n, c), value))
    assert np.all(ranks == c - 1)
    for k in KS:
        if k < c:
            assert M.hit_rate(ranks, k) == 0.0
            assert M.ndcg(ranks, k) == 0.0


def test_nan_scores_count_against_the_positive() -> None:
    scores = np.array([[np.nan, 0.0, 1.0], [5.0, np.nan, 1.0], [5.0, 1.0, 2.0]])
    np.testing.assert_array_equal(M.positive_rank(scores), [2, 1, 0])


def test_weighted_metrics_by_hand() -> None:
    ranks = np.array([0, 3, 12, 30])
    w = np.array([0.1, 0.2, 0.3, 0.4])
    # Hits at K=10: rows 0 and 1; at K=25: rows 0, 1, 2.
    assert M.hit_rate(ranks, 10, w) == pytest.approx(0.3)
    assert M.hit_rate(ranks, 25, w) == pytest.approx(0.6)
    assert M.hit_rate(ranks, 10) == pytest.approx(0.5)
    assert M.ndcg(ranks, 10, w) == pytest.approx(0.1 / 1 + 0.2 / math.log2(5))
    assert M.ndcg(ranks, 25, w) == pytest.approx(0.1 + 0.2 / math.log2(5) + 0.3 / math.log2(14))
    assert M.mrr(ranks, w) == pytest.approx(0.1 + 0.2 / 4 + 0.3 / 13 + 0.4 / 31)
    assert M.median_rank(ranks) == 8.5  # 1-based ranks 1, 4, 13, 31
    np.testing.assert_array_equal(M.hit_vector(ranks, 10), [1.0, 1.0, 0.0, 0.0])
    np.testing.assert_allclose(M.ndcg_vector(ranks, 10), [1.0, 1 / math.log2(5), 0.0, 0.0])


@pytest.mark.parametrize("w, match", [
    (np.array([0.5, 0.6]), r"sum to 1\.1.*Fix: normalise"),
    (np.array([3.0, 1.0]), r"sum to 4.*w = w / w.sum\(\)"),
    (np.array([1.5, -0.5]), r"non-negative"),
    (np.array([1.0]), r"shape \(2,\)"),
])
def test_bad_weights_raise_a_fixable_error(w: np.ndarray, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        M.hit_rate(np.array([0, 1]), 10, w)
    with pytest.raises(ValueError, match=match):
        M.ndcg(np.array([0, 1]), 10, w)


def test_empty_split_raises() -> None:
    with pytest.raises(ValueError, match="empty"):
        M.hit_rate(np.array([], dtype=int), 10)


@FAST
@given(st.integers(1, 20), st.integers(1, 30), st.integers(0, 2**32 - 1))
def test_catalog_rank_equals_positive_rank_on_the_candidate_set(n: int, m: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    scores = rng.integers(0, 4, size=(n, m)).astype(np.float32)  # many ties
    cand = rng.permuted(np.tile(np.arange(m), (n, 1)), axis=1)  # the whole catalog, positive first
    sub = np.take_along_axis(scores, cand, axis=1)
    np.testing.assert_array_equal(M.catalog_rank(scores, cand[:, 0]), M.positive_rank(sub))


def test_catalog_rank_and_recall_by_hand(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(M, "_CHUNK_ELEMS", 8)  # 2 rows of 4 per chunk: crosses chunk borders
    scores = np.array([[0.1, 0.9, 0.5, 0.3], [1.0, 1.0, 0.0, 0.0], [0.0, 0.2, 0.4, 0.8]])
    ranks = M.catalog_rank(scores, np.array([2, 1, 3]))
    np.testing.assert_array_equal(ranks, [1, 1, 0])  # row 1: the tie with item 0 counts against
    assert M.recall_at_k(ranks, 1) == pytest.approx(1 / 3)
    assert M.recall_at_k(ranks, 2) == 1.0


# --------------------------------------------------------------------------- top-K


def test_top_k_order_and_tie_rule() -> None:
    scores = np.array([[1.0, 3.0, 3.0, 2.0, 3.0], [np.nan, 0.0, 0.0, -1.0, 5.0]])
    np.testing.assert_array_equal(M.top_k(scores, 2), [[1, 2], [4, 1]])
    np.testing.assert_array_equal(M.top_k(scores, 4), [[1, 2, 4, 3], [4, 1, 2, 3]])
    np.testing.assert_array_equal(M.top_k(scores, 5)[1], [4, 1, 2, 3, 0])  # NaN last
    with pytest.raises(ValueError, match="k must be"):
        M.top_k(scores, 6)


@FAST
@given(st.integers(1, 12), st.integers(1, 40), st.data())
def test_top_k_matches_a_full_sort(n: int, m: int, data: st.DataObject) -> None:
    scores = data.draw(hnp.arrays(np.float64, (n, m), elements=st.integers(0, 3).map(float)))
    k = data.draw(st.integers(1, m))
    ref = np.array([np.lexsort((np.arange(m), -row))[:k] for row in scores])
    np.testing.assert_array_equal(M.top_k(scores, k), ref)


def test_top_k_is_unchanged_by_chunking(monkeypatch: pytest.MonkeyPatch) -> None:
    scores = np.random.default_rng(0).integers(0, 5, size=(37, 50)).astype(np.float32)
    whole = M.top_k(scores, 7)
    monkeypatch.setattr(M, "_CHUNK_ELEMS", 150)  # 3 rows a chunk
    np.testing.assert_array_equal(M.top_k(scores, 7), whole)


# --------------------------------------------------------------------------- calibration


def test_calibration_kl_is_zero_when_the_list_matches_the_history() -> None:
    history = np.array([[0.5, 0.25, 0.25, 0.0], [0.0, 0.0, 1.0, 0.0]])
    rec = np.array([[0, 0, 1, 2], [2, 2, 2, 2]])
    assert M.calibration_kl(history, rec, 4) == pytest.approx(0.0, abs=1e-12)
    assert M.calibration_kl(history * 8, rec, 4) == pytest.approx(0.0, abs=1e-12)  # counts normalise


def test_calibration_kl_hand_value_and_ordering() -> None:
    history = np.array([[0.5, 0.5]])
    one_genre = np.array([[0, 0, 0, 0]])
    # q = (1, 0); q~ = 0.99 * (1, 0) + 0.01 * (0.5, 0.5) = (0.995, 0.005)
    expected = 0.5 * math.log(0.5 / 0.995) + 0.5 * math.log(0.5 / 0.005)
    assert M.calibration_kl(history, one_genre, 2) == pytest.approx(expected, rel=1e-12)
    assert expected > 1.9
    mixed = np.array([[0, 1, 0, 1]])
    nearly = np.array([[0, 0, 0, 1]])
    values = [M.calibration_kl(history, r, 2) for r in (mixed, nearly, one_genre)]
    assert values[0] == pytest.approx(0.0, abs=1e-12) and 0 < values[1] < values[2]


def test_calibration_kl_ignores_unknown_genres_and_skips_undefined_rows() -> None:
    history = np.array([[1.0, 0.0], [0.0, 0.0], [0.5, 0.5]])
    rec = np.array([[0, -1, 0], [0, 1, 1], [-1, -1, -1]])
    assert M.calibration_kl(history, rec, 2) == pytest.approx(0.0, abs=1e-12)  # only row 0 counts
    with pytest.raises(ValueError, match="genre ids"):
        M.calibration_kl(history, np.array([[0], [2], [0]]), 2)
    with pytest.raises(ValueError, match="alpha"):
        M.calibration_kl(history, rec, 2, alpha=0.0)


def test_genre_share_counts_every_slot() -> None:
    rec = np.array([[0, 1, 1, -1], [1, 1, 2, 2]])
    assert M.genre_share(rec, 1) == 0.5
    assert M.genre_share(rec, -1) == 0.125
    assert sum(M.genre_share(rec, g) for g in (-1, 0, 1, 2, 3)) == 1.0


# --------------------------------------------------------------------------- exposure


def test_identical_lists_cover_k_over_m() -> None:
    top = np.tile([3, 1, 4], (50, 1))
    assert M.catalog_coverage(top, 10) == pytest.approx(3 / 10)
    # 3 items share all exposure equally, 7 get none: sorted c = (0 x7, 50 x3)
    i = np.arange(1, 11)
    c = np.r_[np.zeros(7), np.full(3, 50.0)]
    assert M.gini(top, 10) == pytest.approx(np.sum((2 * i - 11) * c) / (10 * c.sum()))
    assert M.gini(top, 10) == pytest.approx(0.7)


def test_gini_extremes() -> None:
    m = 20
    uniform = np.arange(m * 3).reshape(-1, 4) % m  # every item shown exactly 3 times
    assert M.catalog_coverage(uniform, m) == 1.0
    assert M.gini(uniform, m) == pytest.approx(0.0, abs=1e-12)
    # All slots on one item: c = (0, ..., 0, T) gives Σ(2i-M-1)c_i = (M-1)T, hence G = (M-1)/M.
    assert M.gini(np.full((7, 5), 11), m) == pytest.approx(1 - 1 / m)
    assert M.catalog_coverage(np.full((7, 5), 11), m) == 1 / m


def test_tail_share_by_hand() -> None:
    tail = np.zeros(6, dtype=bool)
    tail[[4, 5]] = True
    top = np.array([[0, 4, 1], [5, 4, 2]])
    assert M.tail_share(top, tail) == pytest.approx(3 / 6)
    with pytest.raises(ValueError, match="item ids"):
        M.tail_share(np.array([[6]]), tail)


# --------------------------------------------------------------------------- agreement and CI


def test_rowwise_spearman_extremes_and_ties() -> None:
    a = np.random.default_rng(1).random((30, 12))
    assert M.rowwise_spearman(a, a) == pytest.approx(1.0)
    assert M.rowwise_spearman(a, -a) == pytest.approx(-1.0)
    assert M.rowwise_spearman(a, np.exp(3 * a)) == pytest.approx(1.0)  # rank-based
    # Constant rows are skipped, not counted as 0.
    b = a.copy()
    b[:10] = 0.5
    assert M.rowwise_spearman(a, np.where(np.arange(30)[:, None] < 10, b, a)) == pytest.approx(1.0)
    assert math.isnan(M.rowwise_spearman(np.ones((2, 3)), a[:2, :3]))
    # Ties take the average rank: ranks (1.5, 1.5, 3) vs (1, 2, 3) give rho = 1.5 / sqrt(1.5 * 2).
    assert M.rowwise_spearman(np.array([[0.0, 0.0, 1.0]]), np.array([[1.0, 2.0, 3.0]])) == pytest.approx(
        1.5 / math.sqrt(3.0))


def test_bootstrap_ci_contains_the_estimate_and_shrinks_with_n() -> None:
    rng = np.random.default_rng(2)
    widths = []
    for n in (200, 5_000):
        v = (rng.random(n) < 0.3).astype(float)
        w = rng.random(n)
        lo, hi = M.bootstrap_ci(v, w, n_boot=400, seed=3)
        point = float(w @ v / w.sum())
        assert lo <= point <= hi
        widths.append(hi - lo)
    assert widths[1] < widths[0] / 3  # width ∝ 1/sqrt(n): ratio ≈ 5
    assert M.bootstrap_ci(v, n_boot=50, seed=9) == M.bootstrap_ci(v, n_boot=50, seed=9)


def test_bootstrap_ci_width_matches_the_binomial_and_survives_chunking(monkeypatch: pytest.MonkeyPatch) -> None:
    n, p = 2_000, 0.2
    v = (np.arange(n) < p * n).astype(float)
    monkeypatch.setattr(M, "_CHUNK_ELEMS", 3 * n)  # 3 replicates a chunk
    lo, hi = M.bootstrap_ci(v, n_boot=600, seed=0)
    half = 1.96 * math.sqrt(p * (1 - p) / n)
    assert (hi - lo) / 2 == pytest.approx(half, rel=0.15)
    assert lo < p < hi


def test_bootstrap_ci_over_clusters_widens_for_copied_rows_and_is_the_row_bootstrap_for_singletons() -> None:
    rng = np.random.default_rng(4)
    v = (rng.random(300) < 0.3).astype(float)
    w = rng.random(300)
    # one row per cluster, clusters labelled out of order: the same draws as the row bootstrap
    assert M.bootstrap_ci(v, w, n_boot=200, seed=1, groups=rng.permutation(300) + 7) == M.bootstrap_ci(v, w, n_boot=200, seed=1)
    # every value copied 10 times: rows are not independent, and only the cluster bootstrap knows
    lo_r, hi_r = M.bootstrap_ci(np.repeat(v, 10), n_boot=400, seed=0)
    lo_c, hi_c = M.bootstrap_ci(np.repeat(v, 10), n_boot=400, seed=0, groups=np.repeat(np.arange(300), 10))
    lo_1, hi_1 = M.bootstrap_ci(v, n_boot=400, seed=0)
    assert (hi_c - lo_c) == pytest.approx(hi_1 - lo_1, rel=0.2)
    assert (hi_r - lo_r) < 0.5 * (hi_c - lo_c)  # ≈ 1/sqrt(10) of it
    with pytest.raises(ValueError, match="one cluster label per row"):
        M.bootstrap_ci(v, groups=np.arange(5))
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_probe_r2_is_one_for_a_linear_target_and_near_zero_for_noise(seed: int) -> None:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((600, 8))
    y = x @ rng.standard_normal((8, 3)) + 5.0
    assert M.probe_r2(x[:400], y[:400], x[400:], y[400:], lam=1e-8) == pytest.approx(1.0, abs=1e-6)
    noise = rng.standard_normal((600, 3))
    assert abs(M.probe_r2(x[:400], noise[:400], x[400:], noise[400:])) < 0.05
    with pytest.raises(ValueError, match="do not pair"):
        M.probe_r2(x[:400], y[:300], x[400:], y[400:])
