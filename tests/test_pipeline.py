"""The pipeline's stage functions on a user's own media: extraction shards, assembly, teacher, student, gate, registry."""
from __future__ import annotations

import csv
import shutil
from pathlib import Path

import pytest

from deccm import pipeline, registry
from media import make_clip, make_user_media


def test_config_is_validated_with_clear_messages() -> None:
    cfg = pipeline.make_config({"source": "synth-tiny", "epochs": "3", "gate_margin": "0.01", "videos": ""})
    assert cfg["epochs"] == 3 and cfg["gate_margin"] == 0.01 and cfg["variant"] == "blend"
    # loop settings: the source's unless given (the demo corpus's ~1,000 rows need small batches)
    assert (cfg["batch_size"], cfg["lr"]) == (1024, None)
    # faithful mode reproduces the authors: their full DecCM unless a variant is named
    assert pipeline.make_config({"source": "synth-tiny", "mode": "faithful"})["variant"] == "deccm"
    assert pipeline.make_config({"source": "synth-tiny", "mode": "faithful", "variant": "plain"})["variant"] == "plain"
    demo = pipeline.make_config({"source": "demo"})
    assert (demo["variant"], demo["epochs"], demo["batch_size"], demo["lr"]) == ("plain", 200, 128, 1e-3)
    # the demo's encoders weigh each feature block equally (docs/results.md, the demo corpus); others do not
    assert demo["balance_blocks"] is True and cfg["balance_blocks"] is False
    mine = pipeline.make_config({"source": "demo", "batch_size": "64", "epochs": 7, "variant": "no-deconf", "balance_blocks": "false"})
    assert (mine["variant"], mine["epochs"], mine["batch_size"], mine["lr"], mine["balance_blocks"]) == ("no-deconf", 7, 64, 1e-3, False)
    with pytest.raises(ValueError, match="balance_blocks='maybe' is refused: it must be true or false"):
        pipeline.make_config({"balance_blocks": "maybe"})
    with pytest.raises(ValueError, match="unknown pipeline settings \\['epoch'\\]"):
        pipeline.make_config({"epoch": 3})
    with pytest.raises(ValueError, match="source 'media' needs videos, tracks, logs, tracks_meta"):
        pipeline.make_config({"source": "media"})
    with pytest.raises(ValueError, match="source='web' is refused: choose one of synth-tiny"):
        pipeline.make_config({"source": "web"})


