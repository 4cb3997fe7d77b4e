"""The recorded catalog: Debian's soundtrack packages found, excerpted, measured and licensed per file.

The descriptor tests use generated signals whose tempo, mode and brightness are known; the
corpus tests build ``--size recorded-tiny`` once (conftest.py) from the installed packages
(``make test`` installs them through ``make music-packages``).
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from deccm.data import licences, load_dataset
from deccm.data.corpus import build as corpus_build
from deccm.data.corpus import recorded, relation
from deccm.data.format import Dataset

SR = recorded.SAMPLE_RATE
MISSING = recorded.missing_packages()
needs_packages = pytest.mark.skipif(bool(MISSING), reason=f"not installed: {MISSING}; run `make music-packages`")


def test_makefile_installs_exactly_the_packages_the_catalog_reads() -> None:
    text = (Path(__file__).resolve().parents[1] / "Makefile").read_text()
    block = re.search(r"^MUSIC_PACKAGES :=((?:.*\\\n)*.*)$", text, re.M)
    assert block is not None
    assert block.group(1).replace("\\\n", " ").split() == [p.name for p in recorded.PACKAGES]


# --------------------------------------------------------------------------- descriptors on known signals


def _clicks(bpm: float, seconds: float = 20.0, freq: float = 1000.0) -> np.ndarray:
    """A click track: a 30 ms tone burst on every beat."""
    y = np.zeros(int(seconds * SR), dtype=np.float32)
    burst = np.sin(2 * np.pi * freq * np.arange(int(0.03 * SR)) / SR) * np.hanning(int(0.03 * SR))
    for start in np.arange(0, seconds - 0.05, 60.0 / bpm):
        i = int(start * SR)
        y[i:i + len(burst)] += burst.astype(np.float32)
    return 0.5 * y


def _chord_drone(pitches: list[int], seconds: float = 8.0, partial_hz: float = 1.0) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    y = sum(np.sin(2 * np.pi * 440.0 * 2 ** ((p - 69) / 12) * partial_hz * t) for p in pitches)
    return (0.2 * y).astype(np.float32)


@pytest.mark.parametrize("bpm", [80.0, 140.0])
def test_measured_tempo_follows_a_click_track(bpm: float) -> None:
    got = recorded.measure(_clicks(bpm))["tempo_bpm"]
    assert got == pytest.approx(bpm, rel=0.06)


def test_key_and_mode_of_major_and_minor_triads() -> None:
    c_major = recorded.measure(_chord_drone([60, 64, 67, 72, 76, 79]))  # C E G
    a_minor = recorded.measure(_chord_drone([57, 60, 64, 69, 72, 76]))  # A C E
    assert c_major["mode"] == "major" and c_major["key"] == "C major" and c_major["mode_strength"] > 0
    assert a_minor["mode"] == "minor" and a_minor["key"] == "A minor" and a_minor["mode_strength"] < 0


def test_brightness_and_energy_order_signals() -> None:
    dull, bright = recorded.measure(_clicks(100, freq=300.0)), recorded.measure(_clicks(100, freq=4000.0))
    assert bright["centroid_hz"] > 2 * dull["centroid_hz"]
    quiet, loud = recorded.measure(0.1 * _clicks(100)), recorded.measure(_clicks(100))
    assert loud["rms_db"] == pytest.approx(quiet["rms_db"] + 20, abs=0.5)


def test_excerpt_window_is_a_third_in_and_always_fits() -> None:
    rng = np.random.default_rng(0)
    for d in np.concatenate([rng.uniform(10, 600, 200), [10.0, 30.0, 30.01, 45.0]]):
        start, length = recorded.excerpt_window(float(d), 30.0)
        assert 0 <= start and start + length <= d + 1e-9
        assert length == pytest.approx(min(30.0, d))
        assert start <= d / 3 + 0.01


def test_music_vector_is_catalog_percentiles_and_monotone() -> None:
    rng = np.random.default_rng(1)
    cols = [rng.uniform(60, 180, 50), rng.normal(0, 0.1, 50), rng.uniform(1, 8, 50), rng.uniform(-30, -10, 50),
            rng.uniform(500, 4000, 50)]
    q = recorded.music_vector(*cols)
    assert q.shape == (50, 4) and q.min() >= -1 and q.max() <= 1
    for j, col in ((0, cols[0]), (1, cols[1]), (3, cols[4])):
        order = np.argsort(col)
        assert np.all(np.diff(q[order, j]) > 0)
        assert q[order[0], j] == -1 and q[order[-1], j] == 1
    tags = recorded.tags(q, ["major"] * 50)
    fast = [t.startswith("fast") for t in tags]
    assert np.all(cols[0][fast] > np.median(cols[0]))


# --------------------------------------------------------------------------- the installed packages


@needs_packages
def test_sources_cover_every_package_including_zipped_ones() -> None:
    sources = recorded.find_sources()
    groups = {s.package.group for s in sources}
    assert groups == set(recorded.GROUPS)
    zipped = [s for s in sources if s.archive]
    assert {s.package.name for s in zipped} == {"ufoai-music", "nexuiz-music"}
    assert all(s.archive.endswith(".pk3") and s.path.endswith(s.member) for s in zipped)
    # only music: HyperRogue's sound effects and Drascula's per-language copies stay out
    assert not any("/sounds/" in s.path or "/drascula/en/" in s.path for s in sources)
    assert len(sources) >= 200


@needs_packages
def test_a_zipped_track_is_excerpted_measured_and_licensed_per_file(tmp_path: Path) -> None:
    src = next(s for s in recorded.find_sources() if s.package.group == "ufoai")
    track = recorded.excerpt_track(src, str(tmp_path), excerpt_s=4.0)
    assert (tmp_path / track.audio).stat().st_size > 1000
    assert track.excerpt_s == pytest.approx(4.0, abs=0.1) and track.duration_s > 10
    assert track.start_s == pytest.approx(min(track.duration_s / 3, track.duration_s - 4.0), abs=0.01)
    grant = licences.package_licence("ufoai-music", src.path)
    assert (track.licence, track.copyright, track.licence_basis) == (grant.licence, grant.copyright, grant.basis)
    assert track.licence and "DEP-5" in track.licence_basis  # UFO:AI names each music file in its copyright file


# --------------------------------------------------------------------------- the built corpus


@pytest.fixture(scope="module")
def ds(recorded_tiny_corpus: Path) -> Dataset:
    if MISSING:
        pytest.skip(f"not installed: {MISSING}; run `make music-packages`")
    return load_dataset(recorded_tiny_corpus)  # runs every validation check


@pytest.mark.slow
def test_recorded_corpus_is_real_audio_with_a_licence_per_track(ds: Dataset) -> None:
    m = ds.manifest
    assert m["provenance"] == "extracted" and m["name"] == "recorded-corpus-recorded-tiny-seed0"
    assert ds.genres == list(recorded.GROUPS)
    assert ds.n_tracks > 100
    tr = m["corpus"]["tracks"]
    for i, row in enumerate(ds.tracks):
        assert (ds.root / row["path"]).is_file()
        assert row["source"].startswith(f"debian package {tr['package'][i]}: ")
        assert row["licence"] == tr["licence"][i] and row["copyright"] == tr["copyright"][i]
        assert tr["excerpt_s"][i] == pytest.approx(5.0, abs=0.1) and tr["duration_s"][i] >= recorded.MIN_TRACK_S
        assert row["tags"] and row["tags"].split(" · ")[1] == tr["mode"][i]
    assert all(licences.family(r["licence"]) != "unknown" for r in ds.tracks)
    assert {licences.family(r["licence"]) for r in ds.tracks} >= {"gpl", "cc-by"}


@pytest.mark.slow
def test_recorded_corpus_draws_picks_from_the_measured_descriptors(ds: Dataset) -> None:
    m = ds.manifest
    np.testing.assert_allclose(relation.map_of(m), relation.RECORDED_MAP)
    tr = m["corpus"]["tracks"]
    q = np.asarray(tr["music_vector"])
    np.testing.assert_allclose(q, recorded.music_vector(*(np.asarray(tr[k], dtype=float) for k in (
        "tempo_bpm", "mode_strength", "onsets_per_s", "rms_db", "centroid_hz"))), atol=1e-5)
    v, _ = relation.from_manifest(m, ds.videos)
    rows = ds.ugc.test_oracle
    a = relation.affinity(v[rows.video], q, relation.map_of(m))
    cand = a[np.arange(len(rows))[:, None], rows.candidates()]
    hr10 = ((cand[:, 1:] > cand[:, :1]).sum(axis=1) < 10).mean()
    assert hr10 > 3 * 10 / 101  # the planted ranker finds the oracle picks far above chance
    # logged picks lean to the popular soundtracks more than affinity-only picks do
    popular = np.isin(ds.ugc.music_genre, [0, 1])
    assert popular[ds.ugc.train.music].mean() > popular[rows.music].mean() + 0.1
    assert corpus_build.SIZES["recorded-tiny"].catalog == "recorded"


@pytest.mark.slow
def test_a_model_on_the_recorded_corpus_serves_real_tracks_within_a_licence_filter(ds: Dataset, tmp_path: Path) -> None:
    from deccm.serve import Recommender
    from deccm.train import TrainConfig, configs_from_dict, train

    model = configs_from_dict({"variant": "plain", "model": {"balance_blocks": True}})[0]
    run = train("student", ds.root, tmp_path / "plain", model, TrainConfig(epochs=2, batch_size=64, device="cpu"), variant="plain")
    rec = Recommender.from_run(run, device="cpu")
    clip = ds.root / next(v for v in ds.videos if v["kind"] == "ugc")["path"]
    by_family = {f: sum(licences.family(t["licence"]) == f for t in ds.tracks) for f in ("gpl", "cc-by", "other")}
    for filter_, fam in (("gpl", "gpl"), ("cc-by", "cc-by")):
        top = rec.recommend(clip, k=10, licence=filter_)
        assert len(top) == min(10, by_family[fam])  # K come back from within the filter
        assert all(s.licence_family == fam and s.licence in s.attribution for s in top)
        assert all(s.audio and Path(s.audio).is_file() and s.tags for s in top)
    everything = rec.recommend(clip, k=ds.n_tracks, licence="any")
    assert len(everything) == ds.n_tracks - by_family.get("unknown", 0)
