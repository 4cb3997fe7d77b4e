"""`deccm data assemble`: a user's feature stores, logs and track metadata → a validated dataset.

Stores are written directly (random features, a real spec) and the audio files are tiny
real WAVs, so every test runs in milliseconds; the CLI tests pay one interpreter start.
"""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import wave
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from deccm.data import DatasetError, load_dataset
from deccm.data.assemble import AssembleConfig, assemble
from deccm.data.protocol import inverse_popularity_weights
from deccm.features.spec import ExtractorSpec
from deccm.features.store import FeatureStore, store_dir

GENRES = ("jazz", "ambient", "rock")  # written in this order; the dataset sorts them
N_TRACKS, N_VIDEOS, N_UPLOADERS, N_SEGMENTS = 120, 60, 8, 30
N_LOG_ROWS = N_VIDEOS + len(range(0, N_VIDEOS, 3))  # every third video is logged twice
V_DIM, M_DIM = 12, 16


def _spec(kind: str, **pre: object) -> dict:
    if kind == "music":
        return ExtractorSpec(kind="music", name="test-music", version=1, dims=M_DIM, weights="untrained",
                             preprocessing={"sample_rate": 16000, **pre},
                             blocks=[{"name": "embedding", "start": 0, "stop": 8},
                                     {"name": "descriptor", "start": 8, "stop": M_DIM}]).to_dict()
    return ExtractorSpec(kind="video", name="test-video", version=1, dims=V_DIM, weights="untrained",
                         preprocessing={"fps": 1.0, **pre}).to_dict()


def _save_store(dest: Path, kind: str, ids: list[str], rng: np.random.Generator, **pre: object) -> FeatureStore:
    music = kind == "music"
    d = M_DIM if music else V_DIM
    store = FeatureStore(
        kind=kind, ids=ids, paths=[f"/media/{kind}/{i}.{'wav' if music else 'mp4'}" for i in ids],
        sha256=[f"{k:064x}" for k in range(len(ids))], features=rng.standard_normal((len(ids), d)).astype(np.float32),
        spec=_spec("music" if music else "video", **pre),
        norm_mean=rng.standard_normal(d).astype(np.float32) if music else None,
        norm_std=np.ones(d, dtype=np.float32) if music else None,
        normalisation={"fitted_on": "test catalog", "count": len(ids)} if music else None)
    store.save(dest)
    return store


def _write_csv(path: Path, header: list[str], rows: list[list[object]]) -> Path:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def _read_csv(path: Path) -> tuple[list[str], list[list[str]]]:
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    return rows[0], rows[1:]


def _wav(path: Path, k: int) -> None:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(8000)
        w.writeframes(np.full(80, k, dtype=np.int16).tobytes())


