"""The demo corpus: real media, a planted relation that the media show, the confounder story, the native format.

One ``--size tiny`` build through the ``deccm data demo-corpus`` CLI serves every test.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from deccm.data import load_dataset
from deccm.data.corpus import build as corpus_build
from deccm.data.corpus import catalog, relation, video
from deccm.data.format import Dataset
from deccm.runs import RunError


@pytest.fixture(scope="module")
def corpus(tiny_corpus: Path) -> Path:
    return tiny_corpus  # built once per session by `deccm data demo-corpus --size tiny` (conftest.py)


@pytest.fixture(scope="module")
def ds(corpus: Path) -> Dataset:
    return load_dataset(corpus)  # runs every validation check


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])


def _frames(path: Path) -> tuple[np.ndarray, av.video.stream.VideoStream]:
    with av.open(str(path)) as c:
        stream = c.streams.video[0]
        assert not c.streams.audio
        frames = np.stack([f.to_ndarray(format="rgb24") for f in c.decode(stream)]).astype(np.float64)
        return frames, stream


def _pan_px(a: np.ndarray, b: np.ndarray) -> float:
    """Translation between two grey frames by phase correlation, in pixels."""
    r = np.fft.fft2(a - a.mean()) * np.conj(np.fft.fft2(b - b.mean()))
    corr = np.fft.ifft2(r / (np.abs(r) + 1e-9)).real
    y, x = np.unravel_index(np.argmax(corr), corr.shape)
    h, w = corr.shape
    return float(np.hypot(x - w if x > w // 2 else x, y - h if y > h // 2 else y))


def _audio(path: Path) -> tuple[np.ndarray, int]:
    with av.open(str(path)) as c:
        s = c.streams.audio[0]
        x = np.concatenate([f.to_ndarray().reshape(-1) for f in c.decode(s)])
        return x.astype(np.float64), s.codec_context.sample_rate


@pytest.mark.slow
def test_dataset_is_extracted_native_format_with_honest_specs(ds: Dataset) -> None:
    m = ds.manifest
    assert m["provenance"] == "extracted" and not ds.is_synthetic
    music, video = m["features"]["music"], m["features"]["video"]
    assert music["weights"] == "untrained" and music["trained"] is False  # the VGGish block says so
    assert video["trained"] is True and video["name"] == "efficientnet-lite0"
    assert m["dims"]["music_blocks"] == [{"name": "embedding", "dim": 128}, {"name": "descriptor", "dim": 128}]
    u = ds.ugc
    assert u.video_features.shape[1] == 1288 and u.music_features.shape[1] == 256  # EfficientNet-Lite0 1280 + motion 8
    assert ds.feature_blocks("video") == [1280, 8] and ds.feature_blocks("music") == [128, 128]
    # music features are the catalog-normalised raw vectors, and the stats to redo that are stored
    assert u.music_norm_mean is not None and u.music_norm_std is not None
    assert np.abs(u.music_features.mean(axis=0)).max() < 1e-3
    assert ds.genres == ["folk-dance", "classical-era", "romantic", "chorale", "renaissance", "medieval"]
    assert set(np.unique(u.music_genre)) == set(range(6))
    k = m["generator"]["oracle_draws"]  # test_oracle: the test clips, each with k affinity-only picks
    assert k == corpus_build.SIZES["tiny"].oracle_draws > 1
    np.testing.assert_array_equal(u.test_oracle.video, np.repeat(u.test.video, k))
    # the gate split: clips of its own after every other UGC clip, held out from training and early stopping
    assert u.gate is not None and len(u.gate.video) == m["generator"]["n_gate"] > 0
    others = np.concatenate([u.train.video, u.val.video, u.test.video])
    assert u.gate.video.min() > others.max() and u.video_features.shape[0] == u.gate.video.max() + 1
    assert u.gate.uploader is not None and u.gate.prior.shape == (len(u.gate.video), u.val.prior.shape[1])
    kinds = [v["kind"] for v in ds.videos]
    assert kinds.count("ugc") == u.video_features.shape[0] and kinds.count("pgc") == ds.pgc.segment_features.shape[0]
    assert ds.pgc.music_features.shape == u.music_features.shape


@pytest.mark.slow
def test_tracks_are_real_licensed_audio_of_the_stated_length(ds: Dataset) -> None:
    lo, hi = ds.manifest["generator"]["track_seconds"]
    assert len(ds.tracks) == ds.n_tracks >= 101
    for t in ds.tracks:
        assert t["title"] and t["artist"] and t["source"].startswith("music21 corpus: ")
        assert t["licence"].startswith("work: public domain; ") and "encod" in t["licence"]
        path = ds.root / t["path"]
        assert path.suffix == ".mp3" and path.with_suffix(".mid").is_file()
        x, sr = _audio(path)
        assert lo - 0.05 <= len(x) / sr <= hi + 0.05, (t["path"], len(x) / sr)
        assert np.sqrt(np.mean(x ** 2)) > 1e-3, f"{t['path']} is silent"


@pytest.mark.slow
def test_clips_have_the_stated_size_and_duration(ds: Dataset) -> None:
    gen = ds.manifest["generator"]
    lo, hi = gen["clip_seconds"]
    for v in ds.videos:
        frames, stream = _frames(ds.root / v["path"])
        assert (stream.width, stream.height) == (gen["width"], gen["height"])
        seconds = len(frames) / gen["fps"]
        assert abs(seconds - float(v["seconds"])) <= 1.01 / gen["fps"] and lo - 0.2 <= seconds <= hi + 0.2


@pytest.mark.slow
def test_dataset_clips_show_their_brightness_and_warmth(ds: Dataset) -> None:
    rows = ds.videos[::2]
    got = []
    for v in rows:
        rgb, _ = _frames(ds.root / v["path"])
        r, b = rgb[..., 0].mean(), rgb[..., 2].mean()
        got.append((rgb.mean(), (r - b) / (r + b)))
    got_a = np.array(got)
    want = np.array([[float(v["brightness"]), float(v["warmth"])] for v in rows])
    assert _spearman(want[:, 0], got_a[:, 0]) > 0.85  # brightness → mean level
    assert _spearman(want[:, 1], got_a[:, 1]) > 0.85  # warmth → red vs blue


@pytest.mark.slow
def test_clip_generator_obeys_motion_cuts_and_texture(tmp_path: Path) -> None:
    """Controlled sweeps: one property varies, the others stay at 0 (slow, few cuts where they would blur the measure)."""
    def grey(props: list[float], seconds: float = 4.0) -> np.ndarray:
        rgb, _ = _frames(video.make_clip(tmp_path / "c.mp4", np.array(props), seconds, fps=12, seed=3))
        return rgb.mean(axis=3)

    speed = []
    for m in (-0.5, 0.0, 0.5, 1.0):
        g = grey([0, 0, m, -1, 0])
        speed.append(np.median([_pan_px(g[k + 1], g[k]) for k in range(len(g) - 1)]))
    expected = [0.15 * 4 ** m * 160 / 12 for m in (-0.5, 0.0, 0.5, 1.0)]  # the documented map, px per frame
    np.testing.assert_allclose(speed, expected, rtol=0.25, atol=0.6)

    cuts = []
    for c in (-1.0, 0.0, 1.0):
        diff = np.abs(np.diff(grey([0, 0, -1, c, 0], 6.0), axis=0)).mean(axis=(1, 2))
        spikes = np.flatnonzero(diff > 4 * np.median(diff) + 2)
        cuts.append(int(np.sum(np.diff(np.r_[-10, spikes]) > 2)) / 6.0)  # a cut blurs over adjacent frames
    np.testing.assert_allclose(cuts, [0.6 * 3 ** c for c in (-1.0, 0.0, 1.0)], rtol=0.3, atol=0.2)

    detail = []
    for x in (-1.0, 0.0, 1.0):
        f = grey([0, 0, -1, -1, x], 1.0)[0]
        detail.append(np.abs(np.diff(f, axis=1)).mean() / f.std())
    assert detail[0] < detail[1] < detail[2]  # more blobs per width → finer texture


@pytest.mark.slow
def test_rendered_tracks_carry_their_assigned_tempo_mode_and_loudness(ds: Dataset) -> None:
    import pretty_midi
    from music21 import converter

    tr = ds.manifest["corpus"]["tracks"]
    tempo = np.array(tr["tempo_bpm"])
    for i in range(0, ds.n_tracks, 7):
        midi = pretty_midi.PrettyMIDI(str((ds.root / ds.tracks[i]["path"]).with_suffix(".mid")))
        assert midi.get_tempo_changes()[1][0] / tr["beat_quarters"][i] == pytest.approx(tempo[i], abs=0.05)
    genre = np.array([t["genre"] for t in ds.tracks])
    # tempi were assigned from per-group ranges: dance tunes are faster than renaissance polyphony
    assert np.median(tempo[genre == "folk-dance"]) > np.median(tempo[genre == "renaissance"]) + 20
    assert tempo.max() - tempo.min() > 60
    # the stored mode is music21's key analysis; re-analysing the written MIDI agrees
    modes = np.array(tr["mode"])
    assert {"major", "minor"} <= set(modes)
    idx = list(range(0, ds.n_tracks, 9))
    again = [converter.parse(str((ds.root / ds.tracks[i]["path"]).with_suffix(".mid")), forceSource=True,
                             storePickle=False).analyze("key").mode for i in idx]
    assert np.mean([a == modes[i] for a, i in zip(again, idx)]) >= 0.8
    # loudness (half of energy) was measured on the synthesised audio: the encoded files agree
    rms = []
    for t in ds.tracks:
        x, sr = _audio(ds.root / t["path"])
        rms.append(20 * np.log10(np.sqrt(np.mean(x[:-sr] ** 2))))  # the last second fades out, as when measured
    assert np.corrcoef(np.array(rms), tr["rms_db"])[0, 1] > 0.95
    q = np.array(tr["music_vector"])
    np.testing.assert_allclose(q, relation.music_vector(tempo, modes, tr["onsets_per_s"], tr["rms_db"], tr["voices"]), atol=1e-5)


@pytest.mark.slow
def test_logged_choices_over_represent_popular_genres(ds: Dataset) -> None:
    u = ds.ugc
    popular = np.isin(u.music_genre, [0, 1])  # the two most popular groups

    def share(tracks: np.ndarray) -> float:
        return float(popular[tracks].mean())

    v, q = relation.from_manifest(ds.manifest, ds.videos)
    a = ds.manifest["generator"]["beta"] * relation.affinity(v[u.train.video], q)
    p = np.exp(a - a.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    unbiased = float(p[:, popular].sum(axis=1).mean())  # what the same clips would get from the affinity alone
    assert share(u.train.music) > unbiased + 0.15
    assert share(u.train.music) > share(u.test_oracle.music) + 0.15
    assert abs(share(u.test.music) - share(u.train.music)) < 0.2  # biased test is drawn like training


@pytest.mark.slow
def test_true_affinity_is_stored_and_drives_oracle_and_pgc_pairs(ds: Dataset) -> None:
    v, q = relation.from_manifest(ds.manifest, ds.videos)
    rows = ds.ugc.test_oracle
    a = relation.affinity(v[rows.video], q)
    cand = a[np.arange(len(rows))[:, None], rows.candidates()]
    hr10 = ((cand[:, 1:] > cand[:, :1]).sum(axis=1) < 10).mean()
    assert hr10 > 0.4 > 3 * 10 / 101
    pv, _ = relation.from_manifest(ds.manifest, ds.videos, kind="pgc")
    pa = relation.affinity(pv, q)
    seg = np.concatenate([ds.pgc.train.segment, ds.pgc.val.segment])
    music = np.concatenate([ds.pgc.train.music, ds.pgc.val.music])
    own_rank = (pa[seg] > pa[seg, music][:, None]).sum(axis=1)
    assert np.median(own_rank) < 0.05 * ds.n_tracks  # a PGC clip is made from its track


@pytest.mark.slow
def test_existing_destination_is_refused_before_any_work(corpus: Path) -> None:
    with pytest.raises(FileExistsError):
        corpus_build.build_corpus(corpus, size="tiny")


def test_a_failed_build_leaves_no_destination_and_no_temp_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def crash(cfg: corpus_build.CorpusConfig, out: Path, workers: int) -> list:
        (out / "0000.ogg").write_bytes(b"half-made")
        raise RuntimeError("renderer crashed")

    monkeypatch.setattr(corpus_build, "render_catalog", crash)
    with pytest.raises(RuntimeError, match="renderer crashed"):
        corpus_build.build_corpus(tmp_path / "demo", size="tiny")
    assert list(tmp_path.iterdir()) == []


def test_more_oracle_draws_leave_the_world_as_it_was_and_pick_afresh() -> None:
    cfg = corpus_build.SIZES["default"]
    rng = np.random.default_rng(5)
    q = rng.uniform(-1, 1, size=(cfg.n_tracks, 4))
    genre = rng.integers(len(catalog.GENRES), size=cfg.n_tracks)
    one = corpus_build.sample_world(dataclasses.replace(cfg, oracle_draws=1), q, genre)
    many = corpus_build.sample_world(cfg, q, genre)
    for name, a in vars(one).items():  # every other draw is the same, and the first oracle pick too
        b = vars(many)[name]
        np.testing.assert_array_equal(a, b[:, :1] if name == "oracle_pick" else b, err_msg=name)
    assert many.oracle_pick.shape == (cfg.n_ugc, cfg.oracle_draws)
    distinct = np.array([len(set(row)) for row in many.oracle_pick])
    assert np.mean(distinct > 1) > 0.9  # fresh draws, not copies
    # picks follow the affinity: each clip's picks rank high under it
    a = relation.affinity(many.ugc_props, q)
    rank = (a[:, None, :] > np.take_along_axis(a, many.oracle_pick, axis=1)[:, :, None]).sum(axis=2)
    assert np.median(rank) < 0.1 * cfg.n_tracks
    with pytest.raises(ValueError, match="oracle_draws must be at least 1"):
        corpus_build.build_corpus(Path("unused"), oracle_draws=0)


def test_the_gate_split_leaves_every_other_draw_as_it_was() -> None:
    cfg = corpus_build.SIZES["default"]
    assert cfg.n_gate > 0
    rng = np.random.default_rng(6)
    q = rng.uniform(-1, 1, size=(cfg.n_tracks, 4))
    genre = rng.integers(len(catalog.GENRES), size=cfg.n_tracks)
    without = corpus_build.sample_world(dataclasses.replace(cfg, n_gate=0), q, genre)
    with_gate = corpus_build.sample_world(cfg, q, genre)
    for name, a in vars(without).items():
        if not name.startswith("gate_"):
            np.testing.assert_array_equal(a, vars(with_gate)[name], err_msg=name)
    assert with_gate.gate_props.shape == (cfg.n_gate, 5) and len(with_gate.gate_pick) == cfg.n_gate
    # logged like UGC: the gate's picks lean to the popular groups as much as the training clips' do
    popular = np.isin(genre, [0, 1])
    assert abs(popular[with_gate.gate_pick].mean() - popular[with_gate.ugc_pick].mean()) < 0.1


def test_unknown_size_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown size"):
        corpus_build.build_corpus(tmp_path / "x", size="huge")
    assert not (tmp_path / "x").exists()


@pytest.mark.slow
def test_models_train_and_evaluate_on_the_extracted_corpus(corpus: Path, tmp_path: Path, tiny_dataset: Path) -> None:
    """The real-media dataset goes through the same training and evaluation as synthetic data."""
    from deccm.evaluate import evaluate
    from deccm.models import ModelConfig
    from deccm.train import TrainConfig, train

    tc = TrainConfig(epochs=2, batch_size=64, device="cpu")
    teacher = train("teacher", corpus, tmp_path / "t", ModelConfig.for_mode("fixed"), tc)
    # with the demo's balance_blocks: the 8 motion features weigh as much as the 1,280 CNN features
    student = train("student", corpus, tmp_path / "s", ModelConfig.for_mode("fixed", balance_blocks=True), tc, teacher=teacher)
    conf = json.loads((student / "config.json").read_text())
    assert conf["model"]["video_dim"] == 1288 and conf["data"]["provenance"] == "extracted"
    gain = torch.load(student / "best.pt", weights_only=True, map_location="cpu")["model"]["vae.enc_v.gain"]
    assert torch.allclose(gain[:1280], torch.full((1280,), (1288 / 2560) ** 0.5))
    assert torch.allclose(gain[1280:], torch.full((8,), (1288 / 16) ** 0.5))
    assert conf["data"]["features"]["music"]["weights"] == "untrained"  # VGGish without its weights, said so
    results, payload = evaluate([str(student), "popularity"], corpus, ["test", "test_oracle"], n_boot=200, device="cpu")
    assert {r.split for r in results} == {"test", "test_oracle"}
    assert all(0.0 <= r.values["HR_w@10"] <= 1.0 for r in results)
    # test_oracle's intervals resample clips (each holds oracle_draws rows), not rows
    from deccm.metrics import bootstrap_ci

    oracle = next(r for r in results if r.split == "test_oracle" and r.model == "popularity")
    hits, _ = oracle.per_row["HR@10"]
    rows = load_dataset(corpus).ugc.test_oracle
    assert oracle.intervals["HR@10"] == bootstrap_ci(hits, n_boot=200, groups=rows.video)
    assert oracle.intervals["HR@10"] != bootstrap_ci(hits, n_boot=200)
    with pytest.raises(RunError, match="1288/256-d features"):
        evaluate([str(student)], tiny_dataset, ["test"], n_boot=0, device="cpu")

    # served from the run: the extractor rebuilt from the recorded spec ranks a real clip like evaluate does
    from deccm.features import DecodeError
    from deccm.serve import Recommender

    rec = Recommender.from_run(student, device="cpu")
    assert rec.extractor is not None and rec.extractor.spec == conf["data"]["features"]["video"]
    ds = load_dataset(corpus)
    row = next(v for v in ds.videos if v["kind"] == "ugc")
    clip = corpus / row["path"]
    top = rec.recommend(clip, k=5)
    ids, _ = rec.rank_features(ds.ugc.video_features[int(row["id"])][None, :], k=5)
    assert [s.track for s in top] == list(ids[0])  # the clip re-extracted equals its stored features' ranking
    assert all(s.audio and Path(s.audio).is_file() for s in top)
    bad = tmp_path / "notes.mp4"
    bad.write_text("not a video")
    with pytest.raises(DecodeError, match=f"{bad}: not a media file"):
        rec.recommend(bad)
