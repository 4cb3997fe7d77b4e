"""Import of the authors' pickled layout (docs/method.md §2)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from deccm.data import DatasetError, load_dataset
from deccm.data.legacy import import_legacy


def _obj(rows: list) -> np.ndarray:
    arr = np.empty(len(rows), dtype=object)
    for i, r in enumerate(rows):
        arr[i] = r
    return arr


def write_legacy(ds_path: Path, root: Path, genre_strings: list[str] | None = None, weight_scale: float = 1.0) -> Path:
    """Write a native dataset back out exactly as the authors stored theirs (object arrays)."""
    ds = load_dataset(ds_path)
    u, p = ds.ugc, ds.pgc
    m = root / "data_matching"
    (m / "100neg").mkdir(parents=True)
    np.save(m / "visual_features_resnet_V.npy", np.asarray(u.video_features))
    np.save(m / "music_features.npy", u.music_features[:, :128])
    np.save(m / "new_music_smile_features_norm.npy", u.music_features[:, 128:])
    t = u.train
    genres = genre_strings or [str(np.flatnonzero(g).tolist()) for g in t.video_genre]
    rows = [[int(t.video[i]), int(t.music[i]), genres[i], t.prior[i].astype(np.float64), float(t.propensity[i])] for i in range(len(t))]
    np.save(m / "train.npy", _obj(rows), allow_pickle=True)
    for name, split in (("val", u.val), ("test", u.test)):
        rows = [[int(split.video[i]), int(split.music[i]), split.negatives[i]] for i in range(len(split))]
        np.save(m / "100neg" / f"{name}.npy", _obj(rows), allow_pickle=True)
        np.save(m / f"video_popularity_{name}.npy", split.weight * weight_scale)
    np.save(m / "user_prior_mean.npy", u.prior_mean)
    g = root / "data_pgc"
    g.mkdir()
    for name, split in (("train", p.train), ("val", p.val)):
        np.save(g / f"{name}.npy", _obj([[int(a), int(b)] for a, b in zip(split.segment, split.music)]), allow_pickle=True)
    np.save(g / "mv_video_resnet_features.npy", np.asarray(p.segment_features))
    np.save(g / "vggish_features.npy", p.music_features[:, :128])
    np.save(g / "opensmile_features_norm.npy", p.music_features[:, 128:])
    return root


def test_import_round_trips_numbers_exactly(tiny_dataset: Path, tmp_path: Path) -> None:
    src = write_legacy(tiny_dataset, tmp_path / "legacy")
    out = import_legacy(src, tmp_path / "native", trust_pickle=True)
    a, b = load_dataset(tiny_dataset), load_dataset(out)
    assert b.manifest["provenance"] == "imported-legacy" and b.manifest["synthetic"] is False
    np.testing.assert_array_equal(a.ugc.video_features, b.ugc.video_features)
    np.testing.assert_array_equal(a.ugc.music_features, b.ugc.music_features)
    for f in ("video", "music", "video_genre", "prior", "propensity"):
        np.testing.assert_array_equal(getattr(a.ugc.train, f), getattr(b.ugc.train, f), err_msg=f)
    for split in ("val", "test"):
        for f in ("video", "music", "negatives", "weight"):
            np.testing.assert_array_equal(getattr(getattr(a.ugc, split), f), getattr(getattr(b.ugc, split), f), err_msg=f"{split}.{f}")
    np.testing.assert_array_equal(a.ugc.prior_mean, b.ugc.prior_mean)
    np.testing.assert_array_equal(a.pgc.train.segment, b.pgc.train.segment)
    np.testing.assert_array_equal(a.pgc.val.music, b.pgc.val.music)
    np.testing.assert_array_equal(a.pgc.segment_features, b.pgc.segment_features)
    assert b.manifest["source"]["weights_renormalised"] is False


def test_refused_without_trust_flag(tiny_dataset: Path, tmp_path: Path) -> None:
    src = write_legacy(tiny_dataset, tmp_path / "legacy")
    r = subprocess.run([sys.executable, "-m", "deccm.data", "import-legacy", str(src), str(tmp_path / "out")],
                       capture_output=True, text=True)
    assert r.returncode == 2
    assert "--trust-pickle" in r.stderr and "execute arbitrary code" in r.stderr
    assert not (tmp_path / "out").exists()
    r = subprocess.run([sys.executable, "-m", "deccm.data", "import-legacy", "--trust-pickle", str(src), str(tmp_path / "out")],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    load_dataset(tmp_path / "out")


def test_genre_strings_are_parsed_never_evaluated(tiny_dataset: Path, tmp_path: Path) -> None:
    n = len(load_dataset(tiny_dataset).ugc.train)
    marker = tmp_path / "pwned"
    evil = [f"__import__('pathlib').Path({str(marker)!r}).touch()"] + ["[0, 3]"] * (n - 1)
    src = write_legacy(tiny_dataset, tmp_path / "legacy", genre_strings=evil)
    with pytest.raises(DatasetError, match="row 0: video_genre"):
        import_legacy(src, tmp_path / "out", trust_pickle=True)
    assert not marker.exists()


def test_unnormalised_weights_are_normalised_and_recorded(tiny_dataset: Path, tmp_path: Path) -> None:
    src = write_legacy(tiny_dataset, tmp_path / "legacy", weight_scale=250.0)
    ds = load_dataset(import_legacy(src, tmp_path / "out", trust_pickle=True))
    assert ds.ugc.test.weight.sum() == pytest.approx(1.0)
    assert ds.manifest["source"]["weights_renormalised"] is True
    assert ds.manifest["source"]["test_weight_sum_before"] == pytest.approx(250.0)
