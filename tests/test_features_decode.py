"""Decoding real files made by ffmpeg: every container, VFR, rotation, short/long clips and broken files."""
from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest

import media
from deccm.features import decode
from deccm.features.decode import DecodeError, read_audio, read_frames


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("clips")
    c = {
        "mp4": media.make_clip(d / "a.mp4"),
        "mov": media.make_clip(d / "a.mov", source="smptebars"),
        "webm": media.make_clip(d / "a.webm", source="mandelbrot"),
        "avi": media.make_clip(d / "a.avi"),
        "mkv": media.make_clip(d / "a.mkv"),
        "noaudio": media.make_clip(d / "noaudio.mp4", audio=None),
        "short": media.make_clip(d / "short.mp4", duration=0.5),
        "silent": media.make_clip(d / "silent.mp4", source="red", audio="silence"),
        "rot90": media.make_clip(d / "rot90.mp4", rotate=90),
        "vfr": media.make_vfr_clip(d / "vfr.mp4"),
        "long": media.make_clip(d / "long.mp4", duration=40, size="64x48", rate=5, audio=None),
        "wav": media.make_audio(d / "tone.wav", audio=440.0),
    }
    c["truncated"] = media.truncate(c["mp4"], d / "truncated.mp4")
    (d / "notes.mp4").write_text("this is a text file renamed to .mp4\n")
    c["text"] = d / "notes.mp4"
    (d / "empty.mp4").write_bytes(b"")
    c["empty"] = d / "empty.mp4"
    (d / "noise.mp4").write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    c["garbage"] = d / "noise.mp4"
    return c


@pytest.mark.parametrize("kind", ["mp4", "mov", "webm", "avi", "mkv"])
def test_each_container_gives_frames_at_one_fps_and_16k_mono_audio(clips: dict[str, Path], kind: str) -> None:
    frames = read_frames(clips[kind], fps=1.0, max_frames=16)
    # 160x120 scaled so the short side is 224 → 299x224; a 2 s clip at 1 fps → frames shown at 0.5 s and 1.5 s
    assert frames.images.shape == (2, 224, 299, 3) and frames.images.dtype == np.uint8
    np.testing.assert_allclose(frames.times, [0.5, 1.5], atol=0.01)  # webm/mkv durations read 2.003 s
    assert frames.images.std() > 10  # real picture content, not a blank buffer
    audio = read_audio(clips[kind])
    assert audio.sample_rate == 16_000 and audio.samples.ndim == 1 and audio.samples.dtype == np.float32
    assert abs(audio.samples.size / 16_000 - 2.0) < 0.1
    spectrum = np.abs(np.fft.rfft(audio.samples))
    assert abs(np.argmax(spectrum) * 16_000 / audio.samples.size - 440) < 5  # the sine survived resampling


def test_clip_without_audio_has_frames_and_a_named_audio_failure(clips: dict[str, Path]) -> None:
    assert read_frames(clips["noaudio"]).images.shape[0] == 2
    with pytest.raises(DecodeError, match="^no audio stream$"):
        read_audio(clips["noaudio"])
    with pytest.raises(DecodeError, match="^no video stream"):
        read_frames(clips["wav"])


def test_half_second_clip_still_gives_one_frame_and_its_audio(clips: dict[str, Path]) -> None:
    frames = read_frames(clips["short"], fps=1.0)
    assert frames.images.shape == (1, 224, 299, 3)
    np.testing.assert_allclose(frames.times, [0.25])
    assert 0.4 < read_audio(clips["short"]).samples.size / 16_000 < 0.6


def test_silent_track_decodes_to_silence(clips: dict[str, Path]) -> None:
    audio = read_audio(clips["silent"])
    assert audio.samples.size > 30_000 and np.abs(audio.samples).max() < 1e-4


def test_rotation_metadata_gives_display_oriented_frames(clips: dict[str, Path], tmp_path: Path) -> None:
    frames = read_frames(clips["rot90"], fps=1.0, short_side=None)
    assert frames.rotation == 90
    assert frames.images.shape == (2, 160, 120, 3)  # stored 160x120 landscape, displayed portrait
    # ffmpeg's own auto-rotation is the reference for the direction of the turn
    raw = tmp_path / "frame.rgb"
    media.run_ffmpeg(["-i", str(clips["rot90"]), "-ss", "0.5", "-frames:v", "1", "-f", "rawvideo", "-pix_fmt", "rgb24", str(raw)])
    reference = np.fromfile(raw, dtype=np.uint8).reshape(160, 120, 3)
    assert np.abs(frames.images[0].astype(int) - reference).mean() < 2
    assert np.abs(np.rot90(frames.images[0], 2).astype(int) - reference).mean() > 20  # the other way round is wrong


