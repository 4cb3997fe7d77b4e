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
        model = mlflow.pyfunc.load_model("models:/deccm-student@champion")
        feats = np.load(sys.argv[1])
        out = model.predict(pd.DataFrame({{"features": [f.tolist() for f in feats]}}), params={{"k": 7}})
        print(json.dumps([list(map(int, t)) for t in out["track_ids"]]))
    """)
    np.save(home / "feats.npy", feats)
    r = subprocess.run([sys.executable, "-c", code, str(home / "feats.npy")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads(r.stdout.strip().splitlines()[-1]) == want.tolist()

    rec = registry.load_champion(device="cpu")
    assert rec.card["registry"]["version"] == v and "champion" in rec.card["registry"]["aliases"]
    assert rec.card["trained_on"]["synthetic"] is True
    assert "SYNTHETIC" in rec.card["trained_on"]["note"] and rec.card["evaluation"]["challenger"]["val"]["HR_w@10"] == 0.3
    np.testing.assert_array_equal(rec.rank_features(feats, k=7)[0], want)


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
