"""Generate a short silent clip from a visual-property vector with one ffmpeg lavfi graph.

The vector ``(brightness, warmth, motion, cut_rate, texture)``, each in [-1, 1], sets:

* ``brightness`` → mean grey level of the frame, 0.45 + 0.30·b of full scale (before tint);
* ``warmth`` → colour tint, interpolated from cool blue (0.35, 0.65, 1.00) to warm orange
  (1.00, 0.68, 0.30) as RGB gains;
* ``motion`` → speed of the camera-like pan over the texture, 0.15·4^m frame widths per second,
  with a 3-frame shutter (``tmix``) so that, as with a real camera, a fast pan also blurs
  each frame (a per-frame image network can then see speed, not only a motion measure);
* ``cut_rate`` → hard cuts per second, 0.6·3^c: each shot jumps to another place of the
  texture and pans in another direction;
* ``texture`` → spatial frequency of the blob texture, 4·3^x blobs per frame width.

The texture is a seeded hash of a coarse grid (``geq`` on a few hundred pixels, one
frame per second) upscaled bicubically to a canvas three frames wide, duplicated to the
output rate and panned with a time-dependent ``crop``: all native filters, so a 10 s clip
takes about 0.15 s. Clips are H.264 (``libx264 -preset ultrafast``), yuv420p, no audio,
bit-exact flags set so that a rerun makes identical files (and hits the feature cache).
"""
from __future__ import annotations

import functools
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np

VISUAL_PROPERTIES = ("brightness", "warmth", "motion", "cut_rate", "texture")
CANVAS = 3  # texture canvas size in frames per side
SHUTTER_FRAMES = 3  # each frame averages this many pan positions: motion blur grows with speed
COOL = np.array([0.35, 0.65, 1.00])
WARM = np.array([1.00, 0.68, 0.30])


FFMPEG_TIMEOUT_S = 300.0  # one generated clip or track; a hung encoder fails the item instead of the build


@functools.cache
def ffmpeg_exe() -> str:
    """The ffmpeg binary inside the imageio-ffmpeg wheel (no system ffmpeg needed)."""
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


@dataclass(frozen=True)
class ClipParams:
    """The physical parameters one visual-property vector maps to."""

    level: float  # mean grey level, fraction of full scale
    tint: tuple[float, float, float]  # RGB gains
    speed: float  # pan speed, frame widths per second
    cuts_per_s: float
    blobs: float  # texture blobs per frame width

    @classmethod
    def from_properties(cls, v: np.ndarray) -> ClipParams:
        b, w, m, c, x = (float(t) for t in np.clip(np.asarray(v, dtype=np.float64), -1.0, 1.0))
        tint = COOL + (WARM - COOL) * (w + 1) / 2
        return cls(level=0.45 + 0.30 * b, tint=tuple(round(float(t), 4) for t in tint), speed=0.15 * 4.0 ** m,
                   cuts_per_s=0.6 * 3.0 ** c, blobs=4.0 * 3.0 ** x)


def filtergraph(p: ClipParams, width: int, height: int, fps: int, duration: float, seed: int) -> str:
    """The lavfi graph drawing a clip with parameters ``p``; ``seed`` varies texture and shot layout."""
    cw, ch = CANVAS * width, CANVAS * height
    gw = int(round(CANVAS * p.blobs)) + 1
    gh = int(round(CANVAS * p.blobs * height / width)) + 1
    s = (seed % 9973) * 0.7311 + 0.1
    hash_xy = f"(sin(X*12.9898+Y*78.233+{s:.4f})*43758.5453)"
    texture = f"255*({hash_xy}-floor({hash_xy}))"
    shot = f"floor(t*{p.cuts_per_s:.5f})"

    def h(c: float) -> str:  # a per-shot pseudo-random number in [0, 1)
        u = f"(sin(({shot}+{s:.4f})*{c})*43758.5453)"
        return f"({u}-floor({u}))"

    angle = f"6.2832*{h(12.9898)}"
    px = p.speed * width  # pixels per second
    rx, ry = cw - width, ch - height
    x = f"{rx}*abs(mod(abs({px:.4f}*t*cos({angle})/{rx}+2*{h(39.3467)}),2)-1)"
    y = f"{ry}*abs(mod(abs({px:.4f}*t*sin({angle})/{ry}+2*{h(73.1562)}),2)-1)"
    level = f"255*clip({p.level:.4f}+0.5*(val/255-0.5),0,1)"
    r, g, b = p.tint
    return (f"color=c=black:s={gw}x{gh}:r=1:d={int(np.ceil(duration)) + 1},format=gray,geq=lum='{texture}',"
            f"scale={cw}:{ch}:flags=bicubic,format=gray,lut=c0='{level}',fps={fps},crop=w={width}:h={height}:x='{x}':y='{y}',"
            f"tmix=frames={SHUTTER_FRAMES},format=rgb24,colorchannelmixer=rr={r}:gg={g}:bb={b},format=yuv420p")


def make_clip(dest: str | os.PathLike, properties: np.ndarray, duration: float, width: int = 160, height: int = 120,
              fps: int = 12, seed: int = 0) -> Path:
    """Write a silent H.264 MP4 clip drawn from a visual-property vector; raises with ffmpeg's message on failure."""
    dest = Path(dest)
    graph = filtergraph(ClipParams.from_properties(properties), width, height, fps, duration, seed)
    cmd = [ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y", "-filter_complex_threads", "1", "-filter_complex", graph,
           "-t", f"{duration:.3f}", "-an", "-c:v", "libx264", "-preset", "ultrafast", "-crf", "26", "-threads", "1",
           "-pix_fmt", "yuv420p", "-fflags", "+bitexact", "-flags:v", "+bitexact", "-movflags", "+faststart", str(dest)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=FFMPEG_TIMEOUT_S)
    if proc.returncode != 0:
        raise RuntimeError(f"ffmpeg could not make {dest.name}: {proc.stderr.strip()}")
    return dest
