"""The demo: deccm.demo's logic on real media, the Gradio app through gradio_client and in a real browser.

No mocks. The fast tests use ffmpeg-made clips and a tiny synthetic run. The slow ones share
one module fixture: the tiny demo corpus (real media) in a private DECCM_HOME, registered as
a fresh ``make demo`` leaves it (``pipeline.ensure_champion``: v1 the champion, v2 the ridge
baseline beside it), plus v3, another student, registered and not promoted (the tests that
promote and roll back use it); one app serves both the API and the browser tests.

The browser test drives Debian's chromium (``apt-get install -y --no-install-recommends
chromium``); it fails, never skips, when it is missing. ``DECCM_SCREENSHOT=1`` saves its
screenshot (of the tiny rendered corpus) as docs/demo.png; the README's picture is of a first
``make demo`` on the recorded catalog.
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import av
import numpy as np
import pytest

import hostile
import media
from deccm import demo, upload

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = Path("/usr/bin/chromium")

_one_torch_thread = pytest.fixture(autouse=True, scope="module")(media.one_torch_thread)


def _app_module() -> Any:
    """demo/app.py as a module (it is a script, not part of the package)."""
    import importlib.util

    if "deccm_demo_app" not in sys.modules:
        spec = importlib.util.spec_from_file_location("deccm_demo_app", ROOT / "demo" / "app.py")
        assert spec is not None and spec.loader is not None
        sys.modules["deccm_demo_app"] = module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    return sys.modules["deccm_demo_app"]


def _streams(path: Path) -> dict[str, Any]:
    with av.open(str(path)) as c:
        return {"video": [s.codec_context.name for s in c.streams.video], "audio": [s.codec_context.name for s in c.streams.audio],
                "duration": c.duration / av.time_base, "format": c.format.name}


# --------------------------------------------------------------------------- uploads (fast: ffmpeg media only)


def test_bad_uploads_get_clear_messages(tmp_path: Path) -> None:
    def refused(path: Any, **kw: Any) -> str:
        with pytest.raises(upload.DemoError) as e:
            upload.check_upload(path, **kw)
        return str(e.value)

    assert "No clip was uploaded" in refused(None)
    assert "missing.mp4: the uploaded file is missing" in refused(tmp_path / "missing.mp4")
    (tmp_path / "empty.mp4").write_bytes(b"")
    assert refused(tmp_path / "empty.mp4").startswith("empty.mp4 is an empty file (0 bytes)")
    (tmp_path / "notes.mp4").write_text("my holiday notes, not a video\n")
    assert refused(tmp_path / "notes.mp4") == ("notes.mp4 is not a usable video: not a media file (looks like text). "
                                               "Upload a video file (mp4, mov, webm …).")
    media.make_audio(tmp_path / "song.m4a", duration=1.0)
    assert "song.m4a is not a usable video: no video stream" in refused(tmp_path / "song.m4a")
    clip = media.make_clip(tmp_path / "clip.mp4", duration=2.0)
    media.truncate(clip, tmp_path / "cut.mp4", 0.4)
    assert "cut.mp4 is not a usable video: truncated or corrupt MP4/MOV file" in refused(tmp_path / "cut.mp4")
    media.run_ffmpeg(["-f", "lavfi", "-i", "testsrc2=size=64x48", "-frames:v", "1", str(tmp_path / "still.png")])
    assert refused(tmp_path / "still.png").startswith("still.png is not a usable video: a PNG image (a still image; accepted: ")
    size = clip.stat().st_size
    msg = refused(clip, max_bytes=size - 1)
    assert msg.startswith(f"clip.mp4 is {size / 1e3:.1f} kB: the demo takes clips up to {(size - 1) / 1e3:.1f} kB")

    ok = upload.check_upload(clip)
    assert ok.name == "clip.mp4" and ok.bytes == size and not ok.capped and ok.notes == () and abs(ok.duration - 2.0) < 0.15


def test_a_long_clip_is_not_refused_its_first_seconds_are_used(tmp_path: Path) -> None:
    clip = media.make_clip(tmp_path / "long.mp4", duration=6.0)
    up = upload.check_upload(clip, max_seconds=2.5)
    assert up.capped and up.used_seconds == 2.5 and up.notes == ("the clip is 6.0 s long: used the first 2.5 s",)
    first = upload.first_seconds(up, 2.5, tmp_path)
    assert abs(_streams(first)["duration"] - 2.5) < 0.3 and _streams(first)["audio"] == []


def _heavy(tmp: Path) -> Path:
    """1080p at 60 fps for 7 s: a phone's clip, legitimate and slow to decode (2 cores decode ~130 such frames a second)."""
    return media.make_clip(tmp / "phone.mp4", duration=7.0, size="1920x1080", rate=60, audio=None)


def _stateless(tmp: Path) -> Path:
    """6 s of Matroska written to a pipe, as a live recorder writes it: the container never states its length."""
    out = tmp / "live.mkv"
    out.write_bytes(subprocess.run([media.ffmpeg_exe(), "-v", "error", "-f", "lavfi", "-i", "testsrc2=size=320x240:rate=25:d=6",
                                    "-c:v", "libx264", "-preset", "ultrafast", "-f", "matroska", "pipe:1"],
                                   capture_output=True, check=True).stdout)
    return out


def test_a_heavy_clip_is_ranked_on_the_part_its_decoding_budget_covers_and_a_hopeless_one_refused(tmp_path: Path) -> None:
    up = upload.check_upload(_heavy(tmp_path))
    per_s = 1920 * 1080 * 60
    assert up.capped and up.duration == pytest.approx(7.0, abs=0.05)
    assert up.used_seconds * per_s <= upload.DECODE_BUDGET_PX < (up.used_seconds + 0.1) * per_s  # as much as fits, in 0.1 s
    assert up.used_seconds >= upload.MIN_RANKED_S and up.notes == (
        f"1920x1080 at 60 fps takes long to decode: used the first {up.used_seconds:g} s (a version with fewer pixels or "
        f"frames per second is ranked on up to {upload.MAX_SECONDS:g} s)",)
    small = upload.check_upload(media.make_clip(tmp_path / "small.mp4", duration=3.0, size="640x360", rate=30))
    assert not small.capped and small.used_seconds == pytest.approx(3.0, abs=0.05)  # a usual clip is ranked whole
    hopeless = media.make_clip(tmp_path / "uhd240.mp4", duration=0.3, size="3840x2160", rate=240, audio=None)
    with pytest.raises(upload.DemoError, match=r"uhd240.mp4 is too heavy to decode here: 3840x2160 pixels at 240 frames"):
        upload.check_upload(hopeless)
    live = upload.check_upload(_stateless(tmp_path))
    assert live.duration is None and live.used_seconds is None and live.capped


