"""The one scoring path: Ranker vectors, ranking against a precomputed catalog, popularity."""
from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

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


@pytest.fixture(scope="module")
def student_run(tiny_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from deccm.models import ModelConfig
    from deccm.runs import TrainConfig
    from deccm.train import train

    return train("student", tiny_dataset, tmp_path_factory.mktemp("runs") / "s", ModelConfig.for_mode("fixed", distill="off"),
                 TrainConfig(epochs=2, batch_size=64, seed=1, device="cpu"), variant="no-distill")


def test_recommender_ranks_like_evaluate(student_run: Path, tiny_dataset: Path) -> None:
    from deccm.evaluate import evaluate
    from deccm.serve import Recommender

    rec = Recommender.from_run(student_run, device="cpu")
    results, _ = evaluate([str(student_run)], splits=["test"], n_boot=0, device="cpu")
    top = results[0].top  # (N, 10) evaluate's full-catalog ranking of the test rows
    ds = load_dataset(tiny_dataset)
    feats = ds.ugc.video_features[ds.ugc.test.video]
    ids, scores = rec.rank_features(feats, k=top.shape[1])
    np.testing.assert_array_equal(ids, top)
    assert (np.diff(scores, axis=1) <= 0).all()
    one = rec.recommend(feats[3], k=5)
    assert [s.track for s in one] == list(top[3, :5]) and [s.rank for s in one] == [1, 2, 3, 4, 5]
    genres = ds.genres
    assert one[0].genre == genres[ds.ugc.music_genre[one[0].track]] and one[0].title == f"synthetic track {one[0].track}"
    with pytest.raises(ValueError, match="2048 columns"):
        rec.recommend(feats[3][:100])


@pytest.mark.slow
def test_serving_never_imports_training(student_run: Path, tiny_dataset: Path) -> None:
    code = textwrap.dedent(f"""
        import sys
        import numpy as np
        from deccm.data import load_dataset
        from deccm.serve import Recommender
        rec = Recommender.from_run({str(student_run)!r}, device="cpu")
        ds = load_dataset({str(tiny_dataset)!r})
        out = rec.recommend(np.asarray(ds.ugc.video_features[0]), k=3)
        assert len(out) == 3, out
        bad = sorted(m for m in sys.modules if m == "deccm.train" or m.startswith("deccm.train."))
        print("IMPORTED", bad)
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "IMPORTED []" in r.stdout


@pytest.mark.slow
def test_recommend_cli_on_features_only_run_says_why(student_run: Path, tmp_path: Path) -> None:
    clip = tmp_path / "clip.mp4"
    clip.write_bytes(b"\x00" * 64)
    r = subprocess.run([sys.executable, "-m", "deccm.cli", "recommend", str(student_run), str(clip)], capture_output=True, text=True)
    assert r.returncode == 2 and "precomputed feature vectors" in r.stderr and "Traceback" not in r.stderr
