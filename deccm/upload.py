"""What an upload to the demo may be, and the media the demo makes from it.

- :func:`check_upload`: the cheap admission of an upload (size, then the media rule of
  :mod:`deccm.features.admit`: allow-listed container, stream metadata within the caps, a
  pixel budget for decoding), or a :class:`DemoError` whose message names the file and says
  what is wrong. Nothing is decoded. A clip longer than the limit, or heavier than the
  budget, is used: its first seconds are ranked and the notes say so.
- :func:`preview`: the clip with a track laid under it (H.264 + AAC mp4, as long as the part
  that was ranked, at most 30 fps and 720p), muxed with the ffmpeg binary of imageio-ffmpeg
  (both inputs admitted, demuxers forced, a timeout) and written atomically; also what
  "download" gives.

:mod:`deccm.demo` ranks the admitted clip and serves the page (docs/architecture.md, "Media admission").
"""
from __future__ import annotations

import hashlib
import math
import os
from dataclasses import dataclass
from pathlib import Path

from deccm import safeio
from deccm.features import admit
from deccm.features.admit import DecodeError

MAX_BYTES = 200_000_000  # 200 MB
MAX_SECONDS = 60.0  # the part of a clip that is ranked
LIMITS = admit.UPLOAD  # what an upload may declare: 4K, 4:1, 240 fps, 10 min; 4 s of decoding
# Pixels one request decodes at most (width x height x frames), so a legitimate heavy clip is ranked on the part that
# fits the request's decoding deadline (deccm.demo.REQUEST_BUDGET_S, 4 s) instead of being refused when it runs out:
# 1080p30 for 6.4 s, 720p30 for 14 s, 640x360 at 30 fps for 58 s; about 1.5 s of one core here, so a host twice as
# slow still fits the deadline (docs/benchmarks.md, "Heavy but legitimate clips"). H.264, HEVC, VP9 and AV1 decode at
# about the same pixel rate here (AV1 faster), so one budget serves them all.
DECODE_BUDGET_PX = 0.4e9
MIN_RANKED_S = 0.5  # a clip so heavy that less than this fits is refused before anything is decoded (4K at 120 fps)
PREVIEW_SHORT_SIDE = 480  # previews are scaled down to this (never up): quick to encode and to stream
PREVIEW_LONG_SIDE = 1280  # and to at most 720p's long side
PREVIEW_MAX_FPS = 30
PREVIEW_MAX_S = MAX_SECONDS  # a preview (and the download) lasts as long as the part of the clip that was ranked
PREVIEW_TIMEOUT_S = 30.0


class DemoError(Exception):
    """Something the person using the demo can fix; ``str(err)`` is the message shown to them."""


@dataclass(frozen=True)
class Upload:
    """A clip that passed :func:`check_upload`."""

    path: Path
    name: str  # the file name as uploaded
    bytes: int
    duration: float | None  # seconds; None when the container does not say
    used_seconds: float | None  # what will be ranked: min(duration, limit); None when unknown
    capped: bool  # longer than the limit (or of unknown length): only the first max_seconds are used
    notes: tuple[str, ...]
    info: admit.MediaInfo  # what the file declared: opened again with the same demuxer


def _mb(n: int) -> str:
    if n < 10**6:
        return f"{n / 1e3:.1f} kB"
    return f"{n / 1e6:.1f} MB" if n < 10**9 else f"{n / 1e9:.2f} GB"


def check_upload(path: str | os.PathLike | None, max_bytes: int = MAX_BYTES, max_seconds: float = MAX_SECONDS,
                 limits: admit.Limits = LIMITS) -> Upload:
    """The clip if the demo may decode it, else :class:`DemoError` naming the file and the reason. Decodes nothing.

    Refused: no file, an empty file, a file over ``max_bytes``, anything that is not an
    allow-listed video container (text, playlists, concat lists, images, audio only …),
    and streams whose metadata break ``limits`` (frame size, aspect, frame rate, frame
    count, length). A clip longer than ``max_seconds`` is not refused: the first
    ``max_seconds`` are used and ``notes`` say so.
    """
    if path is None or str(path) == "":
        raise DemoError("No clip was uploaded. Upload a video (mp4, mov, webm …) or pick one of the examples.")
    path = Path(path)
    name = path.name
    if not path.is_file():
        raise DemoError(f"{name}: the uploaded file is missing. Upload it again.")
    size = path.stat().st_size
    if size == 0:
        raise DemoError(f"{name} is an empty file (0 bytes). Upload the video again; the upload may have been cut off.")
    if size > max_bytes:
        raise DemoError(f"{name} is {_mb(size)}: the demo takes clips up to {_mb(max_bytes)}. "
                        f"Upload a shorter or smaller clip (only the first {max_seconds:g} s are used anyway).")
    try:
        info = admit.check(path, "video", limits)
    except DecodeError as e:
        raise DemoError(f"{name} is not a usable video: {e}. Upload a video file (mp4, mov, webm …).") from None
    duration = info.duration
    notes: list[str] = []
    heavy = _affordable_seconds(info)
    if heavy is not None and heavy < MIN_RANKED_S:
        raise DemoError(f"{name} is too heavy to decode here: {info.width}x{info.height} pixels at {info.fps:g} frames per "
                        f"second; less than {MIN_RANKED_S:g} s of it fits the demo's decoding budget. Upload a version with "
                        f"fewer pixels or frames per second (1080p at 30 fps is ranked on its first "
                        f"{math.floor(DECODE_BUDGET_PX / (1920 * 1080 * 30) * 10) / 10:g} s).")
    if heavy is not None and heavy < min(duration or math.inf, max_seconds):
        used: float | None = math.floor(heavy * 10) / 10
        capped = True
        notes.append(f"{info.width}x{info.height} at {info.fps:g} fps takes long to decode: used the first {used:g} s "
                     f"(a version with fewer pixels or frames per second is ranked on up to {max_seconds:g} s)")
    elif duration is None:
        used, capped = None, True
        notes.append(f"the clip does not state its length: at most its first {max_seconds:g} s are used")
    elif duration > max_seconds:
        used, capped = max_seconds, True
        notes.append(f"the clip is {duration:.1f} s long: used the first {max_seconds:g} s")
    else:
        used, capped = duration, False
    return Upload(path=path, name=name, bytes=size, duration=duration, used_seconds=used, capped=capped, notes=tuple(notes),
                  info=info)


