"""Decode media with PyAV: sampled RGB frames and 16 kHz mono audio.

Every problem a user can hit with a real file becomes a :class:`DecodeError` whose
message says what is wrong in words ("empty file", "no video stream", "not a media
file", "truncated or corrupt MP4/MOV file ..."), so a batch run can list it and go on.

Frames are sampled at ``fps`` (at most ``max_frames`` per clip, evenly spread over
long clips) at the time they are *displayed*: the frame shown at time t is the last one
whose timestamp is <= t, which keeps variable-frame-rate clips right. Display-matrix
rotation (phone videos) is applied, so frames come out the way a player shows them.
Only the first ``max_seconds`` of a clip are used; a longer clip is capped and the
returned ``notes`` say so.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import av
import numpy as np
from av.video.reformatter import VideoReformatter

VIDEO_EXTENSIONS = frozenset({".mp4", ".m4v", ".mov", ".webm", ".avi", ".mkv", ".mpg", ".mpeg", ".flv", ".wmv", ".3gp", ".ts"})
AUDIO_EXTENSIONS = frozenset({".wav", ".mp3", ".flac", ".ogg", ".oga", ".opus", ".m4a", ".aac", ".wma", ".aif", ".aiff"})

SAMPLE_RATE = 16_000
# Targets further apart than this are reached by seeking instead of decoding every frame.
SEEK_GAP_S = 5.0
# A target this far past the last decodable frame means the stream ended early.
END_SLACK_S = 1.0


class DecodeError(Exception):
    """A file that cannot be used; ``str(err)`` is the reason shown to the user."""


@dataclass
class Frames:
    """RGB frames (N, H, W, 3) uint8 and the clip times (s) they were shown at."""

    images: np.ndarray
    times: np.ndarray
    duration: float | None
    rotation: int
    notes: list[str] = field(default_factory=list)


@dataclass
class Audio:
    """Mono float32 samples in [-1, 1] at ``sample_rate``."""

    samples: np.ndarray
    sample_rate: int
    duration: float | None
    notes: list[str] = field(default_factory=list)


def read_frames(path: str | os.PathLike, fps: float = 1.0, max_frames: int = 16, max_seconds: float = 600.0,
                short_side: int | None = 224) -> Frames:
    """Sample display-oriented RGB frames; ``short_side`` rescales (area filter) so the shorter side has that size."""
    if fps <= 0 or max_frames < 1 or max_seconds <= 0:
        raise ValueError("fps, max_frames and max_seconds must be positive")
    path = Path(path)
    with _open(path) as container:
        if not container.streams.video:
            raise DecodeError("no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        start = _stream_start(container, stream)
        duration = _duration(container, stream)
        notes: list[str] = []
        if duration is None:
            notes.append("duration unknown: sampled while decoding")
            picked = _sample_unknown_length(container, stream, start, fps, max_frames, max_seconds)
        else:
            span = duration
            if duration > max_seconds:
                notes.append(f"capped: used the first {max_seconds:g} s of {duration:.1f} s")
                span = max_seconds
            n = min(max_frames, max(1, math.floor(span * fps)))
            targets = [(k + 0.5) * span / n for k in range(n)]
            picked = _sample_targets(container, stream, start, targets, span, notes)
        if not picked:
            raise DecodeError("truncated / cannot decode: no video frame could be decoded")
        rotation = int(picked[0][1].rotation or 0) % 360
        if rotation % 90:
            notes.append(f"display rotation of {rotation} degrees is not a multiple of 90: not applied")
        images = _to_rgb([f for _, f in picked], short_side, rotation)
        return Frames(images=images, times=np.array([t for t, _ in picked], dtype=np.float64),
                      duration=duration, rotation=rotation, notes=notes)


def read_audio(path: str | os.PathLike, sample_rate: int = SAMPLE_RATE, max_seconds: float = 60.0) -> Audio:
    """The first audio stream, downmixed to mono and resampled; only the first ``max_seconds`` are kept."""
    if max_seconds <= 0:
        raise ValueError("max_seconds must be positive")
    path = Path(path)
    limit = int(round(max_seconds * sample_rate))
    with _open(path) as container:
        if not container.streams.audio:
            raise DecodeError("no audio stream")
        stream = container.streams.audio[0]
        duration = _duration(container, stream)
        resampler = av.AudioResampler(format="flt", layout="mono", rate=sample_rate)
        chunks: list[np.ndarray] = []
        have = 0
        notes: list[str] = []
        capped = False
        try:
            for frame in container.decode(stream):
                for out in resampler.resample(frame):
                    chunks.append(out.to_ndarray().reshape(-1))
                    have += chunks[-1].size
                if have >= limit:
                    capped = True
                    break
            else:
                for out in resampler.resample(None):
                    chunks.append(out.to_ndarray().reshape(-1))
                    have += chunks[-1].size
        except av.error.FFmpegError as e:
            if not have:
                raise DecodeError(f"truncated / cannot decode audio: {_ffmpeg_message(e)}") from e
            notes.append(f"audio decoding stopped early at {have / sample_rate:.1f} s ({_ffmpeg_message(e)}): truncated?")
    if not have:
        raise DecodeError("audio track is empty or cannot be decoded")
    samples = np.concatenate(chunks).astype(np.float32, copy=False)
    if capped or samples.size > limit:
        samples = samples[:limit]
        if duration is None or duration > max_seconds + 0.1:  # not for codec padding past the end
            total = f" of {duration:.1f} s" if duration else ""
            notes.append(f"capped: used the first {max_seconds:g} s{total}")
    elif duration is not None and samples.size / sample_rate < duration - END_SLACK_S:
        notes.append(f"audio stream ended at {samples.size / sample_rate:.1f} s of {duration:.1f} s: truncated?")
    return Audio(samples=np.ascontiguousarray(samples), sample_rate=sample_rate, duration=duration, notes=notes)


# -- opening and classifying failures ---------------------------------------------------------

_SIGNATURES: tuple[tuple[int, bytes, str], ...] = (
    (4, b"ftyp", "MP4/MOV"), (4, b"moov", "MP4/MOV"), (4, b"mdat", "MP4/MOV"), (4, b"free", "MP4/MOV"),
    (4, b"wide", "MP4/MOV"), (0, b"\x1a\x45\xdf\xa3", "Matroska/WebM"), (0, b"OggS", "Ogg"), (0, b"fLaC", "FLAC"),
    (0, b"ID3", "MP3"), (0, b"\x00\x00\x01\xba", "MPEG-PS"), (0, b"FLV", "FLV"),
    (0, b"\x30\x26\xb2\x75\x8e\x66\xcf\x11", "ASF/WMV"), (0, b"FORM", "AIFF"),
)


def sniff(head: bytes) -> str | None:
    """Name the container that ``head`` (the first bytes of a file) starts like, or None."""
    if head[:4] == b"RIFF":
        return {b"AVI ": "AVI", b"WAVE": "WAV"}.get(head[8:12], "RIFF")
    for offset, magic, name in _SIGNATURES:
        if head[offset:offset + len(magic)] == magic:
            return name
    if len(head) >= 2 and head[0] == 0xFF and (head[1] & 0xE0) == 0xE0:
        return "MPEG audio"
    return None


def _open(path: Path) -> av.container.InputContainer:
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(64)
    except FileNotFoundError as e:
        raise DecodeError("missing file") from e
    except IsADirectoryError as e:
        raise DecodeError("is a directory, not a file") from e
    except OSError as e:
        raise DecodeError(f"unreadable: {e.strerror or e}") from e
    if size == 0:
        raise DecodeError("empty file")
    try:
        return av.open(str(path), mode="r")
    except av.error.FFmpegError as e:
        kind = sniff(head)
        if kind is None:
            looks = "looks like text" if _is_text(head) else "unrecognised content"
            raise DecodeError(f"not a media file ({looks})") from e
        raise DecodeError(f"truncated or corrupt {kind} file (cannot parse container: {_ffmpeg_message(e)})") from e


def _is_text(head: bytes) -> bool:
    try:
        head.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return all(b >= 0x20 or b in b"\t\r\n" for b in head)


def _ffmpeg_message(e: av.error.FFmpegError) -> str:
    return getattr(e, "strerror", None) or str(e)


def _duration(container: av.container.InputContainer, stream: av.stream.Stream) -> float | None:
    if stream.duration is not None and stream.time_base is not None and stream.duration > 0:
        return float(stream.duration * stream.time_base)
    if container.duration is not None and container.duration > 0:
        return container.duration / av.time_base
    return None


def _stream_start(container: av.container.InputContainer, stream: av.stream.Stream) -> float:
    if stream.start_time is not None and stream.time_base is not None:
        return float(stream.start_time * stream.time_base)
    if container.start_time is not None:
        return container.start_time / av.time_base
    return 0.0


def _frame_time(frame: av.VideoFrame, start: float) -> float | None:
    return None if frame.time is None else frame.time - start


# -- frame sampling ---------------------------------------------------------------------------

def _sample_targets(container: av.container.InputContainer, stream: av.video.stream.VideoStream, start: float,
                    targets: list[float], span: float, notes: list[str]) -> list[tuple[float, av.VideoFrame]]:
    """For each target time, the frame displayed then; seeks across long gaps.

    ``span`` is the part of the clip in use: a stream that stops well before it is noted as truncated.
    """
    picked: list[tuple[float, av.VideoFrame]] = []
    frames = container.decode(stream)
    prev: av.VideoFrame | None = None
    prev_t = -math.inf
    seekable = True
    before_seek: float | None = None  # where decoding was when we last sought
    i = 0
    try:
        if targets[0] > SEEK_GAP_S:
            _seek(container, stream, start, targets[0])
            frames = container.decode(stream)
        while i < len(targets):
            if seekable and prev is not None and targets[i] - prev_t > SEEK_GAP_S:
                before_seek = prev_t
                _seek(container, stream, start, targets[i])
                frames = container.decode(stream)
                prev, prev_t = None, -math.inf
            frame = next(frames, None)
            if frame is None:
                if prev is not None and prev_t < span - END_SLACK_S:
                    notes.append(f"video stream ended at {prev_t:.1f} s of {span:.1f} s: truncated?")
                break
            t = _frame_time(frame, start)
            if t is None:
                t = prev_t + 1e-6 if prev is not None else 0.0
            if before_seek is not None:
                # Landing at or before where we were means key frames are too sparse to gain anything.
                seekable = t > before_seek
                before_seek = None
            while i < len(targets) and t > targets[i]:
                picked.append((targets[i], prev if prev is not None else frame))
                i += 1
            prev, prev_t = frame, t
    except av.error.FFmpegError as e:
        notes.append(f"video decoding stopped ({_ffmpeg_message(e)}): truncated?")
    # Targets after the last frame: that frame is still displayed, unless the stream ended early.
    while i < len(targets) and prev is not None and targets[i] <= prev_t + END_SLACK_S:
        picked.append((targets[i], prev))
        i += 1
    return picked


def _seek(container: av.container.InputContainer, stream: av.stream.Stream, start: float, target: float) -> None:
    try:
        container.seek(int((target + start) / stream.time_base), stream=stream, backward=True, any_frame=False)
    except av.error.FFmpegError:
        pass  # not seekable: decoding simply continues from where it is


def _sample_unknown_length(container: av.container.InputContainer, stream: av.video.stream.VideoStream, start: float,
                           fps: float, max_frames: int, max_seconds: float) -> list[tuple[float, av.VideoFrame]]:
    """One frame per 1/fps s while decoding; when more than 2·max_frames pile up, keep every other one.

    Keeps memory bounded and the kept frames evenly spread without knowing the length upfront.
    """
    kept: list[tuple[float, av.VideoFrame]] = []
    step = 1.0 / fps
    next_t = 0.5 * step
    try:
        for frame in container.decode(stream):
            t = _frame_time(frame, start)
            t = next_t if t is None else t
            if t > max_seconds:
                break
            if t >= next_t:
                kept.append((t, frame))
                next_t = t + step
                if len(kept) > 2 * max_frames:
                    kept = kept[::2]
                    step *= 2
    except av.error.FFmpegError:
        pass  # keep what decoded
    if len(kept) > max_frames:
        idx = np.linspace(0, len(kept) - 1, max_frames).round().astype(int)
        kept = [kept[j] for j in idx]
    return kept


def _to_rgb(frames: list[av.VideoFrame], short_side: int | None, rotation: int) -> np.ndarray:
    """Convert once per distinct frame, at one size for the whole clip, then undo the display rotation."""
    w0, h0 = frames[0].width, frames[0].height
    if short_side is not None:
        scale = short_side / min(w0, h0)
        w0, h0 = max(1, round(w0 * scale)), max(1, round(h0 * scale))
    cache: dict[int, np.ndarray] = {}
    out = []
    scaler = VideoReformatter()  # keeps its swscale context between frames: frame.reformat builds one per call (~7 ms)
    for f in frames:
        key = id(f)
        if key not in cache:
            img = scaler.reformat(f, width=w0, height=h0, format="rgb24", interpolation="AREA").to_ndarray()
            cache[key] = np.rot90(img, k=rotation // 90) if rotation % 90 == 0 and rotation else img
        out.append(cache[key])
    return np.ascontiguousarray(np.stack(out))
