"""The native format: round trip, atomic writes, no pickles."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from deccm import safeio
from deccm.data import DatasetError, load_dataset, write_dataset
from deccm.data.format import MANIFEST


def test_round_trip_preserves_every_array(tiny_dataset: Path, tmp_path: Path) -> None:
    ds = load_dataset(tiny_dataset)
    out = write_dataset(tmp_path / "copy", {k: v for k, v in ds.manifest.items() if k not in ("files", "counts")},
                        ugc=ds.ugc, pgc=ds.pgc, truth=ds.truth, tracks=ds.tracks)
    again = load_dataset(out)
    for rel, entry in ds.manifest["files"].items():
        assert again.manifest["files"][rel]["sha256"] == entry["sha256"], rel
    np.testing.assert_array_equal(again.ugc.test.candidates(), ds.ugc.test.candidates())
    assert again.tracks == ds.tracks
    assert again.manifest["counts"] == ds.manifest["counts"]


def test_manifest_says_synthetic(tiny_dataset: Path) -> None:
    m = json.loads((tiny_dataset / MANIFEST).read_text())
    assert m["provenance"] == "synthetic" and m["synthetic"] is True
    assert "SYNTHETIC" in m["description"]
    assert m["generator"]["preset"] == "tiny"
    assert m["dims"] == {"video": 2048, "music": 256, "genres": 6,
                         "music_blocks": [{"name": "embedding", "dim": 128}, {"name": "descriptor", "dim": 128}]}


def test_existing_dataset_survives_a_failed_overwrite(tiny_dataset: Path, tmp_path: Path) -> None:
    dst = tmp_path / "ds"
    shutil.copytree(tiny_dataset, dst)
    before = (dst / MANIFEST).read_bytes()
    ds = load_dataset(dst)
    bad_manifest = {"name": "x", "provenance": "not-a-provenance", "genres": ds.genres}
    with pytest.raises(ValueError, match="provenance"):
        write_dataset(dst, bad_manifest, ugc=ds.ugc, overwrite=True)
    assert (dst / MANIFEST).read_bytes() == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "temp dir left behind"
    load_dataset(dst)


def test_refuses_to_overwrite_without_flag(tiny_dataset: Path) -> None:
    ds = load_dataset(tiny_dataset)
    with pytest.raises(FileExistsError, match="--overwrite"):
        write_dataset(tiny_dataset, {"name": "x", "provenance": "synthetic", "genres": ds.genres}, ugc=ds.ugc)


def test_pickled_array_is_never_loaded(tiny_dataset: Path, tmp_path: Path) -> None:
    dst = tmp_path / "ds"
    shutil.copytree(tiny_dataset, dst)
    np.save(dst / "ugc/prior_mean.npy", np.array([object()], dtype=object), allow_pickle=True)
    with pytest.raises(DatasetError, match="without pickle"):
        load_dataset(dst)
    with pytest.raises(TypeError, match="object array"):
        safeio.save_npy(tmp_path / "x.npy", np.array([{}], dtype=object))


def test_missing_dir_and_manifest_errors_name_the_fix(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="deccm data synth"):
        load_dataset(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="dataset.json"):
        load_dataset(tmp_path / "empty")
