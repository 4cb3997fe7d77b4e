"""Decode media with PyAV: sampled RGB frames and 16 kHz mono audio.

Files are opened only through :mod:`deccm.features.admit` (allow-listed demuxers forced by
name, stream metadata checked before decoding, a deadline and a frame budget on every
pass). Every problem a user can hit with a real file becomes a :class:`DecodeError` whose
message says what is wrong in words ("empty file", "no video stream", "not a media
file", "truncated or corrupt MP4/MOV file ..."), so a batch run can list it and go on.

Memory does not grow with the input's frame size: each sampled frame is converted to its
small RGB output as soon as it is picked, so at most a few full-size frames (the decoder's
own) are alive at once, and admission caps their size.

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

import av
import numpy as np
from av.video.reformatter import VideoReformatter

from deccm.features import admit
from deccm.features.admit import AUDIO_EXTENSIONS, VIDEO_EXTENSIONS, DecodeError, Limits

__all__ = ["AUDIO_EXTENSIONS", "VIDEO_EXTENSIONS", "Audio", "DecodeError", "Frames", "Limits", "Sampling", "read_audio", "read_frames",
           "read_samplings"]

SAMPLE_RATE = 16_000
# Targets further apart than this are reached by seeking instead of decoding every frame.
SEEK_GAP_S = 5.0
# A target this far past the last decodable frame means the stream ended early.
END_SLACK_S = 1.0


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


@dataclass(frozen=True)
class Sampling:
    """Frames per second to sample, at most how many (evenly spread over long clips), and their shorter side in pixels."""

    fps: float = 1.0
    max_frames: int = 16
    short_side: int | None = 224


def read_frames(path: str | os.PathLike, fps: float = 1.0, max_frames: int = 16, max_seconds: float = 600.0,
                short_side: int | None = 224, limits: Limits = admit.CLIP) -> Frames:
    """Sample display-oriented RGB frames; ``short_side`` rescales (area filter) so the shorter side has that size.

    ``limits`` is the admission rule the file must pass first (:mod:`deccm.features.admit`).
    """
    return read_samplings(path, [Sampling(fps, max_frames, short_side)], max_seconds, limits)[0]


def read_samplings(path: str | os.PathLike, samplings: list[Sampling], max_seconds: float = 600.0,
                   limits: Limits = admit.CLIP) -> list[Frames]:
    """Several samplings of one clip from one decoding pass: each exactly what :func:`read_frames` gives for it."""
    if not samplings or any(s.fps <= 0 or s.max_frames < 1 for s in samplings) or max_seconds <= 0:
        raise ValueError("fps, max_frames and max_seconds must be positive")
    with admit.open_media(path, "video", limits) as (container, info):
        stream = container.streams[info.video_stream]
        # One decoding thread: the demo runs two decodes at once on two cores and extraction one worker per core;
        # frame threads cost a 10 s 640x360 clip 0.31 CPU-s instead of 0.23 for the same frames.
        stream.codec_context.thread_count = 1
        start = _stream_start(container, stream)
        duration = _duration(container, stream)
        notes: list[str] = []
        rgbs = [_RGB(s.short_side) for s in samplings]
        if duration is None:
            notes.append("duration unknown: sampled while decoding")
            clock = admit.Clock(limits, limits.frame_budget(max_seconds))
            picks = _sample_unknown_length(container, stream, start, samplings, max_seconds, rgbs, clock)
        else:
            span = duration
            if duration > max_seconds:
                notes.append(f"capped: used the first {max_seconds:g} s of {duration:.1f} s")
                span = max_seconds
            targets = []
            for k, s in enumerate(samplings):
                n = min(s.max_frames, max(1, math.floor(span * s.fps)))
                targets += [((j + 0.5) * span / n, k) for j in range(n)]
            clock = admit.Clock(limits, limits.frame_budget(span))
            picks = _sample_targets(container, stream, start, sorted(targets), span, notes, rgbs, clock)
        if not all(picks):
            raise DecodeError("truncated / cannot decode: no video frame could be decoded")
        out = []
        for picked, rgb in zip(picks, rgbs):
            extra = [f"display rotation of {rgb.rotation} degrees is not a multiple of 90: not applied"] if rgb.rotation % 90 else []
            out.append(Frames(images=np.ascontiguousarray(np.stack([img for _, img in picked])),
                              times=np.array([t for t, _ in picked], dtype=np.float64),
                              duration=duration, rotation=rgb.rotation, notes=notes + extra))
        return out


def read_audio(path: str | os.PathLike, sample_rate: int = SAMPLE_RATE, max_seconds: float = 60.0,
               limits: Limits = admit.TRACK) -> Audio:
    """The first audio stream, downmixed to mono and resampled; only the first ``max_seconds`` are kept."""
    if max_seconds <= 0:
        raise ValueError("max_seconds must be positive")
    limit = int(round(max_seconds * sample_rate))
    with admit.open_media(path, "audio", limits) as (container, _):
        stream = container.streams.audio[0]
        duration = _duration(container, stream)
        resampler = av.AudioResampler(format="flt", layout="mono", rate=sample_rate)
        chunks: list[np.ndarray] = []
        have = 0
        notes: list[str] = []
        capped = False
        clock = admit.Clock(limits)
        try:
            for frame in container.decode(stream):
                clock.tick()
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
                raise DecodeError(f"truncated / cannot decode audio: {admit.ffmpeg_message(e)}") from e
            notes.append(f"audio decoding stopped early at {have / sample_rate:.1f} s ({admit.ffmpeg_message(e)}): truncated?")
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


# -- stream facts ---------------------------------------------------------------------------------

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

class _RGB:
    """Converts picked frames to RGB at one size for the whole clip (set by the first), then undoes the display rotation.

    Called as frames are picked, so only the small outputs are kept; a frame picked for
    several targets in a row is converted once.
    """

    def __init__(self, short_side: int | None):
        self.short_side = short_side
        self.size: tuple[int, int] | None = None
        self.rotation = 0
        self._scaler = VideoReformatter()  # keeps its swscale context between frames: frame.reformat builds one per call (~7 ms)
        self._last: tuple[av.VideoFrame, np.ndarray] | None = None

    def __call__(self, frame: av.VideoFrame) -> np.ndarray:
        if self._last is not None and self._last[0] is frame:
            return self._last[1]
        if self.size is None:
            w, h = frame.width, frame.height
            if self.short_side is not None:
                scale = self.short_side / min(w, h)
                w, h = max(1, round(w * scale)), max(1, round(h * scale))
            self.size = (w, h)
            self.rotation = int(frame.rotation or 0) % 360
        w, h = self.size
        img = self._scaler.reformat(frame, width=w, height=h, format="rgb24", interpolation="AREA").to_ndarray()
        if self.rotation % 90 == 0 and self.rotation:
            img = np.rot90(img, k=self.rotation // 90)
        self._last = (frame, img)
        return img


def _sample_targets(container: av.container.InputContainer, stream: av.video.stream.VideoStream, start: float,
                    targets: list[tuple[float, int]], span: float, notes: list[str], rgbs: list[_RGB],
                    clock: admit.Clock) -> list[list[tuple[float, np.ndarray]]]:
    """For each (time, sampling) target in time order, the frame displayed then, as that sampling's ``rgbs[k]`` makes it;
    seeks across long gaps.

    ``span`` is the part of the clip in use: a stream that stops well before it is noted as truncated.
    """
    picked: list[list[tuple[float, np.ndarray]]] = [[] for _ in rgbs]
    frames = container.decode(stream)
    prev: av.VideoFrame | None = None
    prev_t = -math.inf
    seekable = True
    before_seek: float | None = None  # where decoding was when we last sought
    i = 0

    def pick(frame: av.VideoFrame) -> None:
        nonlocal i
        t, k = targets[i]
        picked[k].append((t, rgbs[k](frame)))
        i += 1

    try:
        if targets[0][0] > SEEK_GAP_S:
            _seek(container, stream, start, targets[0][0])
            frames = container.decode(stream)
        while i < len(targets):
            if seekable and prev is not None and targets[i][0] - prev_t > SEEK_GAP_S:
                before_seek = prev_t
                _seek(container, stream, start, targets[i][0])
                frames = container.decode(stream)
                prev, prev_t = None, -math.inf
            frame = next(frames, None)
            if frame is None:
                if prev is not None and prev_t < span - END_SLACK_S:
                    notes.append(f"video stream ended at {prev_t:.1f} s of {span:.1f} s: truncated?")
                break
            clock.tick()
            t = _frame_time(frame, start)
            if t is None:
                t = prev_t + 1e-6 if prev is not None else 0.0
            if before_seek is not None:
                # Landing at or before where we were means key frames are too sparse to gain anything.
                seekable = t > before_seek
                before_seek = None
            while i < len(targets) and t > targets[i][0]:
                pick(prev if prev is not None else frame)
            prev, prev_t = frame, t
    except av.error.FFmpegError as e:
        notes.append(f"video decoding stopped ({admit.ffmpeg_message(e)}): truncated?")
    # Targets after the last frame: that frame is still displayed, unless the stream ended early.
    while i < len(targets) and prev is not None and targets[i][0] <= prev_t + END_SLACK_S:
        pick(prev)
    return picked


def _seek(container: av.container.InputContainer, stream: av.stream.Stream, start: float, target: float) -> None:
    try:
        container.seek(int((target + start) / stream.time_base), stream=stream, backward=True, any_frame=False)
    except av.error.FFmpegError:
        pass  # not seekable: decoding simply continues from where it is


class _Thinning:
    """One frame per 1/fps s while decoding; when more than 2·max_frames pile up, keep every other one.

    Keeps memory bounded and the kept frames evenly spread without knowing the length upfront.
    """

    def __init__(self, sampling: Sampling, rgb: _RGB):
        self.max_frames, self.rgb = sampling.max_frames, rgb
        self.step = 1.0 / sampling.fps
        self.next_t = 0.5 * self.step
        self.kept: list[tuple[float, np.ndarray]] = []

    def offer(self, t: float | None, frame: av.VideoFrame) -> None:
        t = self.next_t if t is None else t
        if t >= self.next_t:
            self.kept.append((t, self.rgb(frame)))
            self.next_t = t + self.step
            if len(self.kept) > 2 * self.max_frames:
                self.kept = self.kept[::2]
                self.step *= 2

    def result(self) -> list[tuple[float, np.ndarray]]:
        if len(self.kept) <= self.max_frames:
            return self.kept
        idx = np.linspace(0, len(self.kept) - 1, self.max_frames).round().astype(int)
        return [self.kept[j] for j in idx]


def _sample_unknown_length(container: av.container.InputContainer, stream: av.video.stream.VideoStream, start: float,
                           samplings: list[Sampling], max_seconds: float, rgbs: list[_RGB],
                           clock: admit.Clock) -> list[list[tuple[float, np.ndarray]]]:
    """Each sampling's frames of a clip whose length is not stated (:class:`_Thinning`), in one pass."""
    thins = [_Thinning(s, rgb) for s, rgb in zip(samplings, rgbs)]
    try:
        for frame in container.decode(stream):
            clock.tick()
            t = _frame_time(frame, start)
            live = [thin for thin in thins if (thin.next_t if t is None else t) <= max_seconds]
            if not live:
                break
            for thin in live:
                thin.offer(t, frame)
    except av.error.FFmpegError:
        pass  # keep what decoded
    return [thin.result() for thin in thins]
