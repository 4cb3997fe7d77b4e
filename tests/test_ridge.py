"""The closed-form ridge baseline: the right solution, λ chosen on validation, a run like any other."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from deccm import metrics
from deccm.evaluate import evaluate
from deccm.models import ModelConfig, RidgeMatcher
from deccm.models.ridge import RidgeSolver
from deccm.runs import TrainConfig, read_config
from deccm.serve import load_ranker
from deccm.train import TrainingError, configs_from_dict, train


def test_solver_matches_the_normal_equations_for_every_lambda() -> None:
    rng = np.random.default_rng(0)
    x_v, x_m = rng.gamma(2.0, size=(50, 7)), rng.standard_normal((20, 4))
    video, music = rng.integers(0, 50, 300), rng.integers(0, 20, 300)
    solver = RidgeSolver(*(torch.as_tensor(a) for a in (x_v, x_m, video, music)))
    X = x_v[video]
    Xs = (X - X.mean(0)) / X.std(0)
    Y = x_m[music] - x_m.mean(0)
    for lam in (0.1, 10.0, 1e4):
        want = np.linalg.solve(Xs.T @ Xs + lam * np.eye(7), Xs.T @ Y)
        np.testing.assert_allclose(solver.weight(lam).numpy(), want, rtol=1e-4, atol=1e-6)
    model = RidgeMatcher(ModelConfig(video_dim=7, music_dim=4, arch="ridge"))
    solver.load_into(model, 10.0)
    q = model.video_embed(torch.as_tensor(x_v[:3], dtype=torch.float32)).numpy()
    expect = ((x_v[:3] - X.mean(0)) / X.std(0)) @ np.linalg.solve(Xs.T @ Xs + 10 * np.eye(7), Xs.T @ Y)
    np.testing.assert_allclose(q, expect / np.linalg.norm(expect, axis=1, keepdims=True), rtol=1e-4, atol=1e-5)


def test_ridge_variant_learns_keeps_the_best_lambda_and_serves(tiny_dataset: Path, tmp_path: Path) -> None:
    mcfg, _, variant = configs_from_dict({"variant": "ridge"})
    run = train("student", tiny_dataset, tmp_path / "ridge", mcfg, TrainConfig(device="cpu"), variant=variant)
    conf = read_config(run)
    vals = [h["val"] for h in conf.history]
    assert conf.finished and len(vals) > 5 and conf.best_val == max(vals) == vals[conf.best_epoch]
    assert conf.model.arch == "ridge" and conf.teacher is None
    results, _ = evaluate([str(run)], data=tiny_dataset, splits=["val", "test_oracle"], n_boot=0, device="cpu")
    assert results[0].values["HR_w@10"] > 0  # the number deccm.evaluate prints for val is the one that chose λ
    assert results[1].values["HR@10"] > 1.5 * metrics.expected_random_hit_rate(10), results[1].values["HR@10"]
    ranker = load_ranker(run, device="cpu")
    assert isinstance(load_ranker(run).video_fn.__self__, RidgeMatcher)  # type: ignore[attr-defined]
    assert ranker.video_vectors(np.zeros((1, conf.model.video_dim), np.float32)).shape == (1, conf.model.music_dim)
    assert train("student", tiny_dataset, tmp_path / "ridge", mcfg, TrainConfig(device="cpu"), variant=variant,
                 resume="auto") == run  # finished: returned as is
    with pytest.raises(TrainingError, match="student variant"):
        train("teacher", tiny_dataset, tmp_path / "t", mcfg, TrainConfig(device="cpu"), variant=variant)


def test_ridge_with_the_taste_erased_loses_the_uploaders_visual_style(tmp_path: Path) -> None:
    """Where the taste shapes the video's style only, the ridge map learns it; the erased variants'
    video vectors (all of the taste erased, or the taste beyond content) carry (nearly) none of it,
    and they serve like any run."""
    from deccm.data import load_dataset
    from deccm.data.synth import CONFOUNDING, synth
    from deccm.evaluate import taste_probe
    from deccm.train import VARIANTS

    data = synth(tmp_path / "d", preset="tiny", seed=3, taste_video=CONFOUNDING["strong"],
                 n_train=2000, n_val=200, n_test=300, n_uploaders=100, n_pgc=1500)
    probes = {}
    for variant in ("ridge", "ridge-erased", "ridge-erased-residual"):
        run = train("student", data, tmp_path / variant, ModelConfig.for_mode("fixed", **VARIANTS[variant]),
                    TrainConfig(device="cpu"), variant=variant)
        probes[variant] = taste_probe(load_ranker(run), load_dataset(data))
    assert probes["ridge"] > 0.5 and probes["ridge-erased"] < 0.05 and probes["ridge-erased-residual"] < 0.2, probes
