"""Hand-corrupted datasets fail with messages that name the file, the row and the fix."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from deccm.data import DatasetError, load_dataset
from deccm.data.format import MANIFEST


def _corrupt(src: Path, dst: Path, rel: str, edit: Callable[[np.ndarray], np.ndarray]) -> Path:
    shutil.copytree(src, dst)
    arr = np.load(dst / rel, allow_pickle=False)
    np.save(dst / rel, edit(arr.copy()), allow_pickle=False)
    return dst


def _set(idx, value):
    def edit(a: np.ndarray) -> np.ndarray:
        a[idx] = value
        return a
    return edit


def _run_validate(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "deccm.data", "validate", str(path)], capture_output=True, text=True)


def test_clean_dataset_validates_via_cli(tiny_dataset: Path) -> None:
    r = _run_validate(tiny_dataset)
    assert r.returncode == 0, r.stderr
    assert "OK" in r.stdout and "ugc/train" in r.stdout and "SYNTHETIC" in r.stdout


CASES = [
    ("nan feature", "ugc/video_features.npy", _set((7, 3), np.nan), "row 7: NaN or inf", "re-extract"),
    ("video id out of range", "ugc/train/video.npy", _set(11, 10**6), "row 11: video id out of range", "add the missing features"),
    ("negative id out of range", "ugc/test/negatives.npy", _set((4, 0), -1), "row 4: music id out of range", "index the music"),
    ("unnormalised weights", "ugc/val/weight.npy", lambda a: a * 3.0, "weights sum to 3", "divide the weights by their sum"),
    ("negative weight", "ugc/test/weight.npy", _set(2, -0.5), "row 2: weights must be finite and non-negative", "recompute"),
    ("positive among negatives", "ugc/val/negatives.npy", None, "row 5: the row's positive track is among its own negatives", "resample"),
    ("duplicate negatives", "ugc/test_oracle/negatives.npy", None, "row 9: duplicate negatives", "without replacement"),
    ("prior not a distribution", "ugc/train/prior.npy", _set((13, 0), 5.0), "row 13: genre prior is not a distribution", "normalise"),
    ("fewer than 100 negatives", "ugc/val/negatives.npy", lambda a: a[:, :60], "60 negatives per row", "sample 100"),
    ("wrong feature dim", "ugc/music_features.npy", lambda a: a[:, :200], "200", "dim"),
    ("empty split", "ugc/test/video.npy", lambda a: a[:0], "ugc/test: split is empty", "at least one row"),
]


@pytest.mark.parametrize("name,rel,edit,message,fix", CASES, ids=[c[0] for c in CASES])
def test_corruption_is_reported(tiny_dataset: Path, tmp_path: Path, name: str, rel: str, edit, message: str, fix: str) -> None:
    if name == "positive among negatives":
        pos = np.load(tiny_dataset / "ugc/val/music.npy")
        edit = _set((5, 17), pos[5])
    if name == "duplicate negatives":
        edit = lambda a: (a.__setitem__((9, 1), a[9, 0]), a)[1]  # noqa: E731
    bad = _corrupt(tiny_dataset, tmp_path / "bad", rel, edit)
    # the manifest's file table is refreshed so only the planted defect remains (a hand edit
    # that also forgot the table is caught separately below)
    m = json.loads((bad / MANIFEST).read_text())
    arr = np.load(bad / rel)
    m["files"][rel].update(shape=list(arr.shape), dtype=str(arr.dtype))
    (bad / MANIFEST).write_text(json.dumps(m))
    r = subprocess.run([sys.executable, "-m", "deccm.data", "validate", "--no-hashes", str(bad)], capture_output=True, text=True)
    assert r.returncode == 1, r.stdout + r.stderr
    where = bad / (Path(rel).parent if name == "empty split" else rel)
    assert str(where) in r.stderr
    assert message in r.stderr and "Fix:" in r.stderr and fix in r.stderr
    with pytest.raises(DatasetError, match="Fix:"):
        load_dataset(bad)


def test_hand_replaced_file_fails_hash_and_shape_checks(tiny_dataset: Path, tmp_path: Path) -> None:
    bad = _corrupt(tiny_dataset, tmp_path / "bad", "ugc/train/music.npy", lambda a: a[:-1])
    r = _run_validate(bad)
    assert r.returncode == 1
    assert "does not match the manifest" in r.stderr and "sha256" in r.stderr


def test_unknown_format_version_is_refused(tiny_dataset: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    shutil.copytree(tiny_dataset, bad)
    m = json.loads((bad / MANIFEST).read_text())
    m["format_version"] = 99
    (bad / MANIFEST).write_text(json.dumps(m))
    r = _run_validate(bad)
    assert r.returncode == 2
    assert "format_version 99 is unknown" in r.stderr and "upgrade deccm" in r.stderr


def test_media_paths_must_exist_inside_the_dataset(tiny_dataset: Path, tmp_path: Path) -> None:
    import csv

    bad = tmp_path / "bad"
    shutil.copytree(tiny_dataset, bad)
    (bad / "media").mkdir()
    with open(bad / "tracks.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    for i, row in enumerate(rows):
        row["path"] = f"media/{i}.mp3"
        (bad / row["path"]).write_bytes(b"x")
    rows[3]["path"] = "media/missing.mp3"
    rows[4]["path"] = "../outside.mp3"
    (tmp_path / "outside.mp3").write_bytes(b"x")
    with open(bad / "tracks.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    r = _run_validate(bad)
    assert r.returncode == 1
    assert f"{bad / 'tracks.csv'}: rows 3, 4: path is missing, or points outside the dataset directory" in r.stderr