def test_variable_frame_rate_is_sampled_by_timestamp_not_by_frame_index(tmp_path: Path) -> None:
    # 1 s of red at 25 fps, then 3 s of blue at 1 fps: 28 frames. An index-based sampler
    # assuming a constant 7 fps would take frame 10 for t = 1.5 s, which is still red.
    path = tmp_path / "vfr.mp4"
    media.run_ffmpeg(["-filter_complex", "color=c=red:s=64x48:r=25:d=1,settb=1/1000[a];"
                      "color=c=blue:s=64x48:r=1:d=3,settb=1/1000[b];[a][b]concat=n=2:v=1:a=0",
                      "-fps_mode", "vfr", "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", str(path)])
    frames = read_frames(path, fps=1.0, short_side=None)
    np.testing.assert_allclose(frames.times, [0.5, 1.5, 2.5, 3.5])
    red = frames.images[:, 24, 32, 0] > 200
    blue = frames.images[:, 24, 32, 2] > 200
    assert red.tolist() == [True, False, False, False] and blue.tolist() == [False, True, True, True]


def test_vfr_helper_clip_decodes(clips: dict[str, Path]) -> None:
    frames = read_frames(clips["vfr"], fps=2.0)
    assert frames.images.shape[0] == 3 and np.all(np.diff(frames.times) > 0)


def test_long_clip_is_evenly_spread_and_capped_with_a_note(clips: dict[str, Path]) -> None:
    spread = read_frames(clips["long"], fps=1.0, max_frames=4)
    np.testing.assert_allclose(spread.times, [5, 15, 25, 35])
    assert spread.notes == []
    capped = read_frames(clips["long"], fps=1.0, max_frames=16, max_seconds=10)
    np.testing.assert_allclose(capped.times, np.arange(10) + 0.5)
    assert any(n.startswith("capped: used the first 10 s of 40.0 s") for n in capped.notes)


def test_clip_of_unknown_length_is_sampled_while_decoding(tmp_path: Path) -> None:
    path = media.make_unseekable_webm(tmp_path / "live.webm", duration=12.0)
    frames = read_frames(path, fps=1.0, max_frames=4, short_side=None)
    assert frames.duration is None and "duration unknown: sampled while decoding" in frames.notes
    assert frames.images.shape == (4, 48, 64, 3)
    assert np.all(np.diff(frames.times) > 2) and frames.times[0] < 1 and frames.times[-1] > 9  # spread over the clip


def test_seeking_picks_the_same_frames_as_decoding_everything(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "keyframes.mp4"
    media.run_ffmpeg(["-f", "lavfi", "-t", "30", "-i", "testsrc2=size=64x48:rate=10", "-c:v", "libx264", "-g", "20",
                      "-preset", "ultrafast", "-pix_fmt", "yuv420p", str(path)])
    sought = read_frames(path, max_frames=3, short_side=None)  # targets 10 s apart → seeks
    monkeypatch.setattr(decode, "SEEK_GAP_S", float("inf"))
    sequential = read_frames(path, max_frames=3, short_side=None)
    np.testing.assert_allclose(sought.times, [5, 15, 25])
    np.testing.assert_array_equal(sought.images, sequential.images)
    assert len({f.tobytes() for f in sought.images}) == 3  # three different moments, not one frame repeated


@pytest.mark.parametrize("name, reason", [
    ("truncated", r"^truncated or corrupt MP4/MOV file \(cannot parse container"),
    ("text", r"^not a media file \(looks like text\)$"),
    ("empty", r"^empty file$"),
    ("garbage", r"^not a media file \(unrecognised content; accepted: "),
])
def test_broken_files_raise_a_named_reason(clips: dict[str, Path], name: str, reason: str) -> None:
    with pytest.raises(DecodeError, match=reason):
        read_frames(clips[name])
    with pytest.raises(DecodeError, match=reason):
        read_audio(clips[name])


def test_missing_file_and_directory_are_named(tmp_path: Path) -> None:
    with pytest.raises(DecodeError, match="^missing file$"):
        read_frames(tmp_path / "nope.mp4")
    with pytest.raises(DecodeError, match="directory"):
        read_audio(tmp_path)


def test_truncated_webm_keeps_what_decodes_and_says_so(clips: dict[str, Path], tmp_path: Path) -> None:
    # WebM has its index up front, so a cut file still opens: the decodable part is used, with a note.
    cut = media.truncate(clips["webm"], tmp_path / "cut.webm", fraction=0.3)
    frames = read_frames(cut, fps=1.0)
    assert frames.images.shape[0] >= 1
    assert any("truncated?" in n for n in frames.notes)


def test_ffmpeg_used_by_tests_is_the_bundled_one() -> None:
    out = subprocess.run([media.ffmpeg_exe(), "-hide_banner", "-encoders"], capture_output=True, text=True, check=True).stdout
    for enc in ("libx264", "libvpx", "libvorbis", "aac", "mpeg4"):
        assert f" {enc} " in out
