"""Tests that guard learning: trained models must find the planted relation, not just run.

A small synthetic world (seconds to train) with a known true affinity: a student that
learns nothing scores chance (10/101 on HR@10), and the popularity ranker scores what
genre skew alone buys. Thresholds sit far below what the models reach (plain ≈ 0.5
oracle HR@10, Spearman ≈ 0.6 when this was written) and far above chance, so a broken
loss, a wrong sign or a shuffled feature table fails them.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from deccm import metrics
from deccm.data.synth import synth
from deccm.evaluate import evaluate
from deccm.models import ModelConfig
from deccm.runs import TrainConfig, read_config
from deccm.train import VARIANTS, train

CHANCE_HR10 = metrics.expected_random_hit_rate(10)
CFG = TrainConfig(epochs=6, batch_size=128, seed=1, device="cpu")


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return synth(tmp_path_factory.mktemp("learn") / "data", preset="tiny", seed=3,
                 n_train=2000, n_val=200, n_test=300, n_uploaders=100, n_pgc=1200)


@pytest.fixture(scope="module")
def teacher(world: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    n = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        return train("teacher", world, tmp_path_factory.mktemp("learn") / "teacher", ModelConfig.for_mode("fixed"), CFG)
    finally:
        torch.set_num_threads(n)


def test_teacher_beats_chance_on_pgc_validation(teacher: Path, world: Path) -> None:
    from deccm.data import load_dataset

    chance = CFG.eval_k / load_dataset(world).n_tracks  # full-catalog Recall@25 of a random ranking
    assert read_config(teacher).best_val > 1.3 * chance


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["plain", "no-deconf"])
def test_students_find_the_planted_relation(variant: str, world: Path, teacher: Path, tmp_path: Path) -> None:
    run = train("student", world, tmp_path / variant, ModelConfig.for_mode("fixed", **VARIANTS[variant]), CFG,
                teacher=teacher, variant=variant)
    results, _ = evaluate([str(run), "popularity"], data=world, splits=["test_oracle"], n_boot=0, device="cpu")
    model, pop = results
    assert model.values["HR@10"] > 2 * CHANCE_HR10, model.values["HR@10"]
    assert model.values["HR@10"] > pop.values["HR@10"] and model.values["HR_w@10"] > pop.values["HR_w@10"]
    assert model.values["spearman_truth"] > 0.2
