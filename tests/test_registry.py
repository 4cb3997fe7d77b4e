"""MLflow tracking and the model registry, on real MLflow with SQLite (no mocks)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from deccm import registry, tracking
from deccm.models import ModelConfig
from deccm.runs import TrainConfig
from deccm.train import train

FAST = TrainConfig(epochs=3, batch_size=64, seed=2, device="cpu")


@pytest.fixture()
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh state dir, so each test has its own MLflow database and registry."""
    monkeypatch.setenv("DECCM_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return tmp_path / "home"


def _tracked_run(data: Path, out: Path, seed: int = 2, epochs: int = 3) -> Path:
    tr = tracking.TrainingTracker(out, strict=True)
    run = train("student", data, out, ModelConfig.for_mode("fixed", distill="off"),
                TrainConfig(epochs=epochs, batch_size=64, seed=seed, device="cpu"), variant="no-distill", on_epoch_end=tr.on_epoch)
    tr.finish()
    return run


# --------------------------------------------------------------------------- tracking


def test_training_is_tracked_live_with_honest_params(home: Path, tiny_dataset: Path) -> None:
    import mlflow

    run = _tracked_run(tiny_dataset, home / "runs" / "s")
    run_id = tracking.find_run(run)
    client = mlflow.MlflowClient()
    r = client.get_run(run_id)
    assert r.data.params["data.provenance"] == "synthetic" and r.data.params["data.synthetic"] == "True"
    assert r.data.params["extractor.video"] == "none (synthetic features)"
    assert r.data.params["data.manifest_hash"] == json.loads((run / "config.json").read_text())["data"]["manifest_hash"]
    assert r.data.params["code_version"].startswith("0.1.0") and r.data.tags["deccm.synthetic"] == "true"
    assert [m.step for m in client.get_metric_history(run_id, "val")] == [0, 1, 2]  # one point per epoch, logged live
    assert {"run/config.json", "run/best.pt"} <= {f.path for f in client.list_artifacts(run_id, "run")}
    assert str(tracking.tracking_uri()).endswith(str(home / "mlflow" / "mlflow.db"))

    # deccm.evaluate's figures land on the same run
    out = subprocess.run([sys.executable, "-m", "deccm.evaluate", str(run), "--bootstrap", "0"], capture_output=True, text=True,
                         env={**os.environ})
    assert out.returncode == 0, out.stderr
    assert f"MLflow run {run_id}" in out.stdout
    assert client.get_run(run_id).data.metrics["eval.test_oracle.HR_w_at_10"] >= 0


# --------------------------------------------------------------------------- registry


def test_registered_champion_loads_in_a_fresh_process_and_ranks_like_its_checkpoint(home: Path, tiny_dataset: Path) -> None:
    from deccm.data import load_dataset
    from deccm.serve import Recommender

    run = _tracked_run(tiny_dataset, home / "runs" / "s")
    v = registry.register(run, {"challenger": {"val": {"HR_w@10": 0.3, "genre_KL@10": 0.2}}})
    assert registry.register(run) == v  # the same weights: the same version
    registry.promote(v, "test")
    ds = load_dataset(tiny_dataset)
    feats = np.asarray(ds.ugc.video_features[ds.ugc.test.video[:6]], dtype=np.float32)
    want, _ = Recommender.from_run(run, device="cpu").rank_features(feats, k=7)
    code = textwrap.dedent(f"""
        import json, sys
        import numpy as np, pandas as pd, mlflow
        mlflow.set_tracking_uri({tracking.tracking_uri()!r})
        model = mlflow.pyfunc.load_model("models:/deccm-student@champion", dst_path=sys.argv[2])  # not a stray temp dir
        feats = np.load(sys.argv[1])
        out = model.predict(pd.DataFrame({{"features": [f.tolist() for f in feats]}}), params={{"k": 7}})
        print(json.dumps([list(map(int, t)) for t in out["track_ids"]]))
    """)
    np.save(home / "feats.npy", feats)
    (home / "pyfunc").mkdir()
    r = subprocess.run([sys.executable, "-c", code, str(home / "feats.npy"), str(home / "pyfunc")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads(r.stdout.strip().splitlines()[-1]) == want.tolist()

    rec = registry.load_champion(device="cpu")
    assert rec.card["registry"]["version"] == v and "champion" in rec.card["registry"]["aliases"]
    assert rec.card["trained_on"]["synthetic"] is True
    assert "SYNTHETIC" in rec.card["trained_on"]["note"] and rec.card["evaluation"]["challenger"]["val"]["HR_w@10"] == 0.3
    np.testing.assert_array_equal(rec.rank_features(feats, k=7)[0], want)
    # downloaded once: the next load (an evaluation, a demo start) reads the same copy under the state dir
    cached = sorted((home / "cache" / "models").iterdir())
    assert len(cached) == 1 and (cached[0] / ".complete").is_file()
    stamp = (cached[0] / ".complete").stat().st_mtime_ns
    again = registry.load(v, device="cpu")
    assert sorted((home / "cache" / "models").iterdir()) == cached and (cached[0] / ".complete").stat().st_mtime_ns == stamp
    np.testing.assert_array_equal(again.rank_features(feats, k=7)[0], want)


def test_aliases_promote_and_rollback(home: Path, tiny_dataset: Path) -> None:
    with pytest.raises(registry.RegistryError, match="no deccm-student@champion .*make pipeline"):
        registry.load_champion()
    v1 = registry.register(_tracked_run(tiny_dataset, home / "runs" / "a", seed=2, epochs=1))
    v2 = registry.register(_tracked_run(tiny_dataset, home / "runs" / "b", seed=3, epochs=1))
    assert (v1, v2) == ("1", "2")
    with pytest.raises(registry.RegistryError, match="no champion to roll back"):
        registry.rollback()
    registry.promote(v1)
    registry.promote(v2)
    rows = {r["version"]: r for r in registry.list_versions()}
    assert rows["2"]["aliases"] == ["challenger", "champion"] and rows["1"]["aliases"] == []
    assert registry.rollback() == "1" and registry.champion_version() == "1"
    with pytest.raises(registry.RegistryError, match="no version 9"):
        registry.promote("9")
    r = subprocess.run([sys.executable, "-m", "deccm.cli", "registry", "list"], capture_output=True, text=True)
    assert r.returncode == 0 and "v2" in r.stdout and "champion" in r.stdout.splitlines()[1]
    r = subprocess.run([sys.executable, "-m", "deccm.cli", "registry", "promote", "2"], capture_output=True, text=True)
    assert r.returncode == 0 and registry.champion_version() == "2"


# --------------------------------------------------------------------------- the state machine (docs/architecture.md)


def test_rolled_back_and_rejected_versions_are_not_promoted_again_until_cleared(home: Path, tiny_dataset: Path) -> None:
    v1 = registry.register(_tracked_run(tiny_dataset, home / "runs" / "a", seed=2, epochs=1))
    v2 = registry.register(_tracked_run(tiny_dataset, home / "runs" / "b", seed=3, epochs=1))
    registry.promote(v1)
    assert registry.promote(v2, "gate", expected_champion="1") == []  # the compare-and-swap sees the champion it expects
    assert registry.promote(v2, "gate", expected_champion="1") == []  # a retried task: already done, not "moved"
    assert registry.rollback() == "1" and registry.blocked("2").startswith("rolled back")
    with pytest.raises(registry.RegistryError, match="version 2 is not promoted automatically .*registry clear 2"):
        registry.promote("2", "gate", expected_champion="1")
    assert registry.champion_version() == "1"
    r = subprocess.run([sys.executable, "-m", "deccm.cli", "registry", "list"], capture_output=True, text=True)
    assert r.returncode == 0 and "[no auto-promote: rolled back" in r.stdout
    # a person may still promote it, and is told what that overrides
    r = subprocess.run([sys.executable, "-m", "deccm.cli", "registry", "promote", "2"], capture_output=True, text=True)
    assert r.returncode == 0 and "overrides deccm.no_auto_promote: rolled back" in r.stdout and registry.champion_version() == "2"
    registry.rollback()
    r = subprocess.run([sys.executable, "-m", "deccm.cli", "registry", "clear", "2"], capture_output=True, text=True)
    assert r.returncode == 0 and "the gate may promote it again" in r.stdout and registry.blocked("2") is None
    registry.promote("2", "gate", expected_champion="1")
    assert registry.champion_version() == "2"
    # a gate rejection blocks too, and sticks when a later decision on the same weights says promote
    registry.tag_decision("2", {"promote": False, "reasons": ["does not beat the champion"]})
    assert registry.blocked("2") is None  # the champion met itself on a rerun: not a rejection
    registry.tag_decision("1", {"promote": False, "reasons": ["below the floor"]})
    registry.tag_decision("1", {"promote": True, "reasons": ["beats the champion"]})
    assert registry.blocked("1").startswith("rejected by the gate")


def test_promotion_is_compare_and_swap_and_an_incomparable_champion_stays(home: Path, tiny_dataset: Path) -> None:
    import mlflow

    from deccm import pipeline

    v1 = registry.register(_tracked_run(tiny_dataset, home / "runs" / "a", seed=2, epochs=1))
    run_b = _tracked_run(tiny_dataset, home / "runs" / "b", seed=3, epochs=1)
    v2 = registry.register(run_b)
    registry.promote(v1, "manual")  # someone promoted v1 while the pipeline evaluated v2 against "no champion"
    with pytest.raises(registry.ChampionMoved, match="champion moved from version None to 1 since the evaluation"):
        registry.promote(v2, "gate", expected_champion=None)
    assert registry.champion_version() == "1"
    mv = mlflow.MlflowClient().get_model_version(registry.MODEL_NAME, v2)
    assert "champion moved" in mv.tags[registry.TAG_ABORTED] and registry.TAG_PREVIOUS not in mv.tags

    # the pipeline's register: the gate said promote, and the registry's rules keep the champion, saying why
    cfg = pipeline.make_config({"source": "synth-tiny", "device": "cpu"})
    moved = {"promote": True, "reasons": ["no comparable champion: the floors decide"], "champion_version": None,
             "evaluation": {"champion_version": None, "comparable": False}}
    out = pipeline.register(cfg, str(run_b), moved)
    assert out["champion"] == "1" and not out["promoted"] and "champion moved from version None to 1" in out["held"]
    other = {"promote": True, "reasons": ["no comparable champion: the floors decide"], "champion_version": "1",
             "evaluation": {"champion_version": "1", "comparable": False, "why_not_comparable": "trained on synthetic data"}}
    out = pipeline.register(cfg, str(run_b), other)
    assert out["champion"] == "1" and not out["promoted"]
    assert "champion v1 cannot be compared with this challenger (trained on synthetic data); a person decides" in out["held"]
    tags = mlflow.MlflowClient().get_model_version(registry.MODEL_NAME, v2).tags
    assert tags["deccm.gate"] == "kept" and "kept: champion v1 cannot be compared" in tags["deccm.gate.reasons"]
    assert registry.blocked(v2) is None  # kept for a person to decide, not rejected


def test_an_unreachable_registry_is_an_error_never_no_champion(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    from deccm import pipeline

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    with pytest.raises(registry.RegistryUnavailable, match=f"registry at http://127.0.0.1:{port} is unavailable.*Fix: start"):
        registry.champion_version()
    calls: list = []
    monkeypatch.setattr(pipeline, "run_all", lambda p=None: calls.append(p))
    with pytest.raises(registry.RegistryUnavailable):
        pipeline.ensure_champion({"source": "synth-tiny"})
    assert calls == []  # an outage never starts a training
    r = subprocess.run([sys.executable, "-m", "deccm.cli", "registry", "list"], capture_output=True, text=True)
    assert r.returncode == 2 and "is unavailable" in r.stderr


def test_a_locked_database_is_an_error_never_no_champion(home: Path, tiny_dataset: Path) -> None:
    import sqlite3

    registry.promote(registry.register(_tracked_run(tiny_dataset, home / "runs" / "a", seed=2, epochs=1)))
    db = sqlite3.connect(home / "mlflow" / "mlflow.db", timeout=0)
    db.execute("BEGIN EXCLUSIVE")  # another writer holds the database (what SQLite answers "database is locked" to)
    try:
        with pytest.raises(registry.RegistryUnavailable, match="is unavailable"):
            registry.champion_version()
    finally:
        db.rollback()
        db.close()
    assert registry.champion_version() == "1"