class Inputs:
    """Paths of one user's inputs; ``cfg()`` gives the AssembleConfig (with overrides)."""

    def __init__(self, root: Path, n_tracks: int = N_TRACKS, uploaders: bool = True, genres: bool = True):
        rng = np.random.default_rng(0)
        self.root = root
        self.out = root / "feat"  # the features CLI's --out dir: videos and music stores side by side
        self.video_ids = [f"clip-{k:03d}" for k in range(N_VIDEOS + 5)]  # 5 videos never logged
        self.track_ids = [f"T{k:04d}" for k in range(n_tracks)]
        self.vstore = _save_store(store_dir(self.out, "videos"), "videos", self.video_ids, rng)
        self.mstore = _save_store(store_dir(self.out, "music"), "music", self.track_ids, rng)
        self.pgc = root / "pgc-store"  # a store dir given directly
        self.segment_ids = [f"seg-{k:03d}" for k in range(N_SEGMENTS)]
        self.pstore = _save_store(self.pgc, "videos", self.segment_ids, rng)
        audio = root / "audio"
        audio.mkdir()
        self.genre = {t: GENRES[k % 3] for k, t in enumerate(self.track_ids)}
        meta_rows = []
        for k, t in enumerate(self.track_ids):
            _wav(audio / f"{t}.wav", k)
            meta_rows.append([t, f"title {k}", "artist", self.genre[t] if genres else "", "CC-BY", f"audio/{t}.wav"])
        meta_rows.reverse()  # the metadata's order need not be the store's
        self.meta = _write_csv(root / "tracks.csv", ["id", "title", "artist", "genre", "licence", "path"], meta_rows)
        # logs: every video once, a third of them twice with another track; one uploader per video
        self.owner = {v: f"user{k % N_UPLOADERS}" for k, v in enumerate(self.video_ids[:N_VIDEOS])}
        log_rows = []
        for k, v in enumerate(self.video_ids[:N_VIDEOS]):
            for j in range(1 + (k % 3 == 0)):
                log_rows.append([v, self.track_ids[(7 * k + 31 * j) % n_tracks]] + ([self.owner[v]] if uploaders else []))
        self.log_rows = log_rows
        self.logs = _write_csv(root / "logs.csv", ["video", "track"] + (["uploader"] if uploaders else []), log_rows)
        self.pairs = _write_csv(root / "pairs.csv", ["segment", "track"],
                                [[s, self.track_ids[(3 * k) % n_tracks]] for k, s in enumerate(self.segment_ids)])

    def cfg(self, **over: object) -> AssembleConfig:
        d = {"videos": self.out, "tracks": self.out, "logs": self.logs, "tracks_meta": self.meta,
             "pgc": self.pgc, "pgc_pairs": self.pairs}
        d.update(over)
        return AssembleConfig.from_dict({k: v for k, v in d.items() if v is not None})


@pytest.fixture
def inputs(tmp_path: Path) -> Inputs:
    return Inputs(tmp_path / "in")


