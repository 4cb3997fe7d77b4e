"""The one scoring path: Ranker vectors, ranking against a precomputed catalog, popularity."""
from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from deccm.data import load_dataset
from deccm.serve import Catalog, Recommender, popularity_ranker


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


# --------------------------------------------------------------------------- licences


LICENCES = ("GPL-2+", "CC-BY-SA-3.0", "", "public-domain", "Drascula-License", "CC-BY-NC-4.0", "MIT")  # cycled over the catalog


def licensed(rec: Recommender, licences: tuple[str, ...] = LICENCES) -> Recommender:
    """The same model over a copy of its catalog whose tracks cycle through ``licences`` (with a copyright each)."""
    c = rec.catalog
    tracks = [{**t, "licence": licences[i % len(licences)], "copyright": f"{2000 + i % 20} Holder {i}"}
              for i, t in enumerate(c.tracks)]
    return Recommender(rec.ranker, Catalog(c.vectors, tracks, c.genres, c.source))


def test_licence_filter_masks_before_ranking(student_run: Path, tiny_dataset: Path) -> None:
    from deccm import metrics
    from deccm.data.licences import FILTERS, allowed
    from deccm.serve import Recommender

    rec = licensed(Recommender.from_run(student_run, device="cpu"))
    ds = load_dataset(tiny_dataset)
    x = np.asarray(ds.ugc.video_features[ds.ugc.test.video[:20]])
    full = rec.ranker.video_vectors(x) @ rec.catalog.vectors.T  # (20, M) every score
    for name in FILTERS:
        ok = np.array([allowed(t["licence"], name) for t in rec.catalog.tracks])
        k = 10
        assert ok.sum() >= k  # each filter allows at least k tracks here, so k must come back
        ids, scores = rec.rank_features(x, k, licence=name)
        assert ids.shape == (20, k) and ok[ids].all(), name
        np.testing.assert_array_equal(ids, metrics.top_k(np.where(ok, full, -np.inf), k))  # the best k allowed tracks
        np.testing.assert_allclose(scores, np.take_along_axis(full, ids, 1), rtol=1e-5, atol=1e-6)
    unknown = {i for i, t in enumerate(rec.catalog.tracks) if not t["licence"]}
    default = rec.rank_features(x, len(rec.catalog.tracks))[0]  # every track "any" serves
    assert default.shape[1] == len(rec.catalog.tracks) - len(unknown) and not unknown & set(default.ravel().tolist())
    gpl = rec.recommend(x[0], k=5, licence="gpl")
    assert [s.licence for s in gpl] == ["GPL-2+"] * 5 and {s.licence_family for s in gpl} == {"gpl"}


