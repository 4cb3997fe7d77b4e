"""A corpus of hostile uploads, made on the spot with ffmpeg's lavfi sources and by hand.

Shared by tests/test_admit.py (every case through the decoder, ``deccm recommend``, the
feature CLI and the demo's HTTP API) and benchmarks/hostile_media.py (time and memory per
case). Each case says what a safe server does with it: ``refused`` (a message naming the
file and the reason) or ``served`` (within the caps). The playlist and concat cases point
at ``secret``, a video outside the upload, so a leak would be visible in what comes back.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import media


MANY_STREAMS = 600


@dataclass(frozen=True)
class Case:
    name: str
    path: Path
    expect: str  # "refused" or "served"
    reason: str  # a phrase the refusal must contain (case-insensitive); "" for served cases


def _x264(path: Path, source: str, seconds: float, rate: float, extra: list[str] | None = None) -> Path:
    media.run_ffmpeg(["-f", "lavfi", "-t", f"{seconds}", "-i", f"{source}:rate={rate}", *(extra or []),
                      "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", "-an", str(path)])
    return path


def make_secret(root: Path) -> Path:
    """The server-side video a leak would return: solid magenta, 2 s."""
    root.mkdir(parents=True, exist_ok=True)
    return _x264(root / "secret.mp4", "color=c=magenta:size=96x64", 2.0, 10)


def make_corpus(root: Path, secret: Path, *, heavy: bool = False) -> list[Case]:
    """Every hostile case as a file under ``root``. ``heavy`` makes the benchmark's larger variants (40 s at 1000 fps)."""
    root.mkdir(parents=True, exist_ok=True)
    playlist = ("#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:2\n#EXT-X-MEDIA-SEQUENCE:0\n"
                f"#EXTINF:2.0,\nfile://{secret}\n#EXT-X-ENDLIST\n")
    (root / "playlist.m3u8").write_text(playlist)
    (root / "playlist.mp4").write_text(playlist)
    (root / "list.ffconcat").write_text(f"ffconcat version 1.0\nfile '{secret}'\n")
    (root / "concat.mp4").write_text(f"ffconcat version 1.0\nfile '{secret}'\n")
    for i in range(3):  # an image sequence beside a pattern-named upload that is itself one of its frames
        media.run_ffmpeg(["-f", "lavfi", "-i", "testsrc2=size=64x48", "-frames:v", "1", str(root / f"frame{i:03d}.png")])
    (root / "frame%03d.png").write_bytes((root / "frame000.png").read_bytes())
    (root / "frame%03d.mp4").write_bytes((root / "frame000.png").read_bytes())
    _x264(root / "thin.mp4", "color=c=red:size=16x8192", 2.0, 2)
    _x264(root / "huge.mp4", "color=c=blue:size=7680x4320", 0.2, 5)
    fast = 40.0 if heavy else 4.0
    _x264(root / "fps1000.mp4", "color=c=green:size=64x48", fast, 1000)
    _x264(root / "two_hours.mp4", "color=c=gray:size=64x48", 7200.0, 1, ["-g", "600"])
    _x264(root / "uhd4k.mp4", "testsrc2=size=3840x2160", 1.0, 10)
    media.make_clip(root / "full.mp4", duration=2.0)
    media.truncate(root / "full.mp4", root / "truncated.mp4", 0.4)
    (root / "full.mp4").unlink()
    (root / "random.mp4").write_bytes(np.random.default_rng(0).integers(0, 256, 65_536, dtype=np.uint8).tobytes())
    (root / "empty.mp4").write_bytes(b"")
    media.make_audio(root / "audio_only.m4a", duration=2.0)
    media.run_ffmpeg(["-f", "lavfi", "-t", "1", "-i", "testsrc2=size=64x48:rate=10", str(root / "anim.gif")])
    (root / "still.mp4").write_bytes((root / "frame000.png").read_bytes())
    (root / "riff_trick.avi").write_bytes(b"RIFF" + struct.pack("<I", 4096) + b"AVI LIST" + b"\x00" * 4096)
    # a transport stream whose second half switches to 8K frames: admitted on its first header, stopped by the decoder's cap
    parts = [_x264(root / "small.ts", "testsrc2=size=320x240", 1.0, 10), _x264(root / "big.ts", "color=c=blue:size=7680x4320", 0.5, 10)]
    (root / "grows.ts").write_bytes(b"".join(p.read_bytes() for p in parts))
    for p in parts:
        p.unlink()
    media.run_ffmpeg(["-f", "lavfi", "-t", "2", "-i", "sine=frequency=440", "-f", "lavfi", "-i", "testsrc2=size=64x48",
                      "-frames:v", "1", "-map", "0:a", "-map", "1:v", "-c:a", "aac", "-c:v", "mjpeg", "-disposition:v", "attached_pic",
                      str(root / "cover.m4a")])
    _x264(root / "tags.mkv", "testsrc2=size=160x120", 1.0, 10, ["-metadata", "title=bad\udcff\udcfe"])
    for name in ("streams.mkv", "streams.mp4"):  # 600 tiny AAC streams: probing them all took 400 MB and 0.3 s
        media.run_ffmpeg(["-f", "lavfi", "-i", "testsrc2=d=0.2:s=64x48:r=10", "-f", "lavfi", "-i", "sine=d=0.1:sample_rate=8000",
                          "-map", "0", *["-map", "1"] * MANY_STREAMS, "-c:v", "libx264", "-preset", "ultrafast", "-c:a", "aac",
                          "-ac", "1", str(root / name)])
    return [
        Case("hls playlist", root / "playlist.m3u8", "refused", "HLS playlist"),
        Case("hls playlist renamed .mp4", root / "playlist.mp4", "refused", "HLS playlist"),
        Case("ffconcat list", root / "list.ffconcat", "refused", "ffconcat list"),
        Case("ffconcat list renamed .mp4", root / "concat.mp4", "refused", "ffconcat list"),
        Case("image-sequence pattern", root / "frame%03d.png", "refused", "still image"),
        Case("image-sequence pattern as .mp4", root / "frame%03d.mp4", "refused", "still image"),
        Case("thin frames 16x8192", root / "thin.mp4", "refused", "aspect ratio"),
        Case("huge frames 7680x4320", root / "huge.mp4", "refused", "megapixels"),
        Case(f"{fast:g} s at 1000 fps", root / "fps1000.mp4", "refused", "frames per second"),
        Case("2 h at 1 fps", root / "two_hours.mp4", "refused", "long"),
        Case("4K 3840x2160", root / "uhd4k.mp4", "served", ""),
        Case("truncated mp4", root / "truncated.mp4", "refused", "truncated or corrupt"),
        Case("random bytes", root / "random.mp4", "refused", "not a media file"),
        Case("empty file", root / "empty.mp4", "refused", "empty file"),
        Case("audio only", root / "audio_only.m4a", "refused", "no video stream"),
        Case("animated GIF", root / "anim.gif", "refused", "GIF image"),
        Case("PNG renamed .mp4", root / "still.mp4", "refused", "PNG image"),
        Case("AVI header, no streams", root / "riff_trick.avi", "refused", "AVI"),
        Case("grows to 8K mid-stream", root / "grows.ts", "served", ""),
        Case("tags that are not UTF-8", root / "tags.mkv", "served", ""),
        Case("audio with a cover picture", root / "cover.m4a", "refused", "only a cover picture"),
        Case(f"{MANY_STREAMS} audio streams (Matroska)", root / "streams.mkv", "refused", "more than 16 streams"),
        Case(f"{MANY_STREAMS} audio streams (MP4)", root / "streams.mp4", "refused", "more than 16 streams"),
    ]