def test_assembles_a_valid_dataset_that_keeps_the_users_data(inputs: Inputs, tmp_path: Path) -> None:
    ds = load_dataset(assemble(inputs.cfg(seed=3), tmp_path / "ds"))  # load_dataset runs every check
    m, u = ds.manifest, ds.ugc
    assert m["provenance"] == "extracted" and m["confounder"] == {"available": True}
    assert ds.genres == sorted(GENRES)
    assert m["features"] == {"video": inputs.vstore.spec, "music": inputs.mstore.spec,
                             "music_normalisation": inputs.mstore.normalisation}
    assert m["dims"]["music_blocks"] == [{"name": "embedding", "dim": 8}, {"name": "descriptor", "dim": 8}]
    assert u.test_oracle is None and ds.truth is None
    assert not u.train.video_genre.any()  # no label leak: logs carry no video genre

    # ids: tracks in store order, the user's id kept in tracks.csv; only logged videos, in store order
    np.testing.assert_array_equal(u.music_features, inputs.mstore.features)
    np.testing.assert_array_equal(u.music_norm_mean, inputs.mstore.norm_mean)
    assert [t["source"] for t in ds.tracks] == [f"id:{t}" for t in inputs.track_ids]
    assert [ds.genres[g] for g in u.music_genre] == [inputs.genre[t] for t in inputs.track_ids]
    ugc_videos = [v for v in ds.videos if v["kind"] == "ugc"]
    assert [v["ext_id"] for v in ugc_videos] == inputs.video_ids[:N_VIDEOS]
    assert all(v["uploader"] == inputs.owner[v["ext_id"]] for v in ugc_videos)
    assert all(v["source"] == inputs.vstore.paths[inputs.video_ids.index(v["ext_id"])] for v in ugc_videos)
    np.testing.assert_array_equal(u.video_features, inputs.vstore.features[:N_VIDEOS])
    # audio is in the dataset, byte-identical (hard-linked on one filesystem)
    for k in (0, 57, N_TRACKS - 1):
        copy = ds.root / ds.tracks[k]["path"]
        src = inputs.root / "audio" / f"{inputs.track_ids[k]}.wav"
        assert copy.read_bytes() == src.read_bytes() and copy.is_relative_to(ds.root / "media" / "tracks")
        assert os.path.samefile(copy, src)

    # every logged row is in exactly one split, splits grouped by video
    splits = {"train": u.train, "val": u.val, "test": u.test, "gate": u.gate}
    pairs = sorted((ugc_videos[v]["ext_id"], inputs.track_ids[t])
                   for rows in splits.values() for v, t in zip(rows.video, rows.music))
    assert pairs == sorted((r[0], r[1]) for r in inputs.log_rows)
    vids = {name: set(rows.video.tolist()) for name, rows in splits.items()}
    assert sum(map(len, vids.values())) == len(set().union(*vids.values()))  # no video in two splits
    assert (len(vids["val"]), len(vids["test"]), len(vids["gate"]), len(vids["train"])) == (6, 12, 6, 36)  # 10/20/10 % of 60

    # the protocol: priors are distributions, weights sum to 1 from training counts, negatives exclude the positive
    for name, rows in splits.items():
        np.testing.assert_allclose(rows.prior.sum(axis=1), 1.0, atol=1e-5, err_msg=name)
        assert rows.uploader is not None and len(rows.uploader) == len(rows)
    for rows in (u.val, u.test, u.gate):
        assert rows.negatives.shape == (len(rows), 100)
        assert not (rows.negatives == rows.music[:, None]).any()
        assert (np.diff(np.sort(rows.negatives, axis=1), axis=1) > 0).all()
        assert abs(rows.weight.sum() - 1) < 1e-9
        np.testing.assert_allclose(rows.weight, inverse_popularity_weights(u.train.music, rows.music, N_TRACKS))
    g = u.music_genre[u.train.music]
    np.testing.assert_allclose(u.train.propensity, np.clip(u.train.prior[np.arange(len(g)), g], 0.01, 1), rtol=1e-6)
    # leave-one-out: an uploader's prior differs between rows of different genres, and a prior never sees its own row
    up, t = u.train.uploader, u.train
    for k in range(len(t)):
        others = (up == up[k]) & (np.arange(len(t)) != k)
        share = np.bincount(g, minlength=3) / len(g)
        expect = (np.bincount(g[others], minlength=3) + share) / (others.sum() + 1)
        np.testing.assert_allclose(t.prior[k], expect, atol=1e-6)

    # PGC: segments paired in the CSV, features from the PGC store, grouped train/val
    p = ds.pgc
    assert len(p.train) + len(p.val) == N_SEGMENTS and len(p.val) == 3
    np.testing.assert_array_equal(p.segment_features, inputs.pstore.features)
    assert not set(p.train.segment.tolist()) & set(p.val.segment.tolist())


def test_split_depends_on_the_seed_only(inputs: Inputs, tmp_path: Path) -> None:
    a = load_dataset(assemble(inputs.cfg(seed=1), tmp_path / "a"))
    b = load_dataset(assemble(inputs.cfg(seed=1), tmp_path / "b"))
    c = load_dataset(assemble(inputs.cfg(seed=2), tmp_path / "c"))
    assert a.manifest["files"] == b.manifest["files"]
    assert set(a.ugc.test.video.tolist()) != set(c.ugc.test.video.tolist())


def test_gate_split_takes_its_clips_from_training_and_leaves_val_and_test_alone(inputs: Inputs, tmp_path: Path) -> None:
    with_gate = load_dataset(assemble(inputs.cfg(seed=1), tmp_path / "g")).ugc
    without = load_dataset(assemble(inputs.cfg(seed=1, gate_fraction=0.0), tmp_path / "n")).ugc
    assert without.gate is None and len(with_gate.gate) > 0
    for split in ("val", "test"):
        a, b = getattr(with_gate, split), getattr(without, split)
        assert np.array_equal(a.video, b.video) and np.array_equal(a.negatives, b.negatives), split
    assert set(with_gate.gate.video.tolist()) <= set(without.train.video.tolist())


