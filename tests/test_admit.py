"""The media admission rule (deccm.features.admit) against a hostile corpus made on the spot.

Through the decoder, the feature CLI and ffmpeg subprocesses; tests/test_demo.py sends the
same corpus through the demo's HTTP API and ``deccm recommend``.
"""
from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import hostile
import media
from deccm.features import admit, decode
from deccm.features.admit import DecodeError

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> list[hostile.Case]:
    root = tmp_path_factory.mktemp("hostile")
    return hostile.make_corpus(root / "upload", hostile.make_secret(root / "private"))


@pytest.mark.parametrize("head, demuxer, looks", [
    (b"\x00\x00\x00\x20ftypisom", "mov", "MP4/MOV"),
    (b"\x00\x00\x00\x08wide\x00\x00", "mov", "MP4/MOV"),
    (b"\x1a\x45\xdf\xa3\x01", "matroska", "Matroska/WebM"),
    (b"RIFF\x00\x00\x00\x00AVI LIST", "avi", "AVI"),
    (b"RIFF\x00\x00\x00\x00WAVEfmt ", "wav", "WAV"),
    (b"G" + bytes(187) + b"G" + bytes(187) + b"G" + bytes(187), "mpegts", "MPEG-TS"),
    (b"OggS\x00", "ogg", "Ogg"), (b"fLaC", "flac", "FLAC"), (b"ID3\x04", "mp3", "MP3"),
    (b"\xff\xfb\x90\x00", "mp3", "MPEG audio"), (b"\xff\xf1\x50\x80", "aac", "AAC (ADTS)"),
    (b"#EXTM3U\n#EXT-X-VERSION:3\n", None, "an HLS playlist (.m3u8)"),
    (b"\xef\xbb\xbf#EXTM3U\n", None, "an HLS playlist (.m3u8)"),
    (b"ffconcat version 1.0\nfile a.mp4\n", None, "an ffconcat list"),
    (b"\x89PNG\r\n\x1a\n", None, "a PNG image"), (b"GIF89a", None, "a GIF image"), (b"\xff\xd8\xff\xe0", None, "a JPEG image"),
    (b"RIFF\x00\x00\x00\x00WEBPVP8 ", None, "a WebP image"), (b"\x00\x00\x01\xba", None, "an MPEG program stream"),
    (b"hello world\n", None, "text"), (bytes(range(200, 256)), None, "unrecognised content"),
])
def test_sniff_names_the_allowed_demuxer_or_what_the_file_is(head: bytes, demuxer: str | None, looks: str) -> None:
    assert admit.sniff(head) == (demuxer, looks)


def test_every_hostile_case_is_refused_with_its_reason_or_decoded_within_the_caps(corpus: list[hostile.Case]) -> None:
    for case in corpus:
        if case.expect == "refused":
            with pytest.raises(DecodeError) as e:
                decode.read_frames(case.path, fps=1.0, max_frames=16, limits=admit.UPLOAD)
            assert case.reason.lower() in str(e.value).lower(), (case.name, str(e.value))
        else:
            frames = decode.read_frames(case.path, fps=4.0, max_frames=16, limits=admit.UPLOAD)
            n, h, w, c = frames.images.shape
            # whatever the input's size: the short side is 224 and the aspect cap bounds the long one
            assert n >= 1 and c == 3 and min(h, w) == 224 and max(h, w) <= 4 * 224, (case.name, frames.images.shape)


def test_metadata_refusals_need_no_decoding(corpus: list[hostile.Case]) -> None:
    """admit.check opens the container and reads stream headers only: it already refuses every case but the corrupt ones."""
    for case in corpus:
        if case.expect == "served":
            info = admit.check(case.path, "video", admit.UPLOAD)
            assert info.width and info.height and info.demuxer in admit.VIDEO_DEMUXERS
            assert info.ffmpeg_input() == ["-protocol_whitelist", "file", "-f", info.demuxer, "-i", f"file:{case.path}"]
            continue
        with pytest.raises(DecodeError, match=r"(?i)" + case.reason.replace("(", r"\(").replace(")", r"\)")):
            admit.check(case.path, "video", admit.UPLOAD)


def test_a_file_of_many_streams_is_refused_before_a_decoder_is_set_up_for_each(corpus: list[hostile.Case]) -> None:
    """Probing sets up a decoder per stream: 600 tiny AAC streams took 400 MB before the demuxer was told to stop at the cap."""
    code = ("import resource, sys\nfrom deccm.features import admit\nfrom deccm.features.decode import DecodeError\n"
            "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
            "for path in sys.argv[1:]:\n    try:\n        admit.check(path, 'video', admit.UPLOAD)\n"
            "    except DecodeError as e:\n        print(e)\n"
            "print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024)\n")
    paths = [str(c.path) for c in corpus if "streams" in c.path.name]
    out = subprocess.run([sys.executable, "-c", code, *paths], capture_output=True, text=True, timeout=120, check=True)
    lines = out.stdout.strip().splitlines()
    assert len(paths) == 2 and all("more than 16 streams" in line for line in lines[:-1]) and len(lines) == 3, out.stdout
    assert float(lines[-1]) < 100, f"checking two {hostile.MANY_STREAMS}-stream files raised the peak RSS by {lines[-1]} MB"


