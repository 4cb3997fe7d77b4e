"""The batch extractor: stores on disk, named failures, incremental reruns, music normalisation, the CLI."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import media
from deccm.features import (FeatureStore, MusicExtractor, SpecMismatch, VideoExtractor, extract_batch, load_store,
                            require_same)
from deccm.features.batch import StrictFailure, collect_inputs

_one_torch_thread = pytest.fixture(autouse=True, scope="module")(media.one_torch_thread)
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Good clips of several formats and the usual broken files, in a nested folder."""
    d = tmp_path_factory.mktemp("media")
    (d / "sub").mkdir()
    media.make_clip(d / "pattern.mp4", duration=1.0)
    media.make_clip(d / "sub" / "fractal.webm", duration=1.0, source="mandelbrot")
    media.make_clip(d / "mute.mp4", duration=1.0, audio=None)
    media.make_clip(d / "quiet.mov", duration=0.5, source="red", audio="silence")
    media.truncate(d / "pattern.mp4", d / "cut.mp4")
    (d / "readme.mp4").write_text("not a video\n")
    (d / "blank.avi").write_bytes(b"")
    (d / "notes.txt").write_text("ignored: not a media extension\n")
    return d


def _copy(folder: Path, dst: Path) -> Path:
    shutil.copytree(folder, dst)
    return dst


def test_video_batch_writes_an_aligned_store_and_lists_failures(folder: Path, tmp_path: Path) -> None:
    store = extract_batch("videos", folder, tmp_path / "out", cache_dir=tmp_path / "cache", progress=False)
    assert store.ids == ["mute", "pattern", "quiet", "fractal"]  # sorted by path, broken files left out
    assert store.features.shape == (4, 1280) and store.features.dtype == np.float32
    reasons = {Path(p).name: r for p, r in store.failures}
    assert reasons["cut.mp4"].startswith("truncated or corrupt MP4/MOV file")
    assert reasons["readme.mp4"] == "not a media file (looks like text)"
    assert reasons["blank.avi"] == "empty file"
    assert set(reasons) == {"cut.mp4", "readme.mp4", "blank.avi"}
    assert store.run == {"inputs": 7, "extracted": 4, "cached": 0, "failed": 3, "workers": 1, "cache": "on"}

    out = tmp_path / "out" / "features" / "videos"
    assert sorted(p.name for p in out.iterdir()) == ["failures.csv", "features.npy", "items.csv", "spec.json"]
    assert (out / "failures.csv").read_text().splitlines()[0] == "id,path,reason"
    back = load_store(tmp_path / "out")
    np.testing.assert_array_equal(back.features, store.features)
    assert (back.ids, back.paths, back.sha256, back.spec) == (store.ids, store.paths, store.sha256, store.spec)
    assert sorted(back.failures) == sorted(store.failures)
    # the same clip through the single-file API used for serving, rebuilt from the store's spec, gives the same vector
    one = VideoExtractor.from_spec(back.spec, device="cpu")
    assert one.spec == VideoExtractor(device="cpu").spec == store.spec
    np.testing.assert_allclose(one.extract(folder / "pattern.mp4"), store.features[store.row("pattern")], rtol=1e-5, atol=1e-6)


def test_rerun_does_no_repeated_work_and_a_grown_folder_only_the_new_file(folder: Path, tmp_path: Path) -> None:
    src = _copy(folder, tmp_path / "src")
    cache = tmp_path / "cache"
    first = extract_batch("videos", src, tmp_path / "out", cache_dir=cache, progress=False)
    again = extract_batch("videos", src, tmp_path / "out", cache_dir=cache, progress=False)
    assert again.run["extracted"] == 0 and again.run["cached"] == 7  # failures are remembered too
    np.testing.assert_array_equal(again.features, first.features)
    media.make_clip(src / "new.mkv", duration=1.0, source="smptebars")
    grown = extract_batch("videos", src, tmp_path / "out", cache_dir=cache, progress=False)
    assert grown.run["extracted"] == 1 and grown.run["cached"] == 7 and len(grown) == 5
    np.testing.assert_array_equal(grown.features[[grown.row(i) for i in first.ids]], first.features)