def test_without_uploaders_priors_are_the_global_share_and_the_manifest_says_so(tmp_path: Path) -> None:
    inp = Inputs(tmp_path / "in", uploaders=False)
    ds = load_dataset(assemble(inp.cfg(), tmp_path / "ds"))
    conf = ds.manifest["confounder"]
    assert conf["available"] is False and "uploader" in conf["reason"]
    u = ds.ugc
    assert u.train.uploader is None and u.val.uploader is None
    share = np.bincount(u.music_genre[u.train.music], minlength=3) / len(u.train)
    for rows in (u.train, u.val, u.test):
        np.testing.assert_allclose(rows.prior, np.broadcast_to(share, rows.prior.shape), atol=1e-6)
    assert "global genre share" in ds.manifest["prior"]


@pytest.mark.parametrize("absent", [False, True], ids=["empty-genres", "no-genre-column"])
def test_without_genres_one_unknown_group(tmp_path: Path, absent: bool) -> None:
    inp = Inputs(tmp_path / "in", genres=False)
    if absent:
        header, rows = _read_csv(inp.meta)
        keep = [i for i, h in enumerate(header) if h != "genre"]
        _write_csv(inp.meta, [header[i] for i in keep], [[r[i] for i in keep] for r in rows])
    ds = load_dataset(assemble(inp.cfg(), tmp_path / "ds"))
    assert ds.genres == ["unknown"] and not ds.ugc.music_genre.any()
    conf = ds.manifest["confounder"]
    assert conf["available"] is False and "no genre" in conf["reason"] and "no uploader column" not in conf["reason"]
    np.testing.assert_allclose(ds.ugc.train.prior, 1.0)


def test_second_call_with_the_same_inputs_does_no_work(inputs: Inputs, tmp_path: Path) -> None:
    dest = assemble(inputs.cfg(), tmp_path / "ds")
    before = (dest / "dataset.json").stat().st_mtime_ns
    manifest = (dest / "dataset.json").read_text()
    # the store given as its own directory instead of the --out dir is the same input
    same = inputs.cfg(videos=store_dir(inputs.out, "videos"), tracks=store_dir(inputs.out, "music"))
    assert assemble(same, dest) == dest
    assert (dest / "dataset.json").stat().st_mtime_ns == before and (dest / "dataset.json").read_text() == manifest


def test_a_different_dataset_is_refused_unless_overwrite(inputs: Inputs, tmp_path: Path) -> None:
    dest = assemble(inputs.cfg(), tmp_path / "ds")
    first = json.loads((dest / "dataset.json").read_text())["source"]["fingerprint"]
    with pytest.raises(FileExistsError, match="--overwrite"):
        assemble(inputs.cfg(seed=5), dest)
    inputs.logs.write_text(inputs.logs.read_text().replace("clip-059", "clip-061"))  # edited logs: other inputs
    with pytest.raises(FileExistsError, match="other inputs"):
        assemble(inputs.cfg(), dest)
    assert json.loads((dest / "dataset.json").read_text())["source"]["fingerprint"] == first  # untouched
    ds = load_dataset(assemble(inputs.cfg(), dest, overwrite=True))
    assert ds.manifest["source"]["fingerprint"] != first
    assert "clip-061" in {v["ext_id"] for v in ds.videos}
    assert not [p for p in dest.parent.iterdir() if p.name.startswith(".")]  # no temp dirs left behind
    (tmp_path / "junk").mkdir()
    with pytest.raises(FileExistsError, match="not a dataset"):
        assemble(inputs.cfg(), tmp_path / "junk")


