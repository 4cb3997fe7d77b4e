"""The one scoring path: Ranker vectors, ranking against a precomputed catalog, popularity."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from deccm.data import load_dataset
from deccm.serve import popularity_ranker


def test_popularity_ranker_ranks_most_picked_tracks_first(tiny_dataset: Path) -> None:
    ds = load_dataset(tiny_dataset)
    rk = popularity_ranker(ds.ugc.train.music, ds.n_tracks)
    catalog = rk.music_vectors(ds.ugc.music_features)
    q = rk.video_vectors(ds.ugc.video_features[:3])
    ids, scores = rk.rank(q, catalog, k=5)
    counts = np.bincount(ds.ugc.train.music, minlength=ds.n_tracks)
    assert ids.shape == (3, 5) and (np.diff(scores, axis=1) <= 0).all()
    assert counts[ids[0, 0]] == counts.max()
    np.testing.assert_array_equal(ids[0], ids[1])  # the same list for every video
    np.testing.assert_allclose(rk.scores(ds.ugc.video_features[:3], ds.ugc.music_features)[:, ids[0, 0]], scores[:, 0])