def test_strict_stops_at_the_first_bad_file_and_keeps_finished_work(folder: Path, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pattern.mp4", "mute.mp4"):
        shutil.copy(folder / name, src / name)
    cache = tmp_path / "cache"
    good = extract_batch("videos", src, tmp_path / "out", cache_dir=cache, progress=False)
    shutil.copy(folder / "readme.mp4", src / "zz-readme.mp4")  # sorts last: the good files run first
    media.make_clip(src / "new.mp4", duration=1.0, source="blue", audio=None)
    with pytest.raises(StrictFailure, match="zz-readme.mp4: not a media file"):
        extract_batch("videos", src, tmp_path / "out", cache_dir=cache, progress=False, strict=True)
    # the failed run neither replaced the old store nor lost the file it finished before stopping
    kept = load_store(tmp_path / "out", "videos")
    assert kept.ids == good.ids
    rerun = extract_batch("videos", src, tmp_path / "out", cache_dir=cache, progress=False)
    assert rerun.run["extracted"] == 0 and rerun.run["failed"] == 1 and len(rerun) == 3


def test_manifest_csv_gives_ids_and_paths_relative_to_it(folder: Path, tmp_path: Path) -> None:
    manifest = tmp_path / "clips.csv"
    rel = os.path.relpath(folder, tmp_path)
    manifest.write_text(f"id,path,uploader\nv1,{rel}/pattern.mp4,u9\nv2,{rel}/sub/fractal.webm,u3\nv3,{rel}/gone.mp4,u1\n")
    store = extract_batch("videos", manifest, tmp_path / "out", cache_dir=tmp_path / "cache", progress=False)
    assert store.ids == ["v1", "v2"] and store.failed_ids == ["v3"] and store.failures[0][1] == "missing file"


def test_inputs_are_checked_before_any_work(folder: Path, tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    shutil.copy(folder / "pattern.mp4", tmp_path / "a" / "x.mp4")
    shutil.copy(folder / "mute.mp4", tmp_path / "b" / "x.mp4")
    with pytest.raises(ValueError, match="duplicate id 'x'"):
        collect_inputs("videos", tmp_path)
    with pytest.raises(ValueError, match="no videos files found"):
        collect_inputs("videos", _empty(tmp_path))
    bad = tmp_path / "bad.csv"
    bad.write_text("name,file\nx,y.mp4\n")
    with pytest.raises(ValueError, match="manifest needs columns id,path"):
        collect_inputs("videos", bad)
    items = collect_inputs("videos", [tmp_path / "a" / "x.mp4", tmp_path / "b" / "x.mp4"], ids=["first", "second"])
    assert [i.id for i in items] == ["first", "second"]


def _empty(tmp_path: Path) -> Path:
    d = tmp_path / "empty"
    d.mkdir()
    (d / "notes.txt").write_text("no media here\n")
    return d


@pytest.mark.slow
def test_music_batch_keeps_raw_fits_norm_and_can_reuse_given_stats(folder: Path, tmp_path: Path) -> None:
    src = tmp_path / "music"
    src.mkdir()
    media.make_audio(src / "a.wav", audio=220.0)
    media.make_audio(src / "b.ogg", audio="noise")
    media.make_audio(src / "c.m4a", audio=660.0)
    shutil.copy(folder / "mute.mp4", src / "mute.mp4")  # a video without audio: named failure for music
    store = extract_batch("music", src, tmp_path / "out", cache_dir=tmp_path / "cache", progress=False)
    assert store.ids == ["a", "b", "c"] and store.failures[0][1] == "no audio stream"
    assert store.raw.shape == store.features.shape == (3, 256)
    np.testing.assert_allclose(store.features, (store.raw - store.norm_mean) / store.norm_std, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(store.norm_mean, store.raw.mean(axis=0), rtol=1e-5, atol=1e-4)
    assert store.normalisation["source"] == "fitted on the 3 items of this run"
    out = tmp_path / "out" / "features" / "music"
    assert {"raw.npy", "norm_mean.npy", "norm_std.npy"} <= {p.name for p in out.iterdir()}
    back = load_store(out)
    np.testing.assert_array_equal(back.norm_std, store.norm_std)
    # serving: rebuild the extractor from the store's spec with the catalog's stats
    serving = MusicExtractor.from_spec(back.spec, device="cpu", norm=(back.norm_mean, back.norm_std))
    np.testing.assert_allclose(serving.extract(src / "b.ogg"), back.features[back.row("b")], rtol=1e-4, atol=1e-4)

    # a later run (e.g. new tracks at serving time) applies the catalog's stats instead of refitting
    other = tmp_path / "other"
    other.mkdir()
    media.make_audio(other / "d.wav", audio=330.0)
    applied = extract_batch("music", other, tmp_path / "out2", cache_dir=tmp_path / "cache", progress=False,
                            norm=(store.norm_mean, store.norm_std))
    assert applied.normalisation["source"] == "given"
    np.testing.assert_allclose(applied.features[0], (applied.raw[0] - store.norm_mean) / store.norm_std, rtol=1e-5, atol=1e-5)


def test_specs_of_different_extractors_refuse_to_mix(folder: Path, tmp_path: Path) -> None:
    a = extract_batch("videos", [folder / "pattern.mp4"], tmp_path / "a", cache_dir=tmp_path / "c", progress=False)
    b = extract_batch("videos", [folder / "pattern.mp4"], tmp_path / "b", cache_dir=tmp_path / "c", progress=False, fps=2.0)
    assert a.spec["spec_id"] != b.spec["spec_id"]
    with pytest.raises(SpecMismatch, match=r"preprocessing\.fps"):
        require_same(a.spec, b.spec, "training", "new")
    require_same(a.spec, load_store(tmp_path / "a").spec)


def _cli(*args: str, env_home: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "DECCM_RESNET50_WEIGHTS"}
    env.update(DECCM_HOME=str(env_home), TORCH_HOME=str(env_home / "torch"))  # no ResNet weights to be found
    return subprocess.run([sys.executable, "-m", "deccm.features", *args], capture_output=True, text=True, cwd=REPO, env=env)


@pytest.mark.slow
def test_cli_two_workers_match_one_and_strict_exits_nonzero_naming_the_file(folder: Path, tmp_path: Path) -> None:
    one = extract_batch("videos", folder, tmp_path / "one", cache_dir=tmp_path / "cache1", progress=False)
    proc = _cli("videos", "--in", str(folder), "--out", str(tmp_path / "two"), "--workers", "2",
                "--cache-dir", str(tmp_path / "cache2"), env_home=tmp_path / "home")
    assert proc.returncode == 0, proc.stderr
    assert "4 extracted, 0 from cache, 3 failed" in proc.stdout
    assert "files/s" in proc.stderr or "file/s" in proc.stderr  # the progress bar reports the rate
    two: FeatureStore = load_store(tmp_path / "two", "videos")
    assert two.ids == one.ids
    np.testing.assert_allclose(two.features, one.features, rtol=1e-4, atol=1e-4)

    strict = _cli("videos", "--in", str(folder), "--out", str(tmp_path / "three"), "--strict", "--no-progress",
                  "--cache-dir", str(tmp_path / "cache2"), env_home=tmp_path / "home")
    assert strict.returncode == 1 and "blank.avi: empty file" in strict.stderr
    assert not (tmp_path / "three").exists()


def test_cli_usage_errors_exit_2_with_the_fix(folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture) -> None:
    from deccm.features.__main__ import main

    monkeypatch.delenv("DECCM_RESNET50_WEIGHTS", raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    assert main(["videos", "--in", str(tmp_path / "nowhere"), "--out", str(tmp_path / "x")]) == 2
    assert "no such file or directory" in capsys.readouterr().err
    assert main(["videos", "--in", str(folder), "--out", str(tmp_path / "x"), "--backbone", "resnet50"]) == 2
    assert "--allow-untrained" in capsys.readouterr().err
    assert main(["music", "--in", str(folder), "--out", str(tmp_path / "x"), "--norm-from", str(tmp_path)]) == 2
    assert "expected a music store" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_in_process_extraction_runs_one_torch_thread_and_restores_the_callers(folder: Path, tmp_path: Path,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """workers=1 extracts with one thread (spinning OpenMP threads oversubscribe a shared machine), then restores."""
    import torch

    seen: list[int] = []
    real = VideoExtractor.extract_with_notes

    def spy(self: VideoExtractor, path: Path) -> tuple[np.ndarray, list[str]]:
        seen.append(torch.get_num_threads())
        return real(self, path)

    monkeypatch.setattr(VideoExtractor, "extract_with_notes", spy)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        extract_batch("videos", folder / "pattern.mp4", tmp_path / "a", use_cache=False, progress=False)
        assert seen == [1] and torch.get_num_threads() == 2
        extract_batch("videos", folder / "mute.mp4", tmp_path / "b", use_cache=False, progress=False, threads=2)
        assert seen == [1, 2] and torch.get_num_threads() == 2
        with pytest.raises(ValueError, match="threads must be >= 1"):
            extract_batch("videos", folder / "mute.mp4", tmp_path / "c", use_cache=False, progress=False, threads=0)
    finally:
        torch.set_num_threads(before)
