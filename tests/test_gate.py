"""The promotion gate: validated settings, the metric table's directions, a paired bootstrap, SNIPS on confounded logs."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from deccm import gate, metrics, pipeline
from deccm.data import load_dataset
from deccm.data.synth import synth
from deccm.evaluate import evaluate_split
from deccm.serve import Ranker, popularity_ranker


def _linear(name: str, ds, seed: int) -> Ranker:  # noqa: ANN001 - a Dataset
    """An ad-hoc ranker: fixed random projections of both feature sets (no training needed)."""
    g = torch.Generator().manual_seed(seed)
    wv = torch.randn(ds.ugc.video_features.shape[1], 16, generator=g)
    wm = torch.randn(ds.ugc.music_features.shape[1], 16, generator=g)
    return Ranker(name, lambda x: x @ wv, lambda x: x @ wm)


# --------------------------------------------------------------------------- settings and the metric table


@pytest.mark.parametrize("kwargs, words", [
    ({"margin": -0.01}, "gate_margin=-0.01 is refused: it must be at least 0"),
    ({"floor": 0.0 - 1e-9}, "gate_floor"),
    ({"floor": 1.5}, "gate_floor=1.5 is refused: it must be at most 1"),
    ({"floor": float("nan")}, "gate_floor"),
    ({"bias_tolerance": -1}, "bias_tolerance"),
    ({"split": "test"}, "gate_split 'test' is not allowed"),
    ({"split": "test_oracle"}, "must never choose it"),
    ({"metric": "MedR"}, "lower is better"),
    ({"metric": "genre_KL@10"}, "lower is better"),
    ({"metric": "coverage@10"}, "no per-row values"),
    ({"metric": "HR_w@11"}, "unknown metric 'HR_w@11'"),
    ({"margin": "0.01"}, "must be a number"),
    ({"n_boot": 10}, "at least 200"),
])
def test_gate_config_refuses_settings_out_of_bounds(kwargs: dict, words: str) -> None:
    with pytest.raises(ValueError, match=words):
        gate.GateConfig(**kwargs)


def test_pipeline_config_checks_the_gate_bounds_before_any_stage() -> None:
    with pytest.raises(ValueError, match="gate_margin"):
        pipeline.make_config({"gate_margin": -0.5})
    with pytest.raises(ValueError, match="gate_split='test' is refused: choose one of gate, val"):
        pipeline.make_config({"gate_split": "test"})
    assert pipeline.gate_config(pipeline.make_config({})).split == "gate"


def test_the_gate_accepts_exactly_what_the_pipeline_settings_declare() -> None:
    from deccm import settings

    assert set(settings.spec(settings.Pipeline, "gate_split").choices) == {"gate", "val"}
    offered = settings.spec(settings.Pipeline, "gate_metric").choices
    assert "HR_w@10" in offered and "MedR" not in offered and "genre_KL@10" not in offered
    for metric in offered:  # every metric the Params offer can decide a promotion
        gate.GateConfig(metric=metric)
    for key, field in (("gate_margin", "margin"), ("gate_floor", "floor"), ("bias_tolerance", "bias_tolerance")):
        s = settings.spec(settings.Pipeline, key)
        gate.GateConfig(**{field: s.minimum})
        gate.GateConfig(**{field: s.maximum})
        for outside in (s.minimum - 1e-6, s.maximum + 1e-6):
            with pytest.raises(ValueError, match=key):
                gate.GateConfig(**{field: outside})
            with pytest.raises(ValueError, match=key):
                pipeline.make_config({key: outside})


def test_every_metric_the_evaluation_reports_is_in_the_table(tiny_dataset: Path) -> None:
    ds = load_dataset(tiny_dataset)
    res = evaluate_split(popularity_ranker(ds.ugc.train.music, ds.n_tracks), ds, "gate")
    assert set(res.values) <= set(metrics.METRICS)
    assert {n for n, m in metrics.METRICS.items() if m.per_row and n in res.values} == set(res.per_row)
    assert metrics.worse_by("genre_KL@10", 0.3, 0.1) == pytest.approx(0.2)  # lower is better: higher is worse
    assert metrics.worse_by("HR_w@10", 0.3, 0.1) == pytest.approx(-0.2)
    # the model card reads its tables from the same table: every card metric is reported, grouped and explained
    from deccm.card import card_markdown

    shown = [m for m in metrics.METRICS.values() if m.card]
    assert {m.name for m in shown} <= set(res.values) and all(m.group in ("ranking", "bias") and m.words for m in shown)
    text = card_markdown({"evaluation": {"challenger": {"gate": res.values}}})
    assert all(f"| {m.name} | " in text and m.words in text for m in shown)


# --------------------------------------------------------------------------- statistics


def test_paired_bootstrap_sees_what_point_estimates_hide() -> None:
    rng = np.random.default_rng(0)
    champ = (rng.random(400) < 0.4).astype(float)
    flip = rng.random(400) < 0.1
    noisy = np.where(flip, 1 - champ, champ)  # 10 % of rows flip either way: no real difference
    p = gate.paired(noisy, champ, None, np.arange(400), n_boot=2000, seed=0)
    assert p["ci95"][0] < 0 < p["ci95"][1]
    assert p == gate.paired(noisy, champ, None, np.arange(400), n_boot=2000, seed=0)  # seeded: reproducible
    better = np.where(rng.random(400) < 0.3, 1.0, champ)  # a real gain of about +0.18
    q = gate.paired(better, champ, None, np.arange(400), n_boot=2000, seed=0)
    assert q["ci95"][0] > 0.1 and q["diff"] == pytest.approx(better.mean() - champ.mean())
    # the one-sided lower 95 % bound (5th percentile) lies inside the two-sided interval, above its 2.5th percentile
    assert q["ci95"][0] < q["lower95"] < q["diff"] and p["ci95"][0] < p["lower95"] < p["diff"] + 1e-12
    # the same rows counted ten times per clip: resampling clips keeps the interval as wide as 400 clips allow
    rep = gate.paired(np.repeat(noisy, 10), np.repeat(champ, 10), None, np.repeat(np.arange(400), 10), 2000, 0)
    assert rep["ci95"][1] - rep["ci95"][0] == pytest.approx(p["ci95"][1] - p["ci95"][0], rel=0.2)
    with pytest.raises(ValueError, match="different rows"):
        gate.paired(champ[:10], champ, None, np.arange(400), 2000, 0)


def test_snips_weights_are_the_metrics_weight_times_the_taste_free_weight(tiny_dataset: Path) -> None:
    ds = load_dataset(tiny_dataset)
    rows = ds.ugc.gate
    inv = gate.inverse_propensities(ds, "gate")  # the fallback: the uploader prior alone
    genre = ds.ugc.music_genre[rows.music]
    e = np.clip(rows.prior[np.arange(len(rows)), genre], 0.01, 1.0)
    assert np.allclose(inv, 1 / e)
    tf, how = gate.taste_free_weights(ds, "gate")  # tiny has PGC pairs and uploaders: the content-aware model
    assert how.startswith("content-aware propensities") and tf.shape == (len(rows),) and (tf > 0).all()
    a, b = _linear("a", ds, 1), _linear("b", ds, 2)
    for metric, w in (("HR_w@10", rows.weight * tf), ("HR@10", tf)):  # weighted metric: popularity weight × taste-free weight
        cfg = gate.GateConfig(metric=metric)
        ra, rb = evaluate_split(a, ds, "gate"), evaluate_split(b, ds, "gate")
        comp = gate.compare(ds, "gate", ra, rb, cfg)
        assert comp["snips"]["challenger"] == pytest.approx(float(w @ ra.per_row[metric][0] / w.sum()))
        assert comp["propensities"] == how


def test_score_and_decide_on_confounded_rows(tiny_dataset: Path) -> None:
    ds = load_dataset(tiny_dataset)
    a, b = _linear("a", ds, 1), _linear("b", ds, 2)
    cfg = gate.GateConfig(floor=0.0, margin=0.0)
    scored = gate.score(ds, "gate", a, b, cfg)
    comp = scored["comparison"]
    assert comp["deciding"] == "snips" and set(scored["taste_R2"]) == {"challenger", "champion"}
    d = gate.decide(scored, cfg)
    lo = comp["snips"]["lower95"]
    assert d["promote"] is (lo > 0 and all("holds" in r for r in d["reasons"] if r.startswith("bias guard")))
    assert any("self-normalised IPS" in r for r in d["reasons"]) and any("taste probe" in r for r in d["reasons"])
    assert gate.decide(scored, cfg) == d  # the same inputs: the same decision
    same = gate.decide(gate.score(ds, "gate", a, a, cfg), cfg)  # a model never beats itself
    assert not same["promote"] and any("does not beat the champion" in r for r in same["reasons"])
    with pytest.raises(ValueError, match="comparison is of HR@10"):
        gate.decide(scored, gate.GateConfig(metric="NDCG_w@10"))


def test_first_model_faces_the_floor_alone_and_notes_lead_the_reasons(tiny_dataset: Path) -> None:
    ds = load_dataset(tiny_dataset)
    scored = gate.score(ds, "val", _linear("a", ds, 1), None, gate.GateConfig(split="val"))
    value = scored["comparison"]["snips"]["challenger"]
    assert gate.decide(scored, gate.GateConfig(split="val", floor=value / 2))["promote"]
    d = gate.decide(scored, gate.GateConfig(split="val", floor=min(1.0, value + 0.01)), notes=("WARNING: fell back",))
    assert not d["promote"] and d["reasons"][0] == "WARNING: fell back" and any("below the floor" in r for r in d["reasons"])


def test_bias_guard_reads_directions_from_the_table() -> None:
    cfg = gate.GateConfig(floor=0.0, margin=0.0, bias_tolerance=0.05)
    comp = {"metric": "HR@10", "split": "gate", "deciding": "plain",
            "plain": {"challenger": 0.5, "champion": 0.3, "diff": 0.2, "ci95": [0.1, 0.3], "lower95": 0.12,
                      "clips": 100, "rows": 100}}
    champ = {"genre_KL@10": 0.20, "top_genre_share@10": 0.40}
    less_biased = gate.decide({"comparison": comp, "challenger": {"genre_KL@10": 0.05, "top_genre_share@10": 0.20},
                               "champion": champ}, cfg)
    assert less_biased["promote"]  # lower bias metrics are better, however far below
    more_biased = gate.decide({"comparison": comp, "challenger": {"genre_KL@10": 0.30, "top_genre_share@10": 0.40},
                               "champion": champ}, cfg)
    assert not more_biased["promote"] and any("genre_KL@10 0.3000 is worse" in r for r in more_biased["reasons"])


def test_bias_guard_measures_genre_kl_against_the_taste_free_mix(tiny_dataset: Path) -> None:
    """On logged rows the positives' genre mix carries the uploaders' taste; the guard reads the 1/e-weighted mix."""
    ds = load_dataset(tiny_dataset)
    rows = ds.ugc.gate
    genre = ds.ugc.music_genre
    logged = np.bincount(genre[rows.music], minlength=ds.n_genres) / len(rows)
    inv, _ = gate.taste_free_weights(ds, "gate")
    taste_free = np.bincount(genre[rows.music], weights=inv, minlength=ds.n_genres) / inv.sum()
    favoured = int(np.argmax(logged - taste_free))  # the genre the taste over-represents in the logs
    assert logged[favoured] > taste_free[favoured]
    only = torch.tensor((genre == favoured).astype(np.float32))[:, None]  # every top-10 slot in that genre
    follows_taste = Ranker("follows the taste", lambda x: torch.ones(len(x), 1), lambda x, o=only: o + 1e-3 * torch.rand(len(x), 1))
    cfg = gate.GateConfig(floor=0.0, margin=0.0)
    scored = gate.score(ds, "gate", follows_taste, _linear("b", ds, 2), cfg)
    mine = scored["challenger"]
    assert mine["genre_KL@10_logged"] == pytest.approx(evaluate_split(follows_taste, ds, "gate").values["genre_KL@10"])
    top = evaluate_split(follows_taste, ds, "gate").top[:, :10]
    assert mine["genre_KL@10"] == pytest.approx(metrics.calibration_kl(taste_free[None], genre[top].reshape(1, -1), ds.n_genres))
    assert mine["genre_KL@10"] > mine["genre_KL@10_logged"]  # against the logged mix, following the taste looks calibrated
    d = gate.decide(scored, cfg)
    assert any(r.startswith("bias guard: genre_KL@10 (against the taste-free genre mix") for r in d["reasons"])


def test_the_one_sided_lower_bound_decides() -> None:
    cfg = gate.GateConfig(floor=0.0, margin=0.005)
    est = {"challenger": 0.5, "champion": 0.4, "diff": 0.1, "ci95": [-0.01, 0.21], "clips": 100, "rows": 100}
    scored = {"challenger": {}, "champion": {}, "comparison": {"metric": "HR@10", "split": "gate", "deciding": "plain"}}
    clears = gate.decide({**scored, "comparison": {**scored["comparison"], "plain": {**est, "lower95": 0.01}}}, cfg)
    assert clears["promote"] and any("one-sided lower 95 % bound +0.0100" in r and "clears the margin" in r for r in clears["reasons"])
    short = gate.decide({**scored, "comparison": {**scored["comparison"], "plain": {**est, "lower95": 0.004}}}, cfg)
    assert not short["promote"] and any("does not clear the margin" in r for r in short["reasons"])


# --------------------------------------------------------------------------- the pipeline's use


def test_dataset_without_gate_split_falls_back_to_val_with_a_warning(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from deccm.models import ModelConfig
    from deccm.runs import TrainConfig
    from deccm.train import train

    monkeypatch.setenv("DECCM_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    data = synth(tmp_path / "old", preset="tiny", seed=1, n_gate=0)  # as made before the gate split existed
    run = train("student", data, tmp_path / "run", ModelConfig.for_mode("fixed", distill="off"),
                TrainConfig(epochs=1, batch_size=64, seed=0, device="cpu"), variant="no-distill")
    cfg = pipeline.make_config({"source": "synth-tiny", "device": "cpu", "gate_floor": 0.0})
    evaluation = pipeline.evaluate_candidates(cfg, str(run))
    assert evaluation["gate"]["split"] == "val" and "no 'gate' split" in evaluation["notes"][0]
    decision = pipeline.gate(cfg, evaluation)
    assert decision["reasons"][0].startswith("WARNING") and decision["promote"]  # no champion: the floor (0) decides
