"""The synthetic benchmark plants the confounder it claims to, and knows the truth."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from deccm.data import load_dataset
from deccm.data.protocol import inverse_popularity_weights, sample_negatives
from deccm.data.synth import synth


@pytest.fixture(scope="module")
def small_like(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Big enough for stable shares, small enough for seconds: `small` with fewer rows."""
    return synth(tmp_path_factory.mktemp("d") / "s", preset="small", seed=3,
                 n_train=6000, n_val=600, n_test=1500, n_pgc=600, n_uploaders=500)


def _shares(genre: np.ndarray, tracks: np.ndarray) -> np.ndarray:
    return np.bincount(genre[tracks], minlength=6) / len(tracks)


def test_logged_positives_over_represent_popular_genres(small_like: Path) -> None:
    u = load_dataset(small_like).ugc
    train = _shares(u.music_genre, u.train.music)
    oracle = _shares(u.music_genre, u.test_oracle.music)
    catalog = np.bincount(u.music_genre, minlength=6) / len(u.music_genre)
    # genre 0 is the most popular: the logs over-represent it relative to the truth and the catalog
    assert train[0] > oracle[0] + 0.1
    assert train[0] > catalog[0] + 0.1
    # and the least popular genres are under-represented in the logs
    assert train[-2:].sum() < oracle[-2:].sum() - 0.05
    # biased test is drawn like training
    assert abs(_shares(u.music_genre, u.test.music)[0] - train[0]) < 0.05


def test_uploader_taste_drives_logged_choices(small_like: Path) -> None:
    ds = load_dataset(small_like)
    u, t = ds.ugc, ds.truth
    true_pref = t.uploader_preference[u.train.uploader]  # (N, G)
    chosen = true_pref[np.arange(len(u.train)), u.music_genre[u.train.music]]
    # the chosen genre is, on average, one the uploader prefers more than a uniform genre
    assert chosen.mean() > true_pref.mean() * 1.5


def test_true_affinity_ranks_oracle_positives_far_above_chance(small_like: Path) -> None:
    ds = load_dataset(small_like)
    rows = ds.ugc.test_oracle
    aff = ds.truth.affinity(rows.video, rows.candidates())  # (N, 101)
    rank = (aff[:, 1:] > aff[:, :1]).sum(axis=1)
    hr10 = (rank < 10).mean()
    assert hr10 > 0.6 > 3 * 10 / 101
    # full-catalog affinity agrees with the candidate-gathered one
    full = ds.truth.affinity(rows.video[:5])
    np.testing.assert_allclose(full[np.arange(5)[:, None], rows.candidates()[:5]], aff[:5], rtol=1e-4, atol=1e-5)


def test_pgc_pairs_follow_affinity_without_uploader_bias(small_like: Path) -> None:
    u = load_dataset(small_like).ugc
    pgc = load_dataset(small_like).pgc
    pgc_shares = _shares(u.music_genre, pgc.train.music)
    train = _shares(u.music_genre, u.train.music)
    assert pgc_shares[0] < train[0] - 0.1


def test_priors_are_leave_one_out(small_like: Path) -> None:
    ds = load_dataset(small_like)
    t, g = ds.ugc.train, ds.ugc.music_genre
    counts = np.bincount(t.uploader, minlength=ds.truth.uploader_preference.shape[0])
    single = np.flatnonzero(counts[t.uploader] == 1)
    assert len(single) > 0
    # an uploader with a single training row has no other rows: the prior is the global share, whatever they chose
    glob = np.bincount(g[t.music], minlength=6) / len(t)
    np.testing.assert_allclose(t.prior[single], np.broadcast_to(glob, (len(single), 6)), atol=1e-5)
    np.testing.assert_allclose(t.propensity, np.clip(t.prior[np.arange(len(t)), g[t.music]], 0.01, 1), rtol=1e-6)


def test_weights_come_from_training_counts_only() -> None:
    train = np.array([0, 0, 0, 1])
    w = inverse_popularity_weights(train, np.array([0, 1, 2]), n_tracks=3)
    np.testing.assert_allclose(w, np.array([1 / 4, 1 / 2, 1]) / (1 / 4 + 1 / 2 + 1))


def test_negatives_are_distinct_and_exclude_positive() -> None:
    rng = np.random.default_rng(0)
    pos = rng.integers(0, 101, size=500)
    neg = sample_negatives(rng, pos, n_tracks=101)  # 101 tracks: the negatives are exactly "all but the positive"
    assert neg.shape == (500, 100)
    assert not (neg == pos[:, None]).any()
    assert (np.sort(neg, axis=1)[:, 1:] != np.sort(neg, axis=1)[:, :-1]).all()


def test_negative_draws_keep_their_order() -> None:
    """Pinned draws: a change in how negatives consume the generator would silently change every dataset."""
    rng = np.random.default_rng(42)
    a = sample_negatives(rng, np.array([0, 3, 7]), n_tracks=8, k=4)
    b = sample_negatives(rng, np.array([1]), n_tracks=8, k=4)  # the same stream, continued
    assert np.sort(a, axis=1).tolist() == [[1, 3, 4, 6], [0, 2, 6, 7], [0, 1, 3, 5]]
    assert np.sort(b, axis=1).tolist() == [[2, 3, 4, 5]]