def _affordable_seconds(info: admit.MediaInfo) -> float | None:
    """How many seconds of the clip :data:`DECODE_BUDGET_PX` decodes (None when the stream does not say its size and rate)."""
    if not (info.width and info.height and info.fps):
        return None
    return DECODE_BUDGET_PX / (info.width * info.height * info.fps)


def first_seconds(up: Upload, seconds: float, folder: Path) -> Path:
    """The first ``seconds`` of a clip's video, remuxed without re-encoding (fast, lossless) into ``folder`` in the
    container it came in."""
    dest = Path(folder) / f"first.{_SUFFIX[up.info.demuxer]}"
    _ffmpeg([*up.info.ffmpeg_input(), "-map", f"0:{up.info.video_stream}", "-map_metadata", "-1", "-t", f"{seconds:g}",
             "-c", "copy", "-an", str(dest)], up.name)
    return dest


def _ffmpeg(args: list[str], name: str, timeout: float = admit.FFMPEG_TIMEOUT_S) -> None:
    try:
        admit.run_ffmpeg(args, timeout=timeout)
    except DecodeError as e:
        raise DemoError(f"{name} could not be processed: {e}") from None


_SUFFIX = {"mov": "mp4", "matroska": "mkv", "avi": "avi", "mpegts": "ts"}  # a remux keeps the container it came in


def preview(video_path: str | os.PathLike, audio_path: str | os.PathLike | None, out_dir: str | os.PathLike,
            max_seconds: float = MAX_SECONDS, limits: admit.Limits = LIMITS) -> Path:
    """The clip with ``audio_path`` laid under it (its own sound replaced): an H.264 + AAC mp4 in ``out_dir``.

    Both inputs must pass the media rule (the clip as a video under ``limits``, the track
    as audio); ffmpeg opens them with the admitted demuxers forced, the ``file`` protocol
    only, and a timeout. As long as the clip, at most ``max_seconds`` and
    :data:`PREVIEW_MAX_S` (a moment rendered to the clip's length fills it exactly; a
    shorter track ends it early); at most 30 fps; scaled down so its shorter side is at most
    480 px and its longer at most 1280 (720p). Written atomically; the same inputs give the
    same file name, so a repeated request reuses it. It is also what "download" gives.
    """
    if audio_path is None or not Path(audio_path).is_file():
        raise DemoError(f"no audio file for this track ({audio_path or 'the catalog has no media'}): nothing to lay under the clip")
    video_path, audio_path = Path(video_path), Path(audio_path)
    try:
        clip = admit.check(video_path, "video", limits)
    except DecodeError as e:
        raise DemoError(f"{video_path.name} is not a usable video: {e}") from None
    try:
        track = admit.check(audio_path, "audio", admit.TRACK)
    except DecodeError as e:
        raise DemoError(f"the track {audio_path.name} cannot be played: {e}") from None
    seconds = min([d for d in (clip.duration, float(max_seconds), PREVIEW_MAX_S) if d])
    # -shortest: a shorter track ends the preview early, and so does a clip that does not state its length
    shortest = ["-shortest"] if clip.duration is None or (track.duration is not None and track.duration < seconds - 0.01) else []
    key = hashlib.sha256(f"{video_path.resolve()}|{video_path.stat().st_size}|{video_path.stat().st_mtime_ns}|"
                         f"{audio_path.resolve()}|{seconds:.3f}".encode()).hexdigest()[:16]
    dest = Path(out_dir) / f"preview-{key}.mp4"
    if dest.is_file():
        return dest
    s = f"min(1,min({PREVIEW_SHORT_SIDE}/min(iw,ih),{PREVIEW_LONG_SIDE}/max(iw,ih)))"
    scale = f"scale=w='2*trunc(iw*{s}/2)':h='2*trunc(ih*{s}/2)'"
    with safeio.atomic_path(dest) as tmp:
        _ffmpeg([*clip.ffmpeg_input(), *track.ffmpeg_input(), "-map", f"0:{clip.video_stream}", "-map", "1:a:0",
                 "-map_metadata", "-1",
                 "-t", f"{seconds:.3f}",
                 "-vf", scale, "-fpsmax", str(PREVIEW_MAX_FPS), "-c:v", "libx264", "-preset", "veryfast", "-pix_fmt", "yuv420p",
                 "-c:a", "aac", "-b:a", "128k", "-ac", "2", "-movflags", "+faststart", *shortest, "-f", "mp4", str(tmp)],
                video_path.name, timeout=PREVIEW_TIMEOUT_S)
    return dest
