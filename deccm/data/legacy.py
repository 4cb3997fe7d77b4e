"""Import the authors' layout (``data_matching/``, ``data_pgc/``, ``docs/method.md`` §2).

Their row files are numpy *object* arrays, i.e. pickles, and unpickling can execute
arbitrary code. Reading them therefore needs an explicit ``trust_pickle=True``
(``--trust-pickle`` on the CLI); genre lists stored as strings are parsed with
``ast.literal_eval``, never ``eval``. The result is a native, pickle-free dataset.
"""
from __future__ import annotations

import ast
import logging
from pathlib import Path
from typing import Any

import numpy as np

from deccm.data.format import PGC, UGC, DatasetError, PairRows, RankRows, TrainRows, write_dataset

log = logging.getLogger(__name__)

G = 6
UGC_DIR, PGC_DIR = "data_matching", "data_pgc"
FILES = {
    "video": "visual_features_resnet_V.npy",
    "vggish": "music_features.npy",
    "smile": "new_music_smile_features_norm.npy",
    "train": "train.npy",
    "val": "100neg/val.npy",
    "test": "100neg/test.npy",
    "w_val": "video_popularity_val.npy",
    "w_test": "video_popularity_test.npy",
    "prior_mean": "user_prior_mean.npy",
}
PGC_FILES = {
    "train": "train.npy",
    "val": "val.npy",
    "video": "mv_video_resnet_features.npy",
    "vggish": "vggish_features.npy",
    "smile": "opensmile_features_norm.npy",
}

PICKLE_REFUSAL = (
    "{path} is a pickled numpy object array; loading it can execute arbitrary code. "
    "Pass --trust-pickle (trust_pickle=True) only if you trust where this file came from; "
    "the import then writes a pickle-free native dataset so that this is needed once."
)


def _find(root: Path, rel: str) -> Path:
    path = root / rel
    if path.is_file():
        return path
    alt = path.with_suffix(".py")  # the authors' README names some files *.py
    if alt.is_file():
        return alt
    raise DatasetError(f"{path}: missing. Fix: copy it from the authors' data release (expected layout in docs/method.md §2).")


def _load(root: Path, rel: str, trust_pickle: bool) -> np.ndarray:
    path = _find(root, rel)
    try:
        return np.load(path, allow_pickle=False)
    except ValueError:
        if not trust_pickle:
            raise DatasetError(PICKLE_REFUSAL.format(path=path)) from None
        log.warning("unpickling %s (trusted by --trust-pickle)", path)
        with open(path, "rb") as f:
            return np.load(f, allow_pickle=True)


def parse_genres(value: Any, path: Path, row: int) -> np.ndarray:
    """A genre list like ``"[0, 3]"`` (string or list) → (G,) uint8 multi-hot (fixes §9.6)."""
    try:
        items = ast.literal_eval(value) if isinstance(value, str) else value
        items = [int(items)] if np.isscalar(items) else [int(i) for i in items]
    except (ValueError, SyntaxError, TypeError) as e:
        raise DatasetError(f"{path} row {row}: video_genre {value!r} is not a list of genre indices ({e}). Fix: store e.g. '[0, 3]'.") from None
    out = np.zeros(G, dtype=np.uint8)
    for i in items:
        if not 0 <= i < G:
            raise DatasetError(f"{path} row {row}: genre index {i} outside [0, {G}). Fix: use indices 0..{G - 1}.")
        out[i] = 1
    return out


def _rank_rows(arr: np.ndarray, weights: np.ndarray, path: Path) -> tuple[RankRows, float]:
    video = np.array([int(r[0]) for r in arr], dtype=np.int64)
    music = np.array([int(r[1]) for r in arr], dtype=np.int64)
    try:
        negatives = np.stack([np.asarray(r[2], dtype=np.int64) for r in arr])
    except ValueError as e:
        raise DatasetError(f"{path}: rows have different numbers of negatives ({e}). Fix: give every row 100.") from None
    w = np.asarray(weights, dtype=np.float64).reshape(-1)
    total = float(w.sum())
    if len(w) == len(arr) and total > 0 and abs(total - 1.0) > 1e-6:
        log.warning("%s: weights sum to %.6g; normalising to 1 (the metrics of §7 assume it)", path, total)
        w = w / total
    return RankRows(video=video, music=music, negatives=negatives, weight=w), total


