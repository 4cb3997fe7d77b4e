"""Content-aware propensities: closer to the true importance weights of logged choices than the uploader prior."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from deccm import gate, propensity
from deccm.data import load_dataset
from deccm.data.synth import CONFOUNDING, synth


@pytest.fixture(scope="module")
def confounded(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small world with the taste → video backdoor and enough uploader history to fit a taste (1 s to make)."""
    return synth(tmp_path_factory.mktemp("prop") / "w", preset="tiny", seed=5, taste_video=CONFOUNDING["moderate"],
                 n_train=4000, n_pgc=2000, n_uploaders=300, n_val=600, n_gate=600)


def _true_weights(ds, rows) -> np.ndarray:  # noqa: ANN001 - a synthetic Dataset and its rows
    """P_free(m | v) / P_logged(m | v, u) from the generator's own truth: Z(v, u) / d_u(g)^γ."""
    gen = ds.manifest["generator"]
    a = ds.truth.affinity(np.asarray(rows.video)).astype(np.float64)  # (N, M)
    p = np.exp(gen["beta"] * (a - a.max(axis=1, keepdims=True)))
    p /= p.sum(axis=1, keepdims=True)
    d = ds.truth.uploader_preference.astype(np.float64)[np.asarray(rows.uploader)] ** gen["gamma"]  # (N, G)
    genre = ds.ugc.music_genre
    return (p * d[:, genre]).sum(axis=1) / d[np.arange(len(rows)), genre[rows.music]]


def test_content_aware_weights_track_the_true_importance_weights_better_than_the_prior(confounded: Path) -> None:
    ds = load_dataset(confounded)
    rows = ds.ugc.gate
    model = propensity.fit(ds)
    assert model is not None and model.tau in propensity.TAUS and model.alpha in propensity.ALPHAS
    w = model.weights(ds, rows)
    assert w.shape == (len(rows),) and np.isfinite(w).all() and (w > 0).all()
    truth = np.log(_true_weights(ds, rows))
    mine = np.corrcoef(np.log(w), truth)[0, 1]
    prior = np.corrcoef(np.log(gate.inverse_propensities(ds, "gate")), truth)[0, 1]
    assert mine > prior + 0.05, (mine, prior)
    # an uploader with no history has no taste to undo: weight 1
    unknown = replace(rows, uploader=np.full(len(rows), len(model.taste) + 5))
    assert np.allclose(model.weights(ds, unknown), 1.0)
    assert "content-aware propensities" in model.describe() and f"τ {model.tau:g}" in model.describe()


def test_without_pgc_or_uploaders_the_gate_falls_back_to_the_uploader_prior(confounded: Path) -> None:
    ds = load_dataset(confounded)
    no_pgc = replace(ds, pgc=None)
    assert propensity.fit(no_pgc) is None
    w, how = gate.taste_free_weights(no_pgc, "gate")
    assert np.allclose(w, gate.inverse_propensities(ds, "gate")) and how.startswith("uploader prior")
    no_val_uploaders = replace(ds, ugc=replace(ds.ugc, val=replace(ds.ugc.val, uploader=None)))
    assert propensity.fit(no_val_uploaders) is None
    assert gate.taste_free_weights(replace(ds, ugc=replace(ds.ugc, gate=replace(ds.ugc.gate, uploader=None))), "gate") == (None, "")


def test_rows_without_a_known_uploader_are_left_out_of_the_taste(confounded: Path) -> None:
    """A negative uploader id means "unknown"; it must not index the last uploader's taste."""
    ds = load_dataset(confounded)
    tr, val = ds.ugc.train, ds.ugc.val
    some = np.where(np.arange(len(tr)) % 3 == 0, -1, tr.uploader)
    model = propensity.fit(replace(ds, ugc=replace(ds.ugc, train=replace(tr, uploader=some))))
    assert model is not None and np.isfinite(model.weights(ds, ds.ugc.gate)).all()
    assert propensity.fit(replace(ds, ugc=replace(ds.ugc, val=replace(val, uploader=np.full(len(val), -1))))) is None


def test_effective_share_is_one_for_equal_weights_and_one_over_n_for_a_single_row() -> None:
    assert propensity.effective_share(np.full(40, 3.0)) == pytest.approx(1.0)
    assert propensity.effective_share(np.r_[1.0, np.zeros(39)]) == pytest.approx(1 / 40)
    assert propensity.effective_share(np.r_[np.ones(20), np.zeros(20)]) == pytest.approx(0.5)


def test_weights_that_rest_on_a_few_clips_make_the_gate_use_the_prior(confounded: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """An over-confident content model (as on the demo corpus's 180 PGC pairs) must not let a handful of clips decide."""
    ds = load_dataset(confounded)
    prior = gate.inverse_propensities(ds, "gate")
    monkeypatch.setattr(propensity.TasteFree, "weights", lambda self, d, rows: np.linspace(0.5, 2.0, len(rows)))
    w, how = gate.taste_free_weights(ds, "gate")  # spread like the prior's or better: used
    assert np.allclose(w, np.linspace(0.5, 2.0, len(w))) and how.startswith("content-aware propensities")
    monkeypatch.setattr(propensity.TasteFree, "weights", lambda self, d, rows: np.r_[500.0, np.full(len(rows) - 1, 0.01)])
    w, how = gate.taste_free_weights(ds, "gate")  # one clip would carry the estimate: the prior stands in
    assert np.allclose(w, prior) and propensity.effective_share(prior) > 0.1
    assert how.startswith("uploader prior 1/e_i (the content-aware weights leave an effective") and "content-aware propensities" in how