# --------------------------------------------------------------------------- preview (fast)


def test_preview_lays_the_track_under_the_clip(tmp_path: Path) -> None:
    clip = media.make_clip(tmp_path / "clip.webm", duration=3.0, size="320x240", audio=440.0)  # VP8 + Vorbis in, H.264 + AAC out
    track = media.make_audio(tmp_path / "track.wav", duration=2.0, audio=880.0)
    long_track = media.make_audio(tmp_path / "long.ogg", duration=5.0, audio=660.0)
    out = tmp_path / "previews"
    for audio, max_seconds, want in ((track, 60.0, 2.0), (long_track, 60.0, 3.0), (long_track, 1.5, 1.5)):
        t = time.perf_counter()
        p = upload.preview(clip, audio, out, max_seconds=max_seconds)
        took = time.perf_counter() - t
        s = _streams(p)
        assert p.suffix == ".mp4" and p.parent == out and s["format"].startswith("mov,mp4")
        assert s["video"] == ["h264"] and s["audio"] == ["aac"], s
        assert abs(s["duration"] - want) < 0.15, (audio.name, max_seconds, s["duration"])
        assert took < 20
    with av.open(str(upload.preview(clip, track, out))) as c:  # the track replaced the clip's own 440 Hz sine
        x = np.concatenate([f.to_ndarray().mean(axis=0) for f in c.decode(audio=0)])
        rate = c.streams.audio[0].rate
    peak = int(np.argmax(np.abs(np.fft.rfft(x[:rate]))))  # 1 s of samples: bin k is k Hz
    assert abs(peak - 880) < 10, peak
    assert sorted(f.name for f in out.iterdir() if f.name.startswith(".")) == []  # no temp file left behind
    again = upload.preview(clip, track, out)
    assert again == upload.preview(clip, track, out) and len(list(out.iterdir())) == 3  # same inputs: the same file
    with pytest.raises(upload.DemoError, match="no audio file for this track"):
        upload.preview(clip, None, out)


# --------------------------------------------------------------------------- the model card and a synthetic model (fast)


@pytest.fixture(scope="module")
def synthetic_rec(tiny_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Any:
    from deccm.models import ModelConfig
    from deccm.runs import TrainConfig
    from deccm.serve import Recommender
    from deccm.train import train

    run = train("student", tiny_dataset, tmp_path_factory.mktemp("runs") / "s", ModelConfig.for_mode("fixed", distill="off"),
                TrainConfig(epochs=1, batch_size=64, seed=2, device="cpu"), variant="no-distill")
    return Recommender.from_run(run, device="cpu")


def test_card_markdown_says_synthetic_loudly_and_shows_the_figures(synthetic_rec: Any) -> None:
    from deccm import registry

    evaluation = {"challenger": {"val": {"HR_w@10": 0.31, "genre_KL@10": 0.42, "top_genre_share@10": 0.5, "MedR": 12.0},
                                 "test": {"HR_w@10": 0.29, "genre_KL@10": 0.40}}}
    card = {**registry.model_card(synthetic_rec, evaluation),
            "registry": {"name": "deccm-student", "version": "7", "aliases": ["champion"], "previous_champion": "5"}}
    md = demo.card_markdown(card)
    assert "**⚠ SYNTHETIC DATA.**" in md and "SYNTHETIC features (no media)" in md
    assert "### Model card: deccm-student version 7 (alias champion)" in md and "previous champion: v5" in md
    assert "| HR_w@10 | 0.3100 | 0.2900 |" in md and "| genre_KL@10 | 0.4200 | 0.4000 |" in md and "| MedR | 12 | — |" in md
    assert "**Bias (popularity and genre calibration)**" in md and "| top_genre_share@10 | 0.5000 | — |" in md
    assert "none (synthetic features)" in md and card["confounder"]["handling"] in md
    assert demo.data_warning(card).startswith("**⚠ SYNTHETIC DATA.**")
    # the same card for real user media: no warning, and no evaluation is said plainly
    assert card["trained_on"]["kind"] == "synthetic" and demo.provenance_kind(card) == "synthetic"  # a field, not text
    user = {**card, "trained_on": {**card["trained_on"], "synthetic": False, "provenance": "user data", "dataset": "mine",
                                   "kind": "real", "note": "features extracted from the user's media"}, "evaluation": {}}
    md = demo.card_markdown(user)
    assert "SYNTHETIC" not in md and "GENERATED" not in md and demo.data_warning(user) == ""
    assert "real media" in md and "No evaluation figures were recorded" in md
    old = {**user, "trained_on": {k: v for k, v in card["trained_on"].items() if k != "kind"}}  # a card from before the field
    assert demo.provenance_kind(old) == "synthetic" and demo.data_warning(old).startswith("**⚠ SYNTHETIC DATA.**")


def test_the_card_says_how_the_model_handles_the_uploaders_taste(synthetic_rec: Any) -> None:
    import copy
    import dataclasses

    from deccm import registry

    assert registry.model_card(synthetic_rec)["confounder"]["handling"].startswith("backdoor adjustment")  # no-distill
    for switch, words in (({"confounder": "none", "erase_taste": True}, "erased: the uploader's genre taste is linearly removed"),
                          ({"confounder": "none", "adversary": 1.0}, "adversary: the video encoder is trained against"),
                          ({"confounder": "none"}, "not modelled")):
        rec = copy.copy(synthetic_rec)
        rec.run = dataclasses.replace(rec.run, model=rec.run.model.replace(**switch))
        assert registry.model_card(rec)["confounder"]["handling"].startswith(words), switch


def test_a_synthetic_model_cannot_rank_an_uploaded_clip(synthetic_rec: Any, tmp_path: Path) -> None:
    clip = media.make_clip(tmp_path / "clip.mp4", duration=1.0)
    with pytest.raises(upload.DemoError, match="trained on SYNTHETIC feature vectors.*cannot rank an uploaded clip"):
        demo.suggest(synthetic_rec, clip, 5)


def test_the_page_without_a_champion_says_no_model_yet_and_how_to_train_one(tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    import gradio as gr

    demo_app = _app_module()
    monkeypatch.setenv("DECCM_HOME", str(tmp_path / "empty-home"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    svc = demo.DemoService(device="cpu")
    page = demo_app.build_app(service=svc)
    text = " ".join(str(b.value) for b in page.blocks.values() if isinstance(b, gr.Markdown))
    assert "No model yet: no deccm-student@champion is registered." in text and "make pipeline" in text
    assert svc.served is None and svc.health() == {"status": "no model", "model": None, "version": None,
                                                   "reason": demo.NO_MODEL, "follows": "deccm-student@champion",
                                                   "poll_s": None, "last_error": None, "since": None}
    assert svc.respond(None).error == demo.NO_MODEL  # Suggest says so too, whatever was sent


def test_the_service_removes_its_temp_dirs_when_the_process_ends(tmp_path: Path) -> None:
    """Snapshots and previews live in temp dirs of the service's own; a process that served leaves none behind."""
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    env = {**os.environ, "DECCM_HOME": str(tmp_path / "empty-home"), "TMPDIR": str(scratch), "PYTHONPATH": str(ROOT)}
    env.pop("MLFLOW_TRACKING_URI", None)
    code = ("from deccm import demo; s = demo.DemoService(device='cpu'); "
            "print(sorted(p.name.split('-')[1] for p in (s._served_dir, s.preview_dir) if p.is_dir()))")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "['previews', 'served']"  # they existed while it ran
    assert not any(p.name.startswith("deccm-") for p in scratch.iterdir()), sorted(p.name for p in scratch.iterdir())


# --------------------------------------------------------------------------- the running app follows the registry (slow)


def _start_demo(home_dir: Path, log: Path, poll_s: float = 1.0) -> tuple[subprocess.Popen, str]:
    """``python demo/app.py`` on a free port over ``home_dir``'s registry, as compose starts it."""
    scratch = home_dir / "tmp"  # the server's temp dirs, to check that it removes them when it stops
    scratch.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "DECCM_HOME": str(home_dir), "PYTHONPATH": str(ROOT), "TMPDIR": str(scratch)}
    for k in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):  # MLflow exported this process's store: the child picks its own
        env.pop(k, None)
    port = _free_port()
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, str(ROOT / "demo" / "app.py"), "--port", str(port), "--device", "cpu",
                                 "--poll-seconds", str(poll_s)], env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
    return proc, f"http://127.0.0.1:{port}"


def _health(url: str) -> tuple[int, Any]:
    import json
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"{url}/healthz", timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return 0, None


def _wait_health(url: str, proc: subprocess.Popen, log: Path, want: Any, what: str, timeout: float) -> dict[str, Any]:
    """Poll /healthz until ``want(status, body)``; fails with the server's log on timeout or exit."""
    deadline = time.monotonic() + timeout
    got: tuple[int, Any] = (0, None)
    while time.monotonic() < deadline:
        got = _health(url)
        if got[0] and want(*got):
            return got[1]
        if proc.poll() is not None:
            pytest.fail(f"the demo exited ({proc.returncode}) waiting for {what}:\n{log.read_text()[-4000:]}")
        time.sleep(0.5)
    pytest.fail(f"no {what} within {timeout:.0f} s (last /healthz: {got}); demo log:\n{log.read_text()[-4000:]}")


def _stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=30)