def import_legacy(src: str | Path, dest: str | Path, trust_pickle: bool = False, overwrite: bool = False) -> Path:
    """Convert the authors' data into a native dataset at ``dest`` (validated by loading it)."""
    src = Path(src)
    if not trust_pickle:
        # fail before any work, with the reason, even if the first file happens to be numeric
        raise DatasetError(PICKLE_REFUSAL.format(path=src / UGC_DIR / FILES["train"]))
    u = src / UGC_DIR
    f = {k: _load(u, rel, trust_pickle) for k, rel in FILES.items()}
    train_path = _find(u, FILES["train"])
    tr = f["train"]
    train = TrainRows(
        video=np.array([int(r[0]) for r in tr], dtype=np.int64),
        music=np.array([int(r[1]) for r in tr], dtype=np.int64),
        video_genre=np.stack([parse_genres(r[2], train_path, i) for i, r in enumerate(tr)]) if len(tr) else np.zeros((0, G), np.uint8),
        prior=np.stack([np.asarray(r[3], dtype=np.float32).reshape(-1) for r in tr]) if len(tr) else np.zeros((0, G), np.float32),
        propensity=np.array([float(r[4]) for r in tr], dtype=np.float32),
    )
    val, val_sum = _rank_rows(f["val"], f["w_val"], _find(u, FILES["val"]))
    test, test_sum = _rank_rows(f["test"], f["w_test"], _find(u, FILES["test"]))
    music = np.concatenate([np.asarray(f["vggish"], np.float32), np.asarray(f["smile"], np.float32)], axis=1)
    ugc = UGC(video_features=np.asarray(f["video"], np.float32), music_features=music,
              prior_mean=np.asarray(f["prior_mean"], np.float32).reshape(-1), train=train, val=val, test=test)
    pgc = None
    if (src / PGC_DIR).is_dir():
        p = {k: _load(src / PGC_DIR, rel, trust_pickle) for k, rel in PGC_FILES.items()}
        pairs = {k: np.asarray([[int(x) for x in r[:2]] for r in p[k]], dtype=np.int64).reshape(-1, 2) for k in ("train", "val")}
        pgc = PGC(
            segment_features=np.asarray(p["video"], np.float32),
            music_features=np.concatenate([np.asarray(p["vggish"], np.float32), np.asarray(p["smile"], np.float32)], axis=1),
            train=PairRows(segment=pairs["train"][:, 0], music=pairs["train"][:, 1]),
            val=PairRows(segment=pairs["val"][:, 0], music=pairs["val"][:, 1]),
        )
    manifest = {
        "name": f"legacy-{src.name}",
        "provenance": "imported-legacy",
        "description": "Imported from the DecCM authors' data layout (data_matching/, data_pgc/).",
        "genres": [f"genre-{i}" for i in range(G)],
        "dims": {"music_blocks": [{"name": "vggish", "dim": int(np.asarray(f["vggish"]).shape[1])},
                                  {"name": "opensmile", "dim": int(np.asarray(f["smile"]).shape[1])}]},
        "source": {"path_name": src.name, "val_weight_sum_before": val_sum, "test_weight_sum_before": test_sum,
                   "weights_renormalised": bool(abs(val_sum - 1) > 1e-6 or abs(test_sum - 1) > 1e-6)},
    }
    write_dataset(dest, manifest, ugc=ugc, pgc=pgc, overwrite=overwrite)
    from deccm.data.validate import load_dataset

    try:
        load_dataset(dest)
    except DatasetError as e:
        log.error("imported dataset at %s has problems; it is kept for inspection", dest)
        raise e
    return Path(dest)