def test_distilling_variants_train_without_distillation_when_no_teacher_exists(tiny_dataset: Path,
                                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    seen = {}

    class Stop(Exception):
        pass

    def fake_train(kind, data, out, mcfg, tcfg, teacher=None, variant="deccm", **kw):  # noqa: ANN001, ANN003, ANN202
        seen.update(kind=kind, distill=mcfg.distill, erase=mcfg.erase_taste, variant=variant, teacher=teacher,
                    balance=mcfg.balance_blocks)
        raise Stop

    monkeypatch.setattr(pipeline, "train", fake_train)
    for variant, trained, erase, balance in (("no-deconf", "plain", False, False), ("erased", "erased", True, True),
                                             ("blend", "erased", True, False)):  # no PGC: no content view, no ridge part
        cfg = pipeline.make_config({"source": "synth-tiny", "variant": variant, "balance_blocks": balance})
        with pytest.raises(Stop):
            pipeline.train_student(cfg, str(tiny_dataset), None)
        assert seen == {"kind": "student", "distill": "off", "erase": erase, "variant": trained, "teacher": None, "balance": balance}


@pytest.mark.slow
def test_media_pipeline_end_to_end_and_idempotent(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DECCM_HOME", str(tmp_path / "home"))
    media = tmp_path / "media"
    media.mkdir()
    make_user_media(media)
    (media / "pgc").mkdir()
    pairs = []
    for i in range(24):  # professionally edited segments, each made for a track
        make_clip(media / "pgc" / f"seg-{i:02d}.mp4", duration=1.0, source=("testsrc2", "smptebars", "mandelbrot")[i % 3], audio=None)
        pairs.append({"segment": f"seg-{i:02d}", "track": f"track-{(i * 4) % 104:03d}"})
    with open(media / "pgc_pairs.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["segment", "track"])
        w.writeheader()
        w.writerows(pairs)
    params = {"source": "media", "videos": media / "clips", "tracks": media / "tracks", "logs": media / "pairs.csv",
              "tracks_meta": media / "tracks.csv", "pgc": media / "pgc", "pgc_pairs": media / "pgc_pairs.csv",
              "epochs": 8, "batch_size": 32, "shards": 2, "gate_floor": 0.0, "device": "cpu"}
    first = pipeline.run_all(params)
    assert first["promoted"] and first["champion"] == first["version"] == "1" and first["teacher"] is not None
    assert registry.load_champion(device="cpu").extractor is not None  # real media: a clip can be ranked

    cfg = pipeline.make_config(params)
    shards = pipeline.plan_shards(cfg)
    assert sorted({s["kind"] for s in shards}) == ["music", "pgc", "videos"] and len(shards) == 6
    from deccm.features import load_store

    for shard in shards:  # a rerun of extraction does no repeated work
        store = load_store(pipeline.extract_shard(cfg, shard))
        assert store.run["extracted"] == 0 and store.run["cached"] == len(shard["ids"])

    teacher_state = (Path(first["teacher"]) / "state.pt").stat().st_mtime_ns
    student_state = (Path(first["run"]) / "state.pt").stat().st_mtime_ns
    again = pipeline.run_all(params)  # nothing new: no training, the same version, champion unchanged
    assert again["run"] == first["run"] and again["version"] == "1" and again["champion"] == "1" and not again["promoted"]
    assert (Path(first["teacher"]) / "state.pt").stat().st_mtime_ns == teacher_state
    assert (Path(first["run"]) / "state.pt").stat().st_mtime_ns == student_state

    with open(media / "pairs.csv", "a", newline="") as f:  # new uploads: the UGC changes, the PGC does not
        f.write("clip-001,track-050,u1\n")
    third = pipeline.run_all(params)
    assert third["data"] == first["data"] and third["run"] != first["run"]  # new data, new student
    assert third["teacher"] == first["teacher"] and (Path(first["teacher"]) / "state.pt").stat().st_mtime_ns == teacher_state


@pytest.mark.slow
def test_ensure_champion_runs_the_pipeline_only_when_none_is_registered(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DECCM_HOME", str(tmp_path / "home"))
    # the real gate (default floor 0.15): these settings reach val HR_w@10 ~0.23 on synth-tiny (tests/test_dag.py)
    params = {"source": "synth-tiny", "epochs": 8, "teacher_epochs": 1, "lr": 1e-2, "variant": "no-deconf", "device": "cpu"}
    assert pipeline.DEFAULTS["gate_floor"] == 0.15 and pipeline.ensure_champion(params) == "1"
    versions = lambda: [(v["version"], v["aliases"]) for v in registry.list_versions()]  # noqa: E731
    assert versions() == [("2", ["baseline"]), ("1", ["challenger", "champion"])]  # the ridge baseline beside it
    calls = []
    monkeypatch.setattr(pipeline, "run_all", lambda p=None: calls.append(p))
    assert pipeline.ensure_champion(params) == "1" and calls == []  # a champion and a baseline exist: nothing runs
    assert versions() == [("2", ["baseline"]), ("1", ["challenger", "champion"])]

    # an older install: a champion, no baseline and no baseline run. Ensuring fits and registers one, champion untouched
    import mlflow

    client = mlflow.MlflowClient()
    baseline_run = Path(client.get_model_version(registry.MODEL_NAME, "2").tags["deccm.run_dir"])
    client.delete_model_version(registry.MODEL_NAME, "2")
    shutil.rmtree(baseline_run)
    assert pipeline.ensure_champion(params) == "1" and calls == []
    assert versions() == [("3", ["baseline"]), ("1", ["challenger", "champion"])] and (baseline_run / "best.pt").is_file()
    assert registry.load("baseline", device="cpu", extractor=False).card["purpose"]["why"] == pipeline.BASELINE_PURPOSE

    # one registry serves one catalog: asking it for another source's demo names the fix instead of serving the wrong one
    with pytest.raises(registry.RegistryError, match=r"trained on synthetic data.*'recorded'.*state dir of its own"):
        pipeline.ensure_champion({**params, "source": "recorded"})
    assert calls == [] and versions() == [("3", ["baseline"]), ("1", ["challenger", "champion"])]


def test_other_settings_get_their_own_runs_and_tracking_follows_the_state_dir(tmp_path: Path,
                                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    from deccm import tracking

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("DECCM_HOME", str(tmp_path / "a"))
    tracking.setup()
    assert "MLFLOW_TRACKING_URI" not in os.environ  # MLflow exports it; deccm does not let it pin later state dirs
    monkeypatch.setenv("DECCM_HOME", str(tmp_path / "b"))
    assert tracking.tracking_uri().endswith(str(tmp_path / "b" / "mlflow" / "mlflow.db"))

    cfg_a = pipeline.make_config({"source": "synth-tiny", "epochs": 1, "batch_size": 64, "variant": "plain", "device": "cpu"})
    cfg_b = {**cfg_a, "batch_size": 32}
    data = pipeline.prepare_data(cfg_a)
    assert pipeline.train_teacher(cfg_a, data) is None  # plain matching distils from nothing: no teacher is trained
    run_a = pipeline.train_student(cfg_a, data, None)
    stamp = (Path(run_a) / "state.pt").stat().st_mtime_ns
    run_b = pipeline.train_student(cfg_b, data, None)
    assert run_a != run_b and (Path(run_a) / "state.pt").stat().st_mtime_ns == stamp
    assert pipeline.train_student(cfg_a, data, None) == run_a and (Path(run_a) / "state.pt").stat().st_mtime_ns == stamp


def test_scheduled_runs_take_their_source_from_deployment_config(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(pipeline.ENV_SOURCE, raising=False)
    with pytest.raises(ValueError, match="DECCM_SOURCE is not set: a scheduled run does not guess its data. Fix: set"):
        pipeline.scheduled_source()
    assert pipeline.make_config({})["source"] == "demo"  # local runs (make pipeline, make demo) keep the demo corpus
    monkeypatch.setenv(pipeline.ENV_SOURCE, "synth-tiny")
    assert pipeline.scheduled_source() == "synth-tiny" and pipeline.make_config({})["source"] == "synth-tiny"
    assert pipeline.make_config({"source": "demo-tiny"})["source"] == "demo-tiny"  # a named source wins
    monkeypatch.setenv(pipeline.ENV_SOURCE, "web")
    with pytest.raises(ValueError, match="DECCM_SOURCE='web' is unknown"):
        pipeline.scheduled_source()