def test_same_seed_same_data_other_seed_differs(tmp_path: Path, tiny_dataset: Path) -> None:
    again = load_dataset(synth(tmp_path / "a", preset="tiny", seed=0))
    base = load_dataset(tiny_dataset)
    assert again.manifest["files"] == base.manifest["files"]
    other = load_dataset(synth(tmp_path / "b", preset="tiny", seed=1))
    assert not np.array_equal(other.ugc.train.music, base.ugc.train.music)


def test_cli_synth_then_validate(tmp_path: Path) -> None:
    dst = tmp_path / "cli"
    r = subprocess.run([sys.executable, "-m", "deccm.cli", "data", "synth", str(dst), "--preset", "tiny", "--seed", "2"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    r = subprocess.run([sys.executable, "-m", "deccm.cli", "data", "validate", str(dst)], capture_output=True, text=True)
    assert r.returncode == 0 and "OK" in r.stdout
    r = subprocess.run([sys.executable, "-m", "deccm.cli", "data", "synth", str(dst), "--preset", "tiny"], capture_output=True, text=True)
    assert r.returncode == 2 and "--overwrite" in r.stderr


def test_default_output_goes_to_state_dir(_state_dir: Path) -> None:
    r = subprocess.run([sys.executable, "-m", "deccm.data", "synth", "--preset", "tiny"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert (_state_dir / "data" / "synth-tiny" / "dataset.json").is_file()
    r = subprocess.run([sys.executable, "-m", "deccm.data", "synth", "--preset", "tiny", "--confounding", "moderate", "--gamma", "0"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    gen = load_dataset(_state_dir / "data" / "synth-tiny-tv3-g0").manifest["generator"]
    assert (gen["taste_video"], gen["gamma"]) == (3.0, 0.0)
    r = subprocess.run([sys.executable, "-m", "deccm.data", "synth", "--preset", "tiny", "--mediated", "moderate"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert load_dataset(_state_dir / "data" / "synth-tiny-tc3").manifest["generator"]["taste_content"] == 3.0


def test_gate_split_is_new_clips_and_leaves_the_other_splits_unchanged(tmp_path: Path) -> None:
    """The gate's clips come from their own stream: a dataset without them has the same train/val/test rows."""
    with_gate = load_dataset(synth(tmp_path / "g", preset="tiny", seed=5, taste_video=3.0)).ugc
    without = load_dataset(synth(tmp_path / "n", preset="tiny", seed=5, taste_video=3.0, n_gate=0)).ugc
    assert without.gate is None and "gate" not in without.rank_splits()
    for split in ("train", "val", "test", "test_oracle"):
        a, b = getattr(with_gate, split), getattr(without, split)
        assert np.array_equal(a.video, b.video) and np.array_equal(a.music, b.music), split
    n = len(without.video_features)
    assert np.array_equal(with_gate.video_features[:n], without.video_features)
    gate = with_gate.gate
    assert len(gate) == 100 and gate.video.min() == n  # clips of its own, after every other video
    assert gate.uploader is not None and gate.prior is not None and gate.negatives.shape == (100, 100)
    assert not set(gate.video) & (set(with_gate.val.video) | set(with_gate.train.video) | set(with_gate.test.video))


def test_mediated_taste_pulls_the_true_content_and_zero_changes_nothing(tmp_path: Path) -> None:
    """taste_content = t moves an uploaded video's *content* toward the genres its uploader favours,
    so the truth (and the oracle positives) follow the taste; t = 0 is the old data byte for byte."""
    from deccm.data.synth import MEDIATED

    base = synth(tmp_path / "base", preset="tiny", seed=4, taste_video=3.0)
    zero = synth(tmp_path / "zero", preset="tiny", seed=4, taste_video=3.0, taste_content=0.0)
    for f in sorted(p.relative_to(base) for p in base.rglob("*") if p.is_file()):
        assert (base / f).read_bytes() == (zero / f).read_bytes(), f
    on = load_dataset(synth(tmp_path / "on", preset="tiny", seed=4, taste_video=3.0, taste_content=MEDIATED["strong"],
                            n_train=3000, n_uploaders=200))
    off = load_dataset(synth(tmp_path / "off", preset="tiny", seed=4, taste_video=3.0, n_train=3000, n_uploaders=200))
    assert on.manifest["generator"]["taste_content"] == MEDIATED["strong"] and "taste_content" not in off.manifest["generator"]
    assert np.array_equal(on.pgc.segment_features, off.pgc.segment_features)  # PGC has no uploader: no pull
    # the uploader's favoured genre gains true affinity: the best track of a video is in it more often
    t, g = on.truth, on.ugc.music_genre
    ids = on.ugc.train.video
    fav = t.uploader_preference[on.ugc.train.uploader].argmax(1)

    def fav_share(truth: object) -> float:
        best = truth.affinity(ids).argmax(1)  # type: ignore[attr-defined]
        return float(np.mean(g[best] == fav))

    assert fav_share(on.truth) > fav_share(off.truth) + 0.1, (fav_share(on.truth), fav_share(off.truth))