def test_config_from_dict_rejects_unknown_and_missing_keys(inputs: Inputs) -> None:
    cfg = inputs.cfg(seed=4, name="mine")
    assert AssembleConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown option.*'val_frac'"):
        AssembleConfig.from_dict({**cfg.to_dict(), "val_frac": 0.2})
    with pytest.raises(ValueError, match="missing required option.*'logs'"):
        AssembleConfig.from_dict({k: v for k, v in cfg.to_dict().items() if k != "logs"})
    with pytest.raises(ValueError, match="both pgc"):
        AssembleConfig.from_dict({**cfg.to_dict(), "pgc_pairs": None})
    with pytest.raises(ValueError, match="leaves no training rows"):
        AssembleConfig.from_dict({**cfg.to_dict(), "val_fraction": 0.5, "test_fraction": 0.5})
    with pytest.raises(ValueError, match="gate_fraction must be a number in \\[0, 1\\)"):
        AssembleConfig.from_dict({**cfg.to_dict(), "gate_fraction": -0.1})
    with pytest.raises(ValueError, match="gate_fraction = 1 leaves no training rows"):
        AssembleConfig.from_dict({**cfg.to_dict(), "val_fraction": 0.4, "test_fraction": 0.4, "gate_fraction": 0.2})


# --------------------------------------------------------------------------- errors


def _edit_csv(path: Path, edit: Callable[[list[str], list[list[str]]], tuple[list[str], list[list[str]]]]) -> None:
    header, rows = _read_csv(path)
    _write_csv(path, *edit(header, rows))


def _set(row: int, col: int, value: str):
    def edit(header, rows):
        rows[row][col] = value
        return header, rows
    return edit


def _dup(row: int):
    def edit(header, rows):
        return header, rows + [list(rows[row])]
    return edit


def _fewer_tracks(inp: Inputs) -> None:
    ids = inp.track_ids[:100]
    _save_store(store_dir(inp.out, "music"), "music", ids, np.random.default_rng(1))


def _pgc_other_spec(inp: Inputs) -> None:
    _save_store(inp.pgc, "videos", inp.segment_ids, np.random.default_rng(1), fps=2.0)


def _drop_meta_row(inp: Inputs) -> None:
    _edit_csv(inp.meta, lambda h, rows: (h, [r for r in rows if r[0] != "T0005"]))


def _two_videos(inp: Inputs) -> None:
    _edit_csv(inp.logs, lambda h, rows: (h, rows[:3]))  # clip-000 (twice) and clip-001


# (name, edit of the inputs, file that must be named, line that must be named or None, words in the message)
ERRORS = [
    ("unknown video in logs", lambda i: _edit_csv(i.logs, _set(4, 0, "nope")), "logs", "line 6", "video id(s) 'nope'"),
    ("unknown track in logs", lambda i: _edit_csv(i.logs, _set(0, 1, "T9999")), "logs", "line 2", "'T9999' are not in the music store"),
    ("duplicate log row", lambda i: _edit_csv(i.logs, _dup(2)), "logs", f"line {N_LOG_ROWS + 2}", "repeat"),
    ("empty track cell", lambda i: _edit_csv(i.logs, _set(9, 1, "")), "logs", "line 11", "empty track"),
    ("two uploaders for a video", lambda i: _edit_csv(i.logs, _set(1, 2, "someone")), "logs", "line 3", "one uploader"),
    ("wrong log columns", lambda i: _edit_csv(i.logs, lambda h, r: (["vid", "track", "uploader"], r)), "logs", "line 1",
     "missing video"),
    ("typo in optional column", lambda i: _edit_csv(i.logs, lambda h, r: (["video", "track", "uploder"], r)), "logs",
     "line 1", "unknown uploder"),
    ("unknown segment in pairs", lambda i: _edit_csv(i.pairs, _set(3, 0, "seg-999")), "pairs", "line 5", "'seg-999'"),
    ("unknown track in pairs", lambda i: _edit_csv(i.pairs, _set(7, 1, "X")), "pairs", "line 9", "'X' are not in the music store"),
    ("duplicate pair", lambda i: _edit_csv(i.pairs, _dup(0)), "pairs", f"line {N_SEGMENTS + 2}", "repeat"),
    ("fewer than 101 tracks", _fewer_tracks, "music", None, "holds 100 tracks"),
    ("one track without genre", lambda i: _edit_csv(i.meta, _set(10, 3, "")), "meta", "line 12", "no genre, while 119 other"),
    ("store track missing from metadata", _drop_meta_row, "meta", None, "no row for track(s) 'T0005'"),
    ("metadata track not in store", lambda i: _edit_csv(i.meta, _set(0, 0, "T5000")), "meta", "line 2", "'T5000' are not in the music store"),
    ("missing audio file", lambda i: (i.root / "audio" / "T0003.wav").unlink(), "meta", f"line {N_TRACKS - 3 + 1}", "T0003.wav"),
    ("wrong metadata columns", lambda i: _edit_csv(i.meta, lambda h, r: (["track"] + h[1:], r)), "meta", "line 1", "missing id"),
    ("PGC spec differs", _pgc_other_spec, "pgc", None, "preprocessing.fps"),
    ("too few videos for the splits", _two_videos, "logs", None, "2 distinct logged video(s)"),
]


