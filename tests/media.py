"""Make small real media files with the ffmpeg binary that imageio-ffmpeg ships.

Shared by the feature tests, the benchmarks and the demo corpus: clips are generated
from ffmpeg's lavfi sources (test patterns, solid colours, fractals, sines, silence), so
no media is checked in and every file is a genuine encode of the format it claims.
"""
from __future__ import annotations

import csv
import functools
import os
import subprocess
from pathlib import Path

import numpy as np

VIDEO_SOURCES = {
    "testsrc2": "testsrc2=size={size}:rate={rate}",
    "mandelbrot": "mandelbrot=size={size}:rate={rate}",
    "smptebars": "smptebars=size={size}:rate={rate}",
    "red": "color=c=red:size={size}:rate={rate}",
    "blue": "color=c=blue:size={size}:rate={rate}",
}
# container suffix -> (video codec args, audio codec args)
CODECS = {
    ".mp4": (["-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p"], ["-c:a", "aac"]),
    ".mov": (["-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p"], ["-c:a", "aac"]),
    ".mkv": (["-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p"], ["-c:a", "libvorbis"]),
    ".webm": (["-c:v", "libvpx", "-b:v", "300k", "-deadline", "realtime"], ["-c:a", "libvorbis"]),
    ".avi": (["-c:v", "mpeg4", "-q:v", "5"], ["-c:a", "pcm_s16le"]),
}
AUDIO_CODECS = {".wav": ["-c:a", "pcm_s16le"], ".ogg": ["-c:a", "libvorbis"], ".m4a": ["-c:a", "aac"], ".flac": ["-c:a", "flac"]}


@functools.cache
def ffmpeg_exe() -> str:
    """The ffmpeg binary inside the imageio-ffmpeg wheel (no system ffmpeg needed)."""
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


def run_ffmpeg(args: list[str]) -> None:
    """Run ffmpeg quietly; on failure raise with its stderr so the reason is visible."""
    proc = subprocess.run([ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y", *args],
                          capture_output=True, text=True, env={**os.environ, "AV_LOG_FORCE_NOCOLOR": "1"}, timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(f"ffmpeg {' '.join(args)} failed:\n{proc.stderr}")


def _audio_source(audio: str | float | None, duration: float) -> list[str]:
    if audio is None:
        return []
    if audio == "silence":
        return ["-f", "lavfi", "-t", f"{duration}", "-i", "anullsrc=channel_layout=stereo:sample_rate=44100"]
    if audio == "noise":
        return ["-f", "lavfi", "-t", f"{duration}", "-i", "anoisesrc=color=pink:amplitude=0.3:sample_rate=44100"]
    return ["-f", "lavfi", "-t", f"{duration}", "-i", f"sine=frequency={float(audio)}:sample_rate=44100"]


def make_clip(path: str | os.PathLike, *, duration: float = 2.0, source: str = "testsrc2", size: str = "160x120",
              rate: float = 10, audio: str | float | None = 440.0, rotate: int | None = None) -> Path:
    """A video clip; ``audio`` is a sine frequency (Hz), ``"silence"``, ``"noise"`` or None (no audio track).

    ``rotate`` stores display-matrix rotation (degrees counter-clockwise), as phones do.
    """
    path = Path(path)
    vcodec, acodec = CODECS[path.suffix.lower()]
    args = ["-f", "lavfi", "-t", f"{duration}", "-i", VIDEO_SOURCES[source].format(size=size, rate=rate)]
    args += _audio_source(audio, duration)
    args += vcodec + (acodec if audio is not None else ["-an"]) + ["-shortest", str(path)]
    run_ffmpeg(args)
    if rotate is not None:
        rotated = path.with_name(f".rot-{path.name}")
        run_ffmpeg(["-display_rotation", str(rotate), "-i", str(path), "-c", "copy", str(rotated)])
        os.replace(rotated, path)
    return path


def make_audio(path: str | os.PathLike, *, duration: float = 2.0, audio: str | float = 440.0) -> Path:
    """An audio-only file (wav/ogg/m4a/flac by suffix) holding a sine, ``"noise"`` or ``"silence"``."""
    path = Path(path)
    run_ffmpeg(_audio_source(audio, duration) + AUDIO_CODECS[path.suffix.lower()] + [str(path)])
    return path


def make_vfr_clip(path: str | os.PathLike, *, size: str = "160x120") -> Path:
    """A variable-frame-rate mp4: 1 s at 25 fps then 1 s at 5 fps, timestamps kept as decoded."""
    path = Path(path)
    run_ffmpeg(["-f", "lavfi", "-t", "2", "-i", f"testsrc2=size={size}:rate=25",
                "-vf", "select='lt(t,1)+gte(t,1)*not(mod(n,5))'", "-fps_mode", "vfr",
                "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", "-an", str(path)])
    return path


def make_unseekable_webm(path: str | os.PathLike, *, duration: float = 12.0, size: str = "64x48") -> Path:
    """A WebM written to a pipe, as a live recorder leaves it: no duration in its header."""
    path = Path(path)
    with open(path, "wb") as out:
        subprocess.run([ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-f", "lavfi", "-t", f"{duration}", "-i",
                        f"testsrc2=size={size}:rate=10", "-c:v", "libvpx", "-deadline", "realtime", "-f", "webm", "pipe:1"],
                       stdout=out, check=True)
    return path


def truncate(src: str | os.PathLike, dst: str | os.PathLike, fraction: float = 0.5) -> Path:
    """Copy the first ``fraction`` of a file's bytes: what an interrupted download leaves."""
    data = Path(src).read_bytes()
    Path(dst).write_bytes(data[: int(len(data) * fraction)])
    return Path(dst)


def one_torch_thread():
    """Generator for a module fixture: torch on one thread, restored afterwards.

    On shared CI cores a second OpenMP thread that has to wait for a busy core makes
    small CNN forwards ~20x slower; one thread keeps the suite's time predictable.
    """
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# A user's own media, as the README walkthrough and the pipeline expect it.
N_TRACKS, N_CLIPS = 104, 36
GENRES = ("bright", "dark", "noisy")
SOURCES = ("testsrc2", "mandelbrot", "smptebars", "red", "blue")


def make_user_media(root: Path) -> None:
    """A folder of clips, a folder of tracks, pairs.csv and tracks.csv, as a user would have them."""
    rng = np.random.default_rng(0)
    (root / "clips").mkdir()
    (root / "tracks").mkdir()
    meta = []
    for i in range(N_TRACKS):
        g = i % len(GENRES)
        audio = "noise" if g == 2 else (220.0 + 7.0 * i if g == 0 else 110.0 + 3.0 * i)
        make_audio(root / "tracks" / f"track-{i:03d}.wav", duration=1.0, audio=audio)
        meta.append({"id": f"track-{i:03d}", "title": f"Tune {i}", "artist": f"Band {i % 7}", "genre": GENRES[g],
                     "licence": "CC0", "path": f"tracks/track-{i:03d}.wav"})
    pairs = []
    for i in range(N_CLIPS):
        make_clip(root / "clips" / f"clip-{i:03d}.mp4", duration=1.5, source=SOURCES[i % len(SOURCES)], audio=None)
        pairs.append({"video": f"clip-{i:03d}", "track": f"track-{int(rng.integers(N_TRACKS)):03d}", "uploader": f"u{i % 6}"})
    for name, rows in (("tracks.csv", meta), ("pairs.csv", pairs)):
        with open(root / name, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
