"""The synthetic benchmark's taste → video knob opens a real backdoor (docs/results.md).

With ``taste_video = s`` the uploader's genre taste shifts their videos' nuisance latent, so
video features carry the taste that also biases the logged pick: ``V ← D → M``. A matcher
fitted to those logs learns the taste as if it were content, so on the oracle split (picks
from the true affinity alone) it loses, while on the biased test split (picks drawn like the
logs) it loses much less: its biased/oracle ratio grows, the classic confounding signature.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from deccm.data import load_dataset
from deccm.data.synth import CONFOUNDING, MEDIATED, synth
from deccm.evaluate import evaluate_split, taste_probe
from deccm.models import ModelConfig
from deccm.runs import TrainConfig
from deccm.serve import load_ranker
from deccm.train import RECOMMENDED, VARIANTS, train

WORLD = {"n_train": 2000, "n_val": 200, "n_test": 300, "n_uploaders": 100, "n_pgc": 300}


def _world(root: Path, s: float, **over: float) -> Path:
    return synth(root / f"s{s:g}", preset="tiny", seed=3, taste_video=s, **{**WORLD, **over})


def test_knob_zero_leaves_the_data_unchanged_and_shifts_only_uploaded_videos(tmp_path: Path) -> None:
    off = load_dataset(synth(tmp_path / "default", preset="tiny", seed=3, **WORLD))
    zero, on = load_dataset(_world(tmp_path, 0.0)), load_dataset(_world(tmp_path, CONFOUNDING["strong"]))
    assert np.array_equal(off.ugc.video_features, zero.ugc.video_features)
    assert not np.allclose(on.ugc.video_features, zero.ugc.video_features)
    # the same world otherwise: same tracks, same logged picks, same PGC segments (no uploader, no shift)
    assert np.array_equal(on.ugc.train.music, zero.ugc.train.music)
    assert np.array_equal(on.pgc.segment_features, zero.pgc.segment_features)
    with pytest.raises(ValueError, match="taste_vidoe"):
        synth(tmp_path / "bad", preset="tiny", taste_vidoe=3.0)


def test_taste_in_the_video_opens_a_backdoor_for_plain_matching(tmp_path: Path) -> None:
    scores = {}
    for s in (CONFOUNDING["none"], CONFOUNDING["strong"]):
        data = _world(tmp_path, s)
        run = train("student", data, tmp_path / f"plain-{s:g}", ModelConfig.for_mode("fixed", **VARIANTS["plain"]),
                    TrainConfig(epochs=6, batch_size=128, seed=1, device="cpu"), variant="plain")
        ranker, ds = load_ranker(run), load_dataset(data)
        scores[s] = {split: evaluate_split(ranker, ds, split).values["HR_w@10"] for split in ("test", "test_oracle")}
        scores[s]["taste_R2"] = taste_probe(ranker, ds)
    none, strong = scores[CONFOUNDING["none"]], scores[CONFOUNDING["strong"]]
    assert strong["test_oracle"] < 0.7 * none["test_oracle"], scores  # the confounding cost on the truth
    ratio = {s: v["test"] / v["test_oracle"] for s, v in scores.items()}
    assert ratio[CONFOUNDING["strong"]] > ratio[CONFOUNDING["none"]] + 0.3, scores  # the logs hide it
    # and the video vectors learned the taste: a linear probe recovers it on held-out videos
    assert none["taste_R2"] < 0.2 and strong["taste_R2"] > 0.5, scores


def test_erasing_beyond_content_keeps_the_taste_that_is_content_and_removes_the_style(tmp_path: Path) -> None:
    """Where the taste only pulls the video's content (mediated, no style), erasing all of it empties
    the video vectors of content that predicts the music; erasing only the taste beyond the PGC
    content view keeps it. Where the taste is only a visual style, both erase (nearly all of) it. The
    recommended blend (that student plus a ridge map with all of the taste erased) keeps the content
    through its student part and loses most of the style (docs/results.md)."""
    cfg = TrainConfig(epochs=6, batch_size=128, seed=1, device="cpu")
    probes: dict[str, dict[str, float]] = {}
    for world, over in (("mediated", {"taste_content": MEDIATED["strong"]}), ("style", {})):
        data = _world(tmp_path / world, 0.0 if over else CONFOUNDING["strong"], n_pgc=1500, **over)  # PGC enough to read content
        teacher = train("teacher", data, tmp_path / world / "teacher", ModelConfig.for_mode("fixed"), cfg)
        probes[world] = {}
        for variant in ("plain", "erased", "erased-residual", RECOMMENDED):
            run = train("student", data, tmp_path / world / variant, ModelConfig.for_mode("fixed", **VARIANTS[variant]), cfg,
                        teacher=None if variant == "plain" else teacher, variant=variant)
            probes[world][variant] = taste_probe(load_ranker(run), load_dataset(data))
    assert probes["mediated"]["erased"] < 0.1, probes
    assert probes["mediated"]["erased-residual"] > 0.3 and probes["mediated"][RECOMMENDED] > 0.3, probes
    assert probes["style"]["plain"] > 0.5 and probes["style"]["erased"] < 0.1, probes
    assert probes["style"]["erased-residual"] < 0.2 and probes["style"][RECOMMENDED] < 0.5 * probes["style"]["plain"], probes