@pytest.mark.parametrize("name,edit,file,line,words", ERRORS, ids=[e[0] for e in ERRORS])
def test_input_problems_name_file_line_and_fix(inputs: Inputs, tmp_path: Path, name: str, edit, file: str,
                                               line: str | None, words: str) -> None:
    edit(inputs)
    paths = {"logs": inputs.logs, "pairs": inputs.pairs, "meta": inputs.meta, "pgc": inputs.pgc / "spec.json",
             "music": store_dir(inputs.out, "music")}
    with pytest.raises(DatasetError) as info:
        assemble(inputs.cfg(), tmp_path / "ds")
    msg = str(info.value)
    assert msg.startswith(f"{paths[file]}:"), msg
    if line is not None:
        assert f": {line}:" in msg or f": {line} " in msg, msg
    assert words in msg and "Fix: " in msg, msg
    assert not (tmp_path / "ds").exists()


# --------------------------------------------------------------------------- CLI


def _cli(*args: object) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "deccm.data", "assemble", *map(str, args)], capture_output=True, text=True)


@pytest.mark.slow
def test_cli_assembles_summarises_and_reruns_safely(inputs: Inputs, tmp_path: Path, _state_dir: Path) -> None:
    common = ["--videos", inputs.out, "--tracks", inputs.out, "--logs", inputs.logs, "--tracks-meta", inputs.meta,
              "--pgc", inputs.pgc, "--pgc-pairs", inputs.pairs, "--seed", 2, "--name", "mine"]
    r = _cli(*common)
    assert r.returncode == 0, r.stderr
    dest = _state_dir / "data" / "mine"
    ds = load_dataset(dest)
    c = ds.manifest["counts"]
    assert f"{c['train']} train / {c['val']} val / {c['test']} test / {c['gate']} gate rows" in r.stdout
    assert f"{N_TRACKS} tracks" in r.stdout and "ambient, jazz, rock" in r.stdout
    assert "confounder path: on" in r.stdout and f"{N_SEGMENTS} segments" in r.stdout
    before = (dest / "dataset.json").stat().st_mtime_ns
    r = _cli(*common)
    assert r.returncode == 0, r.stderr
    assert (dest / "dataset.json").stat().st_mtime_ns == before
    r = _cli(*common[:-4], "--name", "mine", "--test-fraction", 0.3)
    assert r.returncode == 2 and "--overwrite" in r.stderr


@pytest.mark.slow
def test_cli_reports_bad_input_and_confounder_off(tmp_path: Path) -> None:
    inp = Inputs(tmp_path / "in", uploaders=False)
    r = _cli(tmp_path / "ds", "--videos", inp.out, "--tracks", store_dir(inp.out, "music"), "--logs", inp.logs,
             "--tracks-meta", inp.meta)
    assert r.returncode == 0, r.stderr
    assert "confounder path: OFF" in r.stdout and "no uploader column" in r.stdout
    _edit_csv(inp.logs, _set(0, 0, "ghost"))
    r = _cli(tmp_path / "ds2", "--videos", inp.out, "--tracks", inp.out, "--logs", inp.logs, "--tracks-meta", inp.meta)
    assert r.returncode == 2
    assert f"error: {inp.logs}: line 2: video id(s) 'ghost'" in r.stderr and "Fix:" in r.stderr