def test_fewer_allowed_tracks_than_k(student_run: Path) -> None:
    from deccm.serve import Recommender

    rec = Recommender.from_run(student_run, device="cpu")
    n = len(rec.catalog.tracks)
    rare = licensed(rec, ("GPL-2+",) + ("CC-BY-SA-3.0",) * (n // 3))  # 3 GPL tracks (ids 0, n//3 + 1, ...)
    x = np.asarray(load_dataset(rec.run.data_path).ugc.video_features[0])
    items = rare.recommend(x, k=10, licence="gpl")
    assert len(items) == len([t for t in rare.catalog.tracks if t["licence"] == "GPL-2+"]) == 3
    assert {s.licence for s in items} == {"GPL-2+"}
    assert len(rare.recommend(x, k=10, licence="cc-by")) == 10


def test_unknown_licences_are_served_only_on_request(student_run: Path) -> None:
    from deccm.serve import Recommender

    rec = licensed(Recommender.from_run(student_run, device="cpu"), ("",))
    x = np.asarray(load_dataset(rec.run.data_path).ugc.video_features[0])
    with pytest.raises(ValueError, match=r"none of the catalog's \d+ tracks has a known licence.*--licence include-unknown"):
        rec.recommend(x, k=5)
    assert len(rec.recommend(x, k=5, licence="include-unknown")) == 5
    pd_only = licensed(rec, ("public-domain",))
    with pytest.raises(ValueError, match=r"no track of the catalog is allowed by licence filter 'gpl'.*public-domain \d+"):
        pd_only.recommend(x, k=5, licence="gpl")
    with pytest.raises(ValueError, match="licence filter 'gnu' is unknown. Fix: one of any, "):
        pd_only.rank_features(x, 5, licence="gnu")


def test_suggestions_carry_licence_and_attribution(student_run: Path) -> None:
    import json

    from deccm.serve import Recommender, format_suggestions

    rec = licensed(Recommender.from_run(student_run, device="cpu"))
    items = rec.recommend(np.asarray(load_dataset(rec.run.data_path).ugc.video_features[1]), k=6)
    for s in json.loads(json.dumps([s.to_dict() for s in items])):
        row = rec.catalog.tracks[s["track"]]
        assert s["licence"] == row["licence"] != ""
        assert s["attribution"] == f'"{row["title"]}" by deccm synth, © {row["copyright"]}, licence {row["licence"]}'
        assert s["licence_family"] in ("gpl", "cc-by", "public-domain", "permissive", "other")
    table = format_suggestions(items).splitlines()
    assert table[0].split()[-1] == "licence" and all(line.endswith(s.licence) for line, s in zip(table[1:], items))


def test_bundle_keeps_licences_and_reads_older_bundles_from_their_data(student_run: Path, tmp_path: Path) -> None:
    import json

    from deccm.card import card_markdown

    rec = Recommender.from_run(student_run, device="cpu", extractor=False)
    csv_licences = [r["licence"] for r in load_dataset(rec.run.data_path).tracks]
    assert [t["licence"] for t in rec.catalog.tracks] == csv_licences  # tracks.csv → Catalog.tracks
    mixed = licensed(rec)
    mixed.ranker.run_dir = rec.ranker.run_dir
    bundle = mixed.save_bundle(tmp_path / "bundle")
    again = Recommender.from_bundle(bundle, device="cpu", extractor=False)
    assert [(t["licence"], t["copyright"]) for t in again.catalog.tracks] == \
        [(t["licence"], t["copyright"]) for t in mixed.catalog.tracks]
    counts = again.catalog.licence_counts()
    assert counts["families"]["unknown"] == sum(not t["licence"] for t in mixed.catalog.tracks)
    assert sum(counts["families"].values()) == sum(counts["licences"].values()) == len(mixed.catalog.tracks)
    card = card_markdown({"catalog": {"tracks": len(again.catalog.tracks), "genres": again.catalog.genres, "licences": counts}})
    assert f"gpl {counts['families']['gpl']}" in card and "of unknown licence: never served by default" in card
    assert f"GPL-2+: {counts['licences']['GPL-2+']}" in card and "and 2 more" in card  # 7 licences, 5 named

    # a bundle from before licences: rows without them, read back from the unchanged dataset it names
    meta = json.loads((bundle / "catalog" / "catalog.json").read_text())
    meta["tracks"] = [{k: v for k, v in t.items() if k not in ("licence", "copyright")} for t in meta["tracks"]]
    (bundle / "catalog" / "catalog.json").write_text(json.dumps(meta))
    assert [t["licence"] for t in Catalog.load(bundle / "catalog").tracks] == csv_licences
    meta["source"]["manifest_hash"] = "0" * 64  # its dataset changed since: unknown, so refused by default
    (bundle / "catalog" / "catalog.json").write_text(json.dumps(meta))
    old = Recommender.from_bundle(bundle, device="cpu", extractor=False)
    assert {t["licence"] for t in old.catalog.tracks} == {""}
    with pytest.raises(ValueError, match="include-unknown"):
        old.rank_features(np.zeros(rec.run.model.video_dim, np.float32), 3)


def test_recommend_cli_licence_choices(student_run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from deccm.data.licences import FILTERS
    from deccm.serve import main

    with pytest.raises(SystemExit) as e:
        main([str(student_run), "clip.mp4", "--licence", "gnu"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "invalid choice: 'gnu'" in err and all(f in err.rsplit("choose from", 1)[1] for f in FILTERS)