@pytest.mark.slow
def test_the_demo_starts_before_any_champion_answers_503_and_serves_the_first_one_registered(
        synthetic_rec: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from deccm import registry

    state = tmp_path / "home"
    proc, url = _start_demo(state, tmp_path / "demo.log")
    try:
        body = _wait_health(url, proc, tmp_path / "demo.log", lambda status, b: status == 503, "503 before any champion", 180)
        assert body["status"] == "no model" and body["version"] is None and "make pipeline" in body["reason"]
        monkeypatch.setenv("DECCM_HOME", str(state))
        monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
        version = registry.register(synthetic_rec.ranker.run_dir)
        registry.promote(version, "test: the first champion")
        body = _wait_health(url, proc, tmp_path / "demo.log", lambda status, b: status == 200, "the first champion served", 60)
        assert body["status"] == "serving" and body["version"] == version and body["model"] == registry.MODEL_NAME
        assert body["provenance"] == "synthetic" and body["last_error"] is None
        assert proc.poll() is None  # the same process: no restart
        # with one registered model there is nothing to compare
        assert demo.comparison_model(registry.load_champion(device="cpu", extractor=False), device="cpu") is None
    finally:
        _stop(proc)
    # stopped as compose stops it (SIGTERM): a clean exit that removes the server's snapshot and preview dirs
    assert proc.returncode == 0 and not [p.name for p in (state / "tmp").iterdir() if p.name.startswith("deccm-")]


# --------------------------------------------------------------------------- a registered champion on real media (slow)


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A private state dir for this module: its own corpus, MLflow registry and runs."""
    path = tmp_path_factory.mktemp("demo_home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DECCM_HOME", str(path))
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        yield path


@pytest.fixture(scope="module")
def models(home: Path, tiny_corpus: Path) -> dict[str, Any]:
    """A fresh install as ``make demo`` leaves it: the tiny demo corpus, v1 the champion and v2 the baseline
    (``pipeline.ensure_champion``); then v3, another student, registered but not promoted."""
    from deccm import pipeline, registry

    t = time.perf_counter()
    params = {"source": "demo-tiny", "epochs": 3, "variant": "plain", "device": "cpu", "batch_size": 64, "gate_floor": 0.0}
    cfg = pipeline.make_config(params)
    shutil.copytree(tiny_corpus, home / "data" / "demo-tiny")  # the session's corpus: prepare_data finds it there
    data = pipeline.prepare_data(cfg)
    built = time.perf_counter() - t
    assert pipeline.ensure_champion(params) == "1"
    ensured = time.perf_counter() - t - built
    assert registry.alias_version(registry.BASELINE) == "2"
    cfg3 = pipeline.make_config({**params, "train_seed": 7, "epochs": 4})
    run3 = pipeline.train_student(cfg3, data, None)
    v3 = registry.register(run3, pipeline.evaluate_candidates(cfg3, run3))
    assert v3 == "3" and registry.champion_version() == "1"
    print(f"\ndemo fixture: corpus {built:.0f} s, ensure (champion + baseline) {ensured:.0f} s, "
          f"a third model {time.perf_counter() - t - built - ensured:.0f} s")
    return {"data": Path(data), "params": params, "run3": Path(run3)}


def _back_to_the_first_champion() -> None:
    """Undo a test's ``promote 3`` (v3 replaced v1): the rollback leaves v1's own tags as they were."""
    from deccm import registry

    if registry.champion_version() == "3":
        registry.rollback()
    assert registry.champion_version() == "1"


@pytest.fixture(scope="module")
def service(models: dict[str, Any]) -> demo.DemoService:
    return demo.DemoService(device="cpu")  # the champion, as the app loads it


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return media.make_clip(tmp_path_factory.mktemp("clips") / "holiday.mp4", duration=10.0, source="mandelbrot", size="320x240",
                           rate=25, audio=330.0)


@pytest.mark.slow
def test_suggest_ranks_like_the_recommender_with_timings_notes_and_genre_mix(service: demo.DemoService, clip: Path,
                                                                              tmp_path: Path) -> None:
    rec = service.rec
    assert rec.card["registry"]["version"] == "1" and rec.extractor is not None
    want = rec.recommend(clip, k=10)
    got = demo.suggest(rec, clip, 10)
    assert [s.track for s in got.suggestions] == [s.track for s in want]
    np.testing.assert_allclose([s.score for s in got.suggestions], [s.score for s in want], rtol=1e-5)
    assert [s.rank for s in got.suggestions] == list(range(1, 11)) and got.clip == "holiday.mp4" and got.notes == []
    assert got.model == "deccm-student v1 (champion)" and got.licence == "any"
    assert all(s.licence and s.attribution for s in got.suggestions)  # the demo corpus: every track's licence is known
    assert set(got.timings) == {"check", "features", "rank", "total"} and got.timings["total"] >= got.timings["features"] > 0
    mix = {r["genre"]: r for r in got.genre_mix}
    assert list(mix) == rec.catalog.genres
    assert abs(sum(r["suggestions"] for r in mix.values()) - 1) < 1e-9 and abs(sum(r["catalog"] for r in mix.values()) - 1) < 1e-9
    assert all(r["catalog"] == rec.catalog.genre_mix()[g] for g, r in mix.items())
    for g, r in mix.items():
        assert r["suggestions"] == sum(s.genre == g for s in want) / 10
    assert all(s.audio and Path(s.audio).is_file() for s in got.suggestions)
    # every suggestion carries its moment at the clip's length: the tiny corpus's 3-4 s tracks loop under the 10 s clip
    timed = rec.recommend(clip, k=10, moment_s=10.0)
    assert [s.moment for s in got.suggestions] == [s.moment for s in timed] and all(s.moment for s in timed)
    assert all(s.moment["loop"] and s.moment["length"] == 10.0 and 0 <= s.moment["start"] < s.moment["end"] for s in timed)
    assert rec.card["moments"]["window_spec"]["spec_id"] == rec.catalog.moments.spec.spec_id

    # longer than the limit: ranked on its first seconds, and the result says so
    capped = demo.suggest(rec, clip, 5, max_seconds=4)
    assert capped.notes == ["the clip is 10.0 s long: used the first 4 s"]
    first = upload.first_seconds(upload.check_upload(clip, max_seconds=4), 4, tmp_path)
    assert [s.track for s in capped.suggestions] == [s.track for s in rec.recommend(first, k=5)]
    assert demo.suggest(rec, clip, 10_000).k == len(rec.catalog.tracks)  # k is capped at the catalog
    with pytest.raises(upload.DemoError, match="k must be at least 1"):
        demo.suggest(rec, clip, 0)


@pytest.mark.slow
def test_a_heavy_clip_and_one_of_unstated_length_are_served_with_their_previews(service: demo.DemoService,
                                                                                tmp_path: Path) -> None:
    heavy = _heavy(tmp_path)
    page = service.respond(heavy, k=5)
    assert page.error is None and "takes long to decode" in " ".join(page.result.notes)
    used = upload.check_upload(heavy).used_seconds
    first = upload.first_seconds(upload.check_upload(heavy), used, tmp_path)
    assert [s.track for s in page.result.suggestions] == [s.track for s in service.rec.recommend(first, k=5)]
    assert all(s.moment["length"] == used for s in page.result.suggestions)  # the moment fills the part that was ranked
    top = page.result.suggestions[0].audio
    assert abs(_streams(service.preview(heavy, top))["duration"] - used) < 0.1  # and so does the preview
    live = _stateless(tmp_path)
    page = service.respond(live, k=5)  # this raised a TypeError (no length to fit a moment to)
    assert page.error is None and all(s.moment is None for s in page.result.suggestions)
    assert "does not state its length" in " ".join(page.result.notes)
    track = page.result.suggestions[0].audio  # no moment: the track as it is, from its start
    want = min(6.0, _streams(Path(track))["duration"])  # the preview ends with the clip, or with a shorter track
    assert abs(_streams(service.preview(live, track))["duration"] - want) < 0.15


@pytest.mark.slow
def test_recommend_moments_cli_and_the_registered_window_spec(models: dict[str, Any], clip: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from mlflow import MlflowClient

    from deccm import moments, registry, serve

    assert serve.main([str(models["run3"]), str(clip), "--k", "3", "--moments"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split()[-3:] == ["start", "end", "cut"] and len(table) == 4
    assert all(row.split()[-1] in ("beat", "downbeat", "none") for row in table[1:])  # "loop beat": the tracks are short
    assert serve.main([str(models["run3"]), str(clip), "--k", "3", "--moments", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    for s in out["suggestions"]:
        m = s["moment"]
        assert m["length"] == 10.0 and m["loop"] and m["start"] < m["end"] and all(m["start"] <= b < m["end"] for b in m["beats"])
    # the registry carries the window spec with the model, like the extractor spec
    tags = MlflowClient().get_model_version(registry.MODEL_NAME, "1").tags
    assert tags[registry.TAG_WINDOW] == moments.WindowSpec().spec_id


@pytest.mark.slow
def test_comparison_model_is_the_baseline_then_the_previous_champion(models: dict[str, Any], service: demo.DemoService,
                                                                    clip: Path) -> None:
    import mlflow

    from deccm import pipeline, registry

    cmp = service.comparison
    assert cmp is not None and cmp.why == "alias baseline" and cmp.rec.card["registry"]["version"] == "2"
    assert cmp.label == "v2 (alias baseline)" and cmp.rec.extractor is None  # same video features: the champion's are reused
    assert cmp.rec.run.variant == pipeline.BASELINE_VARIANT and cmp.about == pipeline.BASELINE_PURPOSE
    page = service.respond(clip, 10)
    assert page.error is None and page.comparison == cmp.rec.recommend(service.rec.video_features(clip), k=10)
    assert [s.track for s in page.comparison] != [s.track for s in page.result.suggestions]  # two real, different rankings
    left, right = page.result.suggestions[0], page.comparison[0]
    assert page.side_by_side()[0] == [1, f"{left.title} ({left.genre}) · {demo.licence_text(left.licence)}",
                                      f"{right.title} ({right.genre}) · {demo.licence_text(right.licence)}"]
    assert demo.licence_text(left.licence) == "work: public domain …"  # the corpus's statement, cut; the credit has it all
    assert left.licence in left.attribution and demo.licence_text("GPL-2+") == "GPL-2+"
    assert demo.licence_text("") == "unknown licence"
    assert [s["licence"] for s in page.to_dict()["comparison"]] == [s.licence for s in page.comparison]

    # without a baseline, the champion's previous champion
    client = mlflow.MlflowClient()
    client.delete_registered_model_alias(registry.MODEL_NAME, registry.BASELINE)
    registry.promote("3", "test: a second champion")
    try:
        picked = demo.comparison_model(registry.load_champion(device="cpu", extractor=False), device="cpu")
        assert picked is not None and picked.why == "previous champion" and picked.rec.card["registry"]["version"] == "1"
        assert picked.about == ""  # a pipeline candidate has no purpose of its own to state
    finally:
        _back_to_the_first_champion()
        client.set_registered_model_alias(registry.MODEL_NAME, registry.BASELINE, "2")


@pytest.mark.slow
def test_ensure_adds_the_baseline_once_and_never_moves_the_champion(models: dict[str, Any]) -> None:
    """A second ``make demo`` fits and registers nothing; a registry with a champion and no baseline (an older
    install, or a run interrupted between the two) gets the baseline back; the champion alias never moves."""
    import mlflow

    from deccm import pipeline, registry

    client = mlflow.MlflowClient()
    versions = lambda: [(v["version"], v["aliases"]) for v in registry.list_versions()]  # noqa: E731
    before = versions()
    assert before == [("3", ["challenger"]), ("2", ["baseline"]), ("1", ["champion"])]  # never the challenger either
    baseline = client.get_model_version(registry.MODEL_NAME, "2")
    state = Path(baseline.tags["deccm.run_dir"]) / "state.pt"
    fitted = state.stat().st_mtime_ns
    assert baseline.tags[registry.TAG_PURPOSE] == pipeline.BASELINE_PURPOSE and baseline.tags["deccm.variant"] == "ridge"
    assert baseline.description.startswith(f"**deccm-student@baseline.** {pipeline.BASELINE_PURPOSE}")
    run = client.get_run(baseline.run_id)
    assert run.data.tags[registry.TAG_PURPOSE] == pipeline.BASELINE_PURPOSE
    assert pipeline.BASELINE_PURPOSE in run.data.tags["mlflow.note.content"]  # the run's description in the MLflow UI
    card = registry.load("baseline", device="cpu", extractor=False).card
    assert card["purpose"] == {"alias": "baseline", "why": pipeline.BASELINE_PURPOSE}
    assert card["evaluation"]["champion_version"] == "1" and "val" in card["evaluation"]["challenger"]  # beside the champion

    assert pipeline.ensure_champion(models["params"]) == "1"  # a second `make demo`
    assert versions() == before and state.stat().st_mtime_ns == fitted
    client.delete_registered_model_alias(registry.MODEL_NAME, registry.BASELINE)
    assert pipeline.ensure_champion(models["params"]) == "1"  # a champion and no baseline: the same version comes back
    assert versions() == before and state.stat().st_mtime_ns == fitted
    with pytest.raises(registry.RegistryError, match="registering never makes a champion"):
        registry.register(baseline.tags["deccm.run_dir"], alias=registry.CHAMPION)


@pytest.mark.slow
def test_examples_and_card_come_from_the_champion(models: dict[str, Any], service: demo.DemoService) -> None:
    assert len(service.examples) == 3
    for p in service.examples:
        assert Path(p).is_file() and Path(p).is_relative_to(models["data"] / "media" / "clips" / "ugc")
    md = service.card
    assert "**⚠ GENERATED DATA.**" in md and "the demo corpus is GENERATED" in md and "GENERATED media (the demo corpus)" in md
    assert "version 1 (alias champion)" in md and "previous champion" not in md  # the first champion replaced none
    assert "efficientnet-lite0 (pretrained" in md and "NOT pretrained (random weights)" in md  # VGGish is untrained
    for metric in ("HR_w@10", "genre_KL@10", "top_genre_share@10", "coverage@10", "test_oracle"):
        assert f"| {metric} |" in md or metric in md
    assert "not modelled" in md  # variant plain: the confounder is not modelled, and the card says so
    assert "GENERATED" in service.examples_label


@pytest.mark.slow
def test_the_running_demo_follows_promote_and_rollback_with_no_restart(models: dict[str, Any], home: Path,
                                                                        tmp_path: Path) -> None:
    from deccm import registry

    log = tmp_path / "demo.log"

    def cli(*args: str) -> None:
        env = {**os.environ, "DECCM_HOME": str(home)}
        for k in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):
            env.pop(k, None)
        out = subprocess.run([sys.executable, "-m", "deccm.registry", *args], env={**env, "PYTHONPATH": str(ROOT)}, cwd=ROOT,
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stdout + out.stderr

    assert registry.champion_version() == "1"
    proc, url = _start_demo(home, log)
    try:
        body = _wait_health(url, proc, log, lambda status, b: status == 200, "the champion served", 180)
        assert body["version"] == "1" and body["provenance"] == "generated" and body["follows"] == "deccm-student@champion"
        t = time.perf_counter()
        cli("promote", "3")
        body = _wait_health(url, proc, log, lambda status, b: b["version"] == "3", "v3 served after the promote", 60)
        assert body["status"] == "serving" and body["last_error"] is None
        took = time.perf_counter() - t
        t = time.perf_counter()
        cli("rollback")
        _wait_health(url, proc, log, lambda status, b: b["version"] == "1", "v1 served after the rollback", 60)
        print(f"\nfollowing the alias (poll 1 s): promote → v3 served {took:.1f} s, rollback → v1 served "
              f"{time.perf_counter() - t:.1f} s after the CLI started")
        assert proc.poll() is None  # one process throughout: no restart
        assert "serving deccm-student@champion version 1 (was 3)" in log.read_text()
    finally:
        _stop(proc)
        _back_to_the_first_champion()


@pytest.mark.slow
def test_follow_champion_is_a_recommender_that_follows_the_alias(models: dict[str, Any], home: Path) -> None:
    from deccm import registry, watch

    w = watch.follow_champion(device="cpu", extractor=False, poll_s=1)  # polled once: no thread needed here
    assert w.served is not None and w.served.version == "1" and w.served.model.card["registry"]["version"] == "1"
    before = w.served
    try:
        registry.promote("3", "test: follow_champion")
        assert w.poll() is True and w.served.version == "3" and w.served.model.card["registry"]["version"] == "3"
        assert w.poll() is False  # unchanged: nothing loaded again
    finally:
        _back_to_the_first_champion()
    assert w.poll() is True and w.served.version == "1" and before.model.card["registry"]["version"] == "1"


# --------------------------------------------------------------------------- the app: API and browser (slow)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def app_url(service: demo.DemoService) -> Iterator[str]:
    app_module = _app_module()
    app = app_module.build_app(service=service)
    port = _free_port()
    app_module.launch(app, service, port=port, quiet=True)
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        app.close()


@pytest.mark.slow
def test_api_suggest_matches_the_recommender_and_reports_bad_uploads(app_url: str, service: demo.DemoService, clip: Path,
                                                                     tmp_path: Path) -> None:
    from gradio_client import Client, handle_file
    from gradio_client.exceptions import AppError

    client = Client(app_url, verbose=False, download_files=False)
    assert {"/suggest", "/preview"} <= set(client.view_api(print_info=False, return_format="dict")["named_endpoints"])
    out = client.predict(handle_file(str(clip)), 7, api_name="/suggest")
    status, table, *players = out[:7]
    chart, compare, raw = out[7:10]
    want = service.rec.recommend(clip, k=7)
    assert [s["track"] for s in raw["suggestions"]] == [s.track for s in want] and raw["error"] is None
    assert [row[1] for row in table["data"]] == [s.title for s in want]
    assert [row[0] for row in table["data"]] == list(range(1, 8)) and table["headers"][2] == "composer / artist"
    assert table["headers"][5:] == ["moment", "licence", "attribution"]
    timed = service.rec.recommend(clip, k=7, moment_s=10.0)
    assert [row[5:] for row in table["data"]] == \
        [[demo.moment_text(s.moment), demo.licence_text(s.licence), s.attribution] for s in timed]
    assert [s["moment"] for s in raw["suggestions"]] == [s.moment for s in timed]  # start, end, beats in the JSON
    assert [(s["licence"], s["licence_family"], s["attribution"]) for s in raw["suggestions"]] == \
        [(s.licence, s.licence_family, s.attribution) for s in want] and raw["licence_filter"] == "any"
    assert status.startswith("Top 7 for **holiday.mp4** from deccm-student v1")
    names = [p["value"]["orig_name"] if isinstance(p["value"], dict) else Path(p["value"]).name for p in players]
    assert [n.split("-")[0] for n in names] == [Path(s.audio).stem[:16] for s in want[:5]]  # each player: its track's moment
    assert all(n.endswith(".wav") for n in names)
    assert len(chart["data"]) == 2 * len(service.rec.catalog.genres)
    assert compare["value"]["headers"][2] == "v2 (alias baseline)" and len(compare["value"]["data"]) == 7
    assert all(row[2].endswith(f" · {demo.licence_text(s['licence'])}")
               for row, s in zip(compare["value"]["data"], raw["comparison"]))

    # the licence filter: applied before ranking (K tracks of that family), the same for the model beside
    families = {s.licence_family for s in want}
    kept = client.predict(handle_file(str(clip)), 7, sorted(families)[0], api_name="/suggest")[9]
    assert kept["licence_filter"] == sorted(families)[0] and len(kept["suggestions"]) == 7
    assert {s["licence_family"] for s in kept["suggestions"] + kept["comparison"]} == {sorted(families)[0]}
    missing = next(f for f in ("gpl", "permissive", "cc-by", "public-domain") if f not in families)
    none = client.predict(handle_file(str(clip)), 7, missing, api_name="/suggest")
    assert none[0].startswith(f"**Cannot suggest music:** no track of the catalog is allowed by licence filter '{missing}'")
    assert "Fix: choose a filter that allows some" in none[0] and none[9]["error"] and "suggestions" not in none[9]
    with pytest.raises(AppError, match="Value: all rights reserved is not in the list of choices"):  # the dropdown's own check
        client.predict(handle_file(str(clip)), 7, "all rights reserved", api_name="/suggest")
    assert service.respond(clip, 7, "all rights reserved").error == \
        f"unknown licence filter 'all rights reserved': choose one of {', '.join(demo.licences.FILTERS)}"

    (tmp_path / "notes.mp4").write_text("my holiday notes, not a video\n")
    (tmp_path / "empty.mp4").write_bytes(b"")
    for name, message in (("notes.mp4", "notes.mp4 is not a usable video: not a media file (looks like text)"),
                          ("empty.mp4", "empty.mp4 is an empty file (0 bytes)")):
        bad = client.predict(handle_file(str(tmp_path / name)), 7, api_name="/suggest")
        assert bad[0].startswith("**Cannot suggest music:** ") and message in bad[0], bad[0]
        assert bad[1]["data"] in ([], [[]]) or not any(any(c != "" for c in r) for r in bad[1]["data"])
        assert "Traceback" not in bad[0] and bad[9]["error"].startswith(name)


@pytest.mark.slow
def test_browser_upload_suggest_listen_and_preview(app_url: str, service: demo.DemoService, clip: Path, tmp_path: Path) -> None:
    """A fresh install's page (the champion and the baseline that ``ensure`` registered): upload, suggest, listen,
    preview; the ranking names each track's licence, and the side by side shows the baseline's own ranking."""
    from playwright.sync_api import expect, sync_playwright

    assert CHROMIUM.is_file(), ("Debian's chromium is missing: `apt-get install -y --no-install-recommends chromium` "
                                "(playwright cannot download browsers here)")
    shot = ROOT / "docs" / "demo.png" if os.environ.get("DECCM_SCREENSHOT") else tmp_path / "demo.png"
    ranking = service.rec.recommend(clip, k=10)
    top = ranking[0]
    assert service.comparison is not None and service.comparison_label == "v2 (alias baseline)"
    beside = service.comparison.rec.recommend(service.rec.video_features(clip), k=10)
    assert [s.track for s in beside] != [s.track for s in ranking]  # two real rankings, and not the same one
    t = time.perf_counter()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(app_url)
            page.get_by_text("GENERATED DATA").first.wait_for(timeout=30_000)  # labelled before anything is uploaded
            page.locator("#clip input[type=file]").set_input_files(str(clip))
            page.locator("#clip video").first.wait_for(timeout=30_000)  # the upload has landed
            page.locator("#suggest").click()
            page.locator("#ranking").get_by_text(top.title).first.wait_for(timeout=60_000)
            expect(page.locator("#ranking")).to_contain_text("licence")  # the column, and each track's licence and credit
            expect(page.locator("#ranking")).to_contain_text(demo.licence_text(top.licence))
            expect(page.locator("#ranking")).to_contain_text(top.attribution)
            expect(page.locator("#side-by-side")).to_contain_text(f"Side by side: {service.label} and v2 (alias baseline)")
            for s in (ranking[0], beside[0]):  # the champion's top track and the baseline's, each with its licence
                expect(page.locator("#comparison")).to_contain_text(f"{s.title} ({s.genre}) · {demo.licence_text(s.licence)}")
            # the player's <audio> lives in a shadow root: playwright's CSS pierces it, document.querySelector does not
            audio = page.locator("#track-1 audio[src]").first
            audio.wait_for(state="attached", timeout=30_000)
            page.wait_for_function("a => a.readyState >= 1 && a.duration > 0", arg=audio.element_handle(), polling=250,
                                   timeout=30_000)  # the browser fetched and decoded the track
            assert page.locator("#track-1 a[download]").first.get_attribute("href").endswith(".wav")  # the moment
            assert Path(top.audio).stem[:16] in page.locator("#track-1 a[download]").first.get_attribute("href")
            video = page.locator("#preview video[src]").first
            video.wait_for(state="attached", timeout=60_000)
            page.wait_for_function("v => v.readyState >= 1 && v.duration > 0", arg=video.element_handle(), polling=250,
                                   timeout=30_000)
            assert "Cannot suggest music" not in page.locator("#status").inner_text()
            expect(page.locator("#download")).to_be_visible()  # "download clip with this music": the preview's mp4
            expect(page.locator("#ranking")).to_contain_text(demo.moment_text(service.rec.recommend(clip, 1, moment_s=10.0)[0].moment))
            page.wait_for_timeout(1000)  # let the waveforms and the chart finish drawing
            page.screenshot(path=str(shot), full_page=True)
        finally:
            browser.close()
    assert shot.stat().st_size > 50_000
    print(f"\nbrowser round trip {time.perf_counter() - t:.1f} s; screenshot {shot}")


# --------------------------------------------------------------------------- hostile uploads (slow: the same server)


@pytest.fixture(scope="module")
def hostile_corpus(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("hostile")
    secret = hostile.make_secret(root / "private")
    return {"secret": secret, "cases": hostile.make_corpus(root / "upload", secret)}


def _magenta_share(path: Path) -> float:
    """Share of decoded frames that look like the secret clip (solid magenta)."""
    with av.open(str(path)) as c:
        frames = [f.to_ndarray(format="rgb24").reshape(-1, 3).mean(axis=0) for f in c.decode(video=0)]
    return float(np.mean([abs(r - 255) < 40 and g < 40 and abs(b - 255) < 40 for r, g, b in frames])) if frames else 0.0


@pytest.mark.slow
def test_hostile_uploads_through_suggest_and_preview_are_refused_by_name_or_served_within_caps(
        app_url: str, service: demo.DemoService, clip: Path, hostile_corpus: dict[str, Any]) -> None:
    from gradio_client import Client, handle_file

    assert _magenta_share(hostile_corpus["secret"]) == 1.0  # the leak detector sees the secret
    client = Client(app_url, verbose=False, download_files=False)
    previews = 0
    for case in hostile_corpus["cases"]:
        # a good clip first, so the session holds a top track: /preview then gets the hostile file as its clip
        assert client.predict(handle_file(str(clip)), 5, api_name="/suggest")[9]["error"] is None
        shown = client.predict(handle_file(str(case.path)), api_name="/preview")[0]  # (preview, download)
        video = shown.get("video", shown) if isinstance(shown, dict) else shown
        if case.expect == "refused":
            assert not video, (case.name, shown)
        else:
            path = Path(video["path"] if isinstance(video, dict) else video)
            previews += 1
            with av.open(str(path)) as c:
                v = c.streams.video[0]
                assert max(v.width, v.height) <= 1280 and min(v.width, v.height) <= 480 and float(v.average_rate) <= 30
            assert _magenta_share(path) == 0.0, case.name
        out = client.predict(handle_file(str(case.path)), 5, api_name="/suggest")
        status, raw = out[0], out[9]
        assert "Traceback" not in status, (case.name, status)
        if case.expect == "refused":
            assert status.startswith(f"**Cannot suggest music:** {case.path.name} "), (case.name, status)
            assert case.reason.lower() in status.lower(), (case.name, status)
            assert raw["error"].startswith(case.path.name) and "suggestions" not in raw
        else:
            assert status.startswith(f"Top 5 for **{case.path.name}**"), (case.name, status)
    assert previews == sum(c.expect == "served" for c in hostile_corpus["cases"])
    assert service.busy == 0 and 1 <= service.busy_peak <= demo.HEAVY_SLOTS


@pytest.mark.slow
def test_only_checked_files_under_the_media_folder_are_served(app_url: str, service: demo.DemoService,
                                                             hostile_corpus: dict[str, Any], tmp_path: Path) -> None:
    import httpx

    example = service.static_files()[0]
    ok = httpx.get(f"{app_url}gradio_api/file={example}", timeout=30)
    assert ok.status_code == 200 and ok.content == Path(example).read_bytes()  # the route works: the refusals below mean something
    root = demo.media_root(service.rec)
    assert root is not None and set(service.static_files()) == set(service.examples)
    assert all(Path(f).is_relative_to(root) for f in service.static_files())
    catalog_track = service.rec.catalog.tracks[0]["audio"]
    played = service.playable(catalog_track)  # what a player gets: a snapshot of the checked file, not the file itself
    assert played != catalog_track and Path(played).read_bytes() == Path(catalog_track).read_bytes()
    assert service.playable("/etc/passwd") is None and service.playable(str(hostile_corpus["secret"])) is None
    private = [hostile_corpus["secret"], root.parent / "videos.csv", root.parent / "dataset.json", Path("/etc/passwd"),
               Path(catalog_track)]
    unlisted = sorted(p for p in (root / "clips").rglob("*.mp4") if str(p) not in service.static_files())[0]
    for path in [*private, unlisted, root]:
        r = httpx.get(f"{app_url}gradio_api/file={path}", timeout=30)
        assert r.status_code in (403, 404), (path, r.status_code)
        assert hostile_corpus["secret"].read_bytes()[:4096] not in r.content

    # what may be served: a regular, accepted file inside the media folder, symlinks resolved first
    outside = hostile_corpus["secret"]
    link = tmp_path / "media"
    link.mkdir()
    (link / "song.wav").symlink_to(catalog_track)
    (link / "escape.mp4").symlink_to(outside)
    tracks = service.rec.catalog.audio_root  # the registered bundle's own audio folder (content-addressed)
    assert tracks is not None and Path(catalog_track).is_relative_to(tracks)
    assert demo.servable(catalog_track, tracks, "audio") == str(Path(catalog_track).resolve())
    assert demo.servable(catalog_track, root, "audio") is None  # a track is served from its bundle, not the dataset
    assert demo.servable(link / "song.wav", tracks, "audio") == str(Path(catalog_track).resolve())  # resolves into the folder
    assert demo.servable(link / "escape.mp4", link, "video") is None  # resolves out of it
    assert demo.servable(outside, root, "video") is None and demo.servable(root, root.parent, "audio") is None
    assert demo.servable(unlisted, root, "audio") is None  # a silent clip is no track
    with pytest.raises(upload.DemoError, match="not a track of the served catalog"):
        service.preview(str(unlisted), str(outside))


@pytest.mark.slow
def test_recommend_cli_names_each_hostile_file_and_its_reason(models: dict[str, Any], hostile_corpus: dict[str, Any],
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    from deccm.serve import main

    def recommend(path: Path) -> tuple[int, str, str]:
        """``deccm recommend`` once as a real process (the console entry), then in this one (the same main, no start-up)."""
        if path == hostile_corpus["cases"][0].path:
            proc = subprocess.run([sys.executable, "-m", "deccm.cli", "recommend", str(models["run3"]), str(path), "--k", "3",
                                   "--device", "cpu"], capture_output=True, text=True, timeout=300, cwd=ROOT)
            return proc.returncode, proc.stdout, proc.stderr
        code = main([str(models["run3"]), str(path), "--k", "3", "--device", "cpu"])
        out = capsys.readouterr()
        return code, out.out, out.err

    for case in hostile_corpus["cases"]:
        code, out, err = recommend(case.path)
        assert "Traceback" not in err, (case.name, err[-2000:])
        if case.expect == "refused":
            assert code == 2 and err.startswith(f"error: {case.path}: "), (case.name, err)
            assert case.reason.lower() in err.lower(), (case.name, err)
        else:
            assert code == 0 and out.count("\n") >= 3, (case.name, err)


@pytest.mark.slow
def test_example_clips_rank_exactly_as_their_training_features(service: demo.DemoService, models: dict[str, Any]) -> None:
    """The admission rule and the streaming frame conversion leave admitted clips' features as they were extracted."""
    from deccm.data import load_dataset

    ds = load_dataset(models["data"])
    row_of = {str((ds.root / r["path"]).resolve()): int(r["id"]) for r in ds.videos if r.get("kind") == "ugc"}
    assert service.examples
    for example in service.examples:
        page = service.respond(example, 10)
        assert page.error is None, page.error
        want = service.rec.recommend(ds.ugc.video_features[row_of[example]], k=10)
        assert [s.track for s in page.result.suggestions] == [s.track for s in want]
        np.testing.assert_allclose([s.score for s in page.result.suggestions], [s.score for s in want], rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_concurrent_requests_share_the_heavy_slots_and_are_all_answered(service: demo.DemoService, clip: Path,
                                                                       hostile_corpus: dict[str, Any], tmp_path: Path) -> None:
    goods = [media.make_clip(tmp_path / f"good{i}.mp4", duration=3.0, source=src, size="320x240", rate=25)
             for i, src in enumerate(("testsrc2", "smptebars", "mandelbrot", "red"))]  # new content: nothing cached
    mixed = [*goods, *(c.path for c in hostile_corpus["cases"][:6])]
    track = service.playable(service.rec.catalog.tracks[0]["audio"])
    answers: list[str] = []
    service.busy_peak = 0

    def one(path: Path) -> None:
        page = service.respond(path, 5)
        try:
            service.preview(path, track)
        except upload.DemoError:
            pass
        answers.append(page.error or "ok")

    threads = [threading.Thread(target=one, args=(p,)) for p in mixed]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert len(answers) == len(mixed) and answers.count("ok") == len(goods)
    assert service.busy == 0 and service.busy_peak == demo.HEAVY_SLOTS  # four good clips' work overlapped, never more than two

    # a clip sent again is ranked from its remembered features: the same answer, and no slot taken
    service.busy_peak = 0
    again = service.respond(goods[0], 5)
    assert again.error is None and service.busy_peak == 0
    assert [s.track for s in again.result.suggestions] == [s.track for s in service.rec.recommend(goods[0], k=5)]


@pytest.mark.slow
def test_an_error_no_check_foresaw_reaches_the_page_as_one_line(service: demo.DemoService, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    clip = media.make_clip(tmp_path / "odd.mp4", duration=2.0, source="smptebars")  # new content: not in RecentClips

    def boom(path: Any) -> Any:
        raise RuntimeError("the decoder hit something nobody planned for")

    monkeypatch.setattr(service.rec.extractor, "extract_with_notes", boom)
    page = service.respond(clip, 3)
    assert page.error == "odd.mp4 could not be processed (RuntimeError). Try another clip; the server log has the details."
    assert page.status().startswith("**Cannot suggest music:** odd.mp4") and service.busy == 0