def test_a_stream_that_grows_past_the_pixel_cap_mid_way_stops_there(corpus: list[hostile.Case]) -> None:
    grows = next(c for c in corpus if c.name == "grows to 8K mid-stream")
    assert (admit.check(grows.path).width, admit.check(grows.path).height) == (320, 240)  # the header it is admitted on
    frames = decode.read_frames(grows.path, fps=20.0, max_frames=40, limits=admit.UPLOAD)
    assert frames.images.shape[1:] == (224, 299, 3)
    assert frames.times.max() < 1.0  # only the 320x240 second: the 8K frames never decode
    assert any("video decoding stopped" in n for n in frames.notes)


def test_limits_are_the_issued_caps_and_the_clip_rules_are_checked(tmp_path: Path) -> None:
    up = admit.UPLOAD
    assert (up.max_pixels, up.max_aspect, up.min_side, up.max_fps) == (4096 * 2160, 4.0, 16, 240.0)
    ok = media.make_clip(tmp_path / "ok.mp4", duration=2.0, size="64x16", rate=10)  # 4:1 and 16 px: on the limits
    assert admit.check(ok, "video", up).fps == 10
    media.make_clip(tmp_path / "small.mp4", duration=1.0, size="64x12", rate=10)
    with pytest.raises(DecodeError, match="the shorter side must be at least 16"):
        admit.check(tmp_path / "small.mp4", "video", up)
    with pytest.raises(DecodeError, match=r"at most 1\.0 s is accepted"):
        admit.check(ok, "video", admit.Limits(max_seconds=1.0))
    with pytest.raises(DecodeError, match="20 frames: at most 10 are accepted"):
        admit.check(ok, "video", admit.Limits(max_frames=10))
    (tmp_path / "dir.mp4").mkdir()
    with pytest.raises(DecodeError, match="is a directory"):
        admit.check(tmp_path / "dir.mp4")
    with pytest.raises(DecodeError, match="missing file"):
        admit.check(tmp_path / "nothing.mp4")


def test_audio_admission_reads_tracks_and_soundtracks_but_no_playlists(tmp_path: Path, corpus: list[hostile.Case]) -> None:
    wav = media.make_audio(tmp_path / "a.wav", duration=1.0)
    clip = media.make_clip(tmp_path / "c.mkv", duration=1.0, audio=440.0)
    assert admit.check(wav, "audio", admit.TRACK).demuxer == "wav"
    assert decode.read_audio(clip).samples.size > 0  # music extraction reads a video's soundtrack
    for case in corpus:
        if case.name.startswith(("hls", "ffconcat")):
            with pytest.raises(DecodeError, match="not an accepted format"):
                decode.read_audio(case.path)
    with pytest.raises(DecodeError, match="no audio stream"):
        admit.check(next(c.path for c in corpus if c.name.startswith("4K")), "audio")


def test_decoding_stops_at_the_deadline_and_at_the_frame_budget(tmp_path: Path) -> None:
    clip = media.make_clip(tmp_path / "c.mp4", duration=4.0, size="320x240", rate=25)
    assert decode.read_frames(clip, fps=5.0, max_frames=20).images.shape[0] == 20
    with admit.budget(1e-4), pytest.raises(DecodeError, match="longer than its time budget"):
        decode.read_frames(clip, fps=5.0, max_frames=20)
    with pytest.raises(DecodeError, match="longer than its time budget"):
        decode.read_audio(media.make_audio(tmp_path / "a.wav", duration=2.0), limits=admit.Limits(budget_s=0.0))
    with admit.budget(60.0):
        with admit.budget(1.0):
            assert admit.time_left() <= 1.0  # the inner, earlier end wins
        assert 1.0 < admit.time_left() <= 60.0
    clock = admit.Clock(admit.CLIP, max_frames=3)
    for _ in range(3):
        clock.tick()
    with pytest.raises(DecodeError, match="more than 3 frames decoded"):
        clock.tick()
    assert admit.CLIP.frame_budget(10.0) == 240 * 20 + 256


def test_ffmpeg_subprocesses_have_a_timeout() -> None:
    with pytest.raises(DecodeError, match="longer than its 1 s limit"):
        admit.run_ffmpeg(["-f", "lavfi", "-i", "testsrc2=size=1280x720:rate=30", "-t", "600", "-f", "null", "-"], timeout=1.0)


def test_the_feature_cli_lists_each_hostile_file_with_its_reason(corpus: list[hostile.Case], tmp_path: Path) -> None:
    manifest = tmp_path / "clips.csv"
    with open(manifest, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "path"])
        w.writerows([f"case{i:02d}", str(c.path)] for i, c in enumerate(corpus))
    proc = subprocess.run([sys.executable, "-m", "deccm.features", "videos", "--in", str(manifest), "--out", str(tmp_path / "out"),
                           "--no-progress", "--no-cache"], capture_output=True, text=True, cwd=REPO, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr + proc.stdout
    served = [c for c in corpus if c.expect == "served"]
    assert f"{len(served)} extracted, 0 from cache, {len(corpus) - len(served)} failed" in proc.stdout
    with open(tmp_path / "out" / "features" / "videos" / "failures.csv", newline="") as f:
        failures = {r["id"]: r for r in csv.DictReader(f)}
    for i, case in enumerate(corpus):
        if case.expect == "refused":
            reason = failures[f"case{i:02d}"]["reason"]
            assert case.reason.lower() in reason.lower(), (case.name, reason)
    vectors = np.load(tmp_path / "out" / "features" / "videos" / "features.npy", allow_pickle=False)
    assert vectors.shape[0] == len(served) and np.isfinite(vectors).all()
