"""Self-contained serving bundles: audio stored by content and checked on load; a data drop never changes what a
registered version plays (docs/architecture.md, "Serving bundles")."""
from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from deccm.models import ModelConfig
from deccm.runs import RunError, TrainConfig
from deccm.serve import Recommender


def _sha(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def student(tiny_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from deccm.train import train

    return train("student", tiny_dataset, tmp_path_factory.mktemp("runs") / "s", ModelConfig.for_mode("fixed", distill="off"),
                 TrainConfig(epochs=1, batch_size=64, seed=1, device="cpu"), variant="no-distill")


def _with_audio(run: Path, media: Path) -> tuple[Recommender, dict[int, bytes]]:
    """The run's recommender with audio files for its first tracks (the synthetic preset has none); tracks 0 and 1 share
    their bytes."""
    rec = Recommender.from_run(run, device="cpu", extractor=False)
    media.mkdir()
    content = {0: b"RIFF same bytes", 1: b"RIFF same bytes", 2: b"ID3 track two", 3: b"fLaC track three"}
    for t, data in content.items():
        path = media / f"track-{t:04d}.{['wav', 'wav', 'mp3', 'flac'][t]}"
        path.write_bytes(data)
        rec.catalog.tracks[t]["audio"] = str(path)
    return rec, content


def test_bundle_stores_audio_by_content_and_plays_it_after_the_dataset_changes(student: Path, tmp_path: Path) -> None:
    rec, content = _with_audio(student, tmp_path / "media")
    bundle = rec.save_bundle(tmp_path / "bundle")
    stored = sorted(p.name for p in (bundle / "catalog" / "audio").iterdir())
    assert stored == sorted({f"{hashlib.sha256(d).hexdigest()}{ext}" for d, ext in
                             zip(content.values(), (".wav", ".wav", ".mp3", ".flac"))})  # tracks 0 and 1 share one file
    rows = json.loads((bundle / "catalog" / "catalog.json").read_text())["tracks"]
    assert rows[2] == {**rows[2], "audio": f"audio/{hashlib.sha256(content[2]).hexdigest()}.mp3",
                       "sha256": hashlib.sha256(content[2]).hexdigest()}
    assert rows[5]["audio"] == "" and rows[5]["sha256"] == ""  # a track without audio stays without

    for t in content:  # a data drop: other audio under the same names
        Path(rec.catalog.tracks[t]["audio"]).write_bytes(b"a later drop " + bytes([t]))
    served = Recommender.from_bundle(bundle, device="cpu", extractor=False)
    assert served.catalog.audio_root == (bundle / "catalog" / "audio").resolve()
    for t, data in content.items():
        audio = served.suggestion(1, t, 0.0).audio
        assert audio is not None and Path(audio).is_relative_to(served.catalog.audio_root)
        assert Path(audio).read_bytes() == data
    assert served.suggestion(1, 5, 0.0).audio is None


def test_a_damaged_bundle_names_the_track_and_the_fix(student: Path, tmp_path: Path) -> None:
    rec, content = _with_audio(student, tmp_path / "media")
    bundle = rec.save_bundle(tmp_path / "bundle")
    title = rec.catalog.tracks[2]["title"]
    (bundle / "catalog" / "audio" / f"{hashlib.sha256(content[2]).hexdigest()}.mp3").write_bytes(b"tampered")
    with pytest.raises(RunError, match=rf"track 2 \('{title}'\).*has sha256 .*the catalog records .*Fix: download the "
                                       "registered version again, or register its run again"):
        Recommender.from_bundle(bundle, device="cpu", extractor=False)
    (bundle / "catalog" / "audio" / f"{hashlib.sha256(content[2]).hexdigest()}.mp3").unlink()
    with pytest.raises(RunError, match=r"track 2 .*is missing\. Fix:"):
        Recommender.from_bundle(bundle, device="cpu", extractor=False)

    meta = json.loads((bundle / "catalog" / "catalog.json").read_text())  # a row pointing out of the bundle
    meta["tracks"][2]["audio"] = "audio/../../../../etc/passwd"
    (bundle / "catalog" / "catalog.json").write_text(json.dumps(meta))
    with pytest.raises(RunError, match=r"track 2 .*not audio/<its sha256>\.<ext>"):
        Recommender.from_bundle(bundle, device="cpu", extractor=False)

    rec.catalog.tracks[3]["audio"] = str(tmp_path / "media" / "gone.flac")
    with pytest.raises(RunError, match=r"track 3 .*cannot read its audio .*gone\.flac.*Fix: restore the dataset's media"):
        rec.save_bundle(tmp_path / "bundle")
    assert (bundle / "catalog" / "catalog.json").is_file()  # the failed export left the previous bundle in place


def test_a_bundle_from_before_hashes_still_loads_with_a_warning(student: Path, tmp_path: Path,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    rec, content = _with_audio(student, tmp_path / "media")
    bundle = rec.save_bundle(tmp_path / "bundle")
    shutil.rmtree(bundle / "catalog" / "audio")
    meta = json.loads((bundle / "catalog" / "catalog.json").read_text())
    meta["tracks"] = rec.catalog.tracks  # the old layout: absolute dataset paths, no sha256
    (bundle / "catalog" / "catalog.json").write_text(json.dumps(meta))
    with caplog.at_level(logging.WARNING, logger="deccm.serve"):
        old = Recommender.from_bundle(bundle, device="cpu", extractor=False)
    assert "before content-hashed audio" in caplog.text and "Fix: register the run again" in caplog.text
    assert old.catalog.audio_root is None and old.suggestion(1, 2, 0.0).audio == rec.catalog.tracks[2]["audio"]
    np.testing.assert_array_equal(old.catalog.vectors, rec.catalog.vectors)


# --------------------------------------------------------------------------- fault: a data drop while the demo serves

SERVE = textwrap.dedent("""
    import hashlib, json, sys
    from deccm import demo

    service = demo.DemoService(device="cpu", comparison=False)  # the champion, loaded from the registry as the app does
    print(json.dumps({"version": service.rec.card["registry"]["version"]}), flush=True)
    for line in sys.stdin:  # one clip per line: the top track and the sha256 of the bytes its player's moment is cut from
        page = service.respond(line.strip(), 3)
        if page.error:
            print(json.dumps({"error": page.error}), flush=True)
            continue
        top = page.result.suggestions[0]
        source = service.served.audio[service.rec.catalog.tracks[top.track]["audio"]]  # the checked file it was cut from
        assert top.moment and top.audio.endswith(".wav"), top  # the player plays the moment rendered from it
        with open(source, "rb") as f:
            print(json.dumps({"track": top.track, "title": top.title, "sha256": hashlib.sha256(f.read()).hexdigest()}),
                  flush=True)
""")


def _drop(data: Path) -> None:
    """A new data drop that reuses positions: every track file gets another track's audio under the same name."""
    files = sorted((data / "media" / "tracks").glob("*.mp3"))
    content = [f.read_bytes() for f in files]
    for f, new in zip(files, content[1:] + content[:1]):
        f.write_bytes(new)


@pytest.mark.slow
def test_fault_data_drop_while_the_demo_serves_keeps_the_served_audio(tiny_corpus: Path, tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from deccm import registry
    from deccm.train import train

    monkeypatch.setenv("DECCM_HOME", str(tmp_path / "home"))  # a private MLflow (SQLite) registry
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    data = tmp_path / "data" / "demo"
    shutil.copytree(tiny_corpus, data)
    run = train("student", data, tmp_path / "runs" / "s", ModelConfig.for_mode("fixed", distill="off"),
                TrainConfig(epochs=1, batch_size=64, seed=1, device="cpu"), variant="no-distill")
    registry.promote(registry.register(run), "test")
    with open(data / "tracks.csv", newline="") as f:
        paths = {int(r["id"]): data / r["path"] for r in csv.DictReader(f)}
    before = {t: _sha(p) for t, p in paths.items()}
    clip = str(sorted((data / "media" / "clips").rglob("*.mp4"))[0])

    demo = subprocess.Popen([sys.executable, "-c", SERVE], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=os.environ)
    try:
        assert json.loads(demo.stdout.readline() or "{}").get("version") == "1", demo.stderr.read()[-3000:]
        _drop(data)  # while the demo serves: nothing of this track has been played yet
        demo.stdin.write(f"{clip}\n")
        demo.stdin.flush()
        served = json.loads(demo.stdout.readline() or "{}")
    finally:
        demo.stdin.close()
        demo.wait(timeout=120)
    assert "track" in served, served
    track = served["track"]
    assert _sha(paths[track]) != before[track]  # the drop did replace this track's file under its name
    assert served["sha256"] == before[track]  # the running demo still plays the bytes the version was registered with

    # a fresh process after the drop (a restart, a rollback to this version): the same track, the same bytes
    again = subprocess.run([sys.executable, "-c", SERVE], input=f"{clip}\n", capture_output=True, text=True, timeout=600,
                           env=os.environ)
    assert again.returncode == 0, again.stderr[-3000:]
    assert json.loads(again.stdout.splitlines()[-1]) == served


# --------------------------------------------------------------------------- the deployable MLflow model

PREDICT = textwrap.dedent("""
    import importlib.util, json, sys
    import numpy as np, pandas as pd, mlflow.pyfunc

    model = mlflow.pyfunc.load_model(sys.argv[1])
    out = model.predict(pd.DataFrame({"features": [f.tolist() for f in np.load(sys.argv[2])]}), params={"k": 7})
    import deccm
    print(json.dumps({"ids": [list(map(int, t)) for t in out["track_ids"]], "deccm": deccm.__file__,
                      "absent": [m for m in ("airflow", "gradio", "av", "torchvision", "sqlalchemy")
                                 if importlib.util.find_spec(m) is None]}))
""")


def test_serving_requirements_are_the_serve_extra_and_pinned_like_constraints() -> None:
    import tomllib

    from deccm import registry

    root = Path(__file__).parents[1]
    extra = tomllib.loads((root / "pyproject.toml").read_text())["project"]["optional-dependencies"]["serve"]
    assert registry.serving_requirements() == extra
    assert set(extra) <= set((root / "constraints.txt").read_text().split())
    assert not [r for r in extra if r.split("==")[0] in ("apache-airflow", "gradio", "av", "torchvision", "mlflow")]


def _venv_of(requirements: list[str], dest: Path) -> Path:
    """A fresh venv (no system site-packages) holding exactly ``requirements`` and their dependencies.

    Offline, the distributions are taken from this environment instead of an index: each pin must match what is
    installed here, and every file its RECORD lists is linked into the venv, so nothing else (deccm, Airflow,
    Gradio) is importable there.
    """
    from importlib.metadata import PackageNotFoundError, distribution

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(dest)], check=True)
    site = dest / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"
    todo, seen = [Requirement(r) for r in requirements], set()
    top = {canonicalize_name(Requirement(r).name) for r in requirements}
    while todo:
        req = todo.pop()
        key = (canonicalize_name(req.name), frozenset(req.extras))
        if key in seen:
            continue
        seen.add(key)
        try:
            dist = distribution(req.name)
        except PackageNotFoundError:
            pytest.fail(f"{req} is required but not installed here")
        if key[0] in top:
            assert req.specifier.contains(dist.version), f"the model pins {req}; this environment has {dist.version}"
        for f in dist.files or []:
            if f.parts[0] in ("..", "__pycache__"):
                continue
            link = site / f
            if not link.exists():
                link.parent.mkdir(parents=True, exist_ok=True)
                link.symlink_to(Path(str(dist.locate_file(f))).resolve())
        for dep in dist.requires or []:
            d = Requirement(dep)
            if d.marker is None or any(d.marker.evaluate({"extra": e}) for e in {"", *req.extras}):
                todo.append(d)
    return dest / "bin" / "python"


@pytest.mark.slow
def test_registered_model_in_a_fresh_venv_of_its_own_requirements_ranks_like_the_checkpoint(
        student: Path, tiny_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import mlflow

    from deccm import registry, tracking
    from deccm.data import load_dataset

    monkeypatch.setenv("DECCM_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    v = registry.register(student, {"challenger": {"val": {"HR_w@10": 0.3, "genre_KL@10": 0.2}, "test": {"HR_w@10": 0.25}}})
    client = mlflow.MlflowClient(tracking.tracking_uri())
    mv = client.get_model_version(registry.MODEL_NAME, v)
    assert mv.description.startswith(f"### Model card: {registry.MODEL_NAME} version {v}") and "SYNTHETIC" in mv.description
    metrics = {m.key: m.value for m in client.get_logged_model(mv.source.removeprefix("models:/")).metrics}
    assert metrics == {"val.HR_w_at_10": 0.3, "val.genre_KL_at_10": 0.2, "test.HR_w_at_10": 0.25}
    assert not [k for k in mv.tags if k.startswith("metric.")]  # figures are metrics now, not string tags
    assert registry.list_versions()[0]["metrics"] == {"val.HR_w_at_10": "0.3000", "val.genre_KL_at_10": "0.2000",
                                                      "test.HR_w_at_10": "0.2500"}

    model = Path(mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{registry.MODEL_NAME}/{v}",
                                                     dst_path=str(tmp_path / "model")))
    requirements = [r for r in (model / "requirements.txt").read_text().splitlines() if r and not r.startswith("#")]
    assert requirements == registry.serving_requirements()
    pinned = set((Path(__file__).parents[1] / "constraints.txt").read_text().split())
    assert set(requirements) <= pinned, set(requirements) - pinned  # the same pins as the project's environment
    assert (model / "code" / "deccm" / "serve.py").is_file()  # the package travels with the model

    python = _venv_of(requirements, tmp_path / "venv")
    ds = load_dataset(tiny_dataset)
    feats = np.asarray(ds.ugc.video_features[ds.ugc.test.video[:6]], dtype=np.float32)
    np.save(tmp_path / "feats.npy", feats)
    want, _ = Recommender.from_run(student, device="cpu", extractor=False).rank_features(feats, k=7)
    env = {k: val for k, val in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    r = subprocess.run([str(python), "-c", PREDICT, str(model), str(tmp_path / "feats.npy")], capture_output=True, text=True,
                       env=env, cwd=tmp_path, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    got = json.loads(r.stdout.strip().splitlines()[-1])
    assert got["ids"] == want.tolist()
    assert Path(got["deccm"]).is_relative_to(model)  # deccm came from the model's code_paths, not an installation
    assert got["absent"] == ["airflow", "gradio", "av", "torchvision", "sqlalchemy"]
