"""One admission rule for media: what deccm opens, how it opens it, and for how long.

Every path that opens a clip or a track goes through here: the decoder
(``decode.read_frames`` / ``read_audio``, so feature extraction in the CLI and the DAG,
``deccm recommend`` and the demo) and every ffmpeg subprocess (the demo's trim and
preview). The rule (docs/architecture.md, "Media admission"):

1. **The content names the format, never FFmpeg's probe.** The first bytes must match one
   demuxer of an allow-list (:data:`VIDEO_DEMUXERS`, :data:`AUDIO_DEMUXERS`); the file is
   then opened with that demuxer forced by name, through the ``file`` protocol only.
   Playlists (HLS), concat lists, image sequences, lavfi graphs, network protocols and
   still images never reach a demuxer that could follow them, whatever the extension.
2. **Stream metadata is checked before any frame is decoded** (:class:`Limits`): pixels
   per frame, aspect ratio, smallest side, nominal frame rate, frame count, duration,
   number of streams; the decoder itself refuses frames above the pixel cap
   (``max_pixels``), so a stream that changes size mid-way cannot grow past it.
3. **Decoding has a deadline** (:func:`budget`, :func:`check_time`) and a frame budget,
   and every ffmpeg subprocess a timeout (:func:`run_ffmpeg`).

A file that breaks the rule raises :class:`DecodeError` whose message says what is wrong
and what is accepted; callers prefix the file name.
"""
from __future__ import annotations

import contextlib
import contextvars
import math
import os
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av


class DecodeError(Exception):
    """A file that cannot be used; ``str(err)`` is the reason shown to the user."""


# demuxer name (as FFmpeg's ``-f`` takes it) -> what a person calls it
VIDEO_DEMUXERS = {"mov": "MP4/MOV", "matroska": "Matroska/WebM", "avi": "AVI", "mpegts": "MPEG-TS"}
AUDIO_DEMUXERS = {"wav": "WAV", "mp3": "MP3", "flac": "FLAC", "ogg": "Ogg (Vorbis/Opus)", "aac": "AAC (ADTS)",
                  "aiff": "AIFF", "mov": "M4A/MP4", "matroska": "Matroska/WebM audio"}
# suffixes the batch extractor lists in a folder; the content still decides
VIDEO_EXTENSIONS = frozenset({".mp4", ".m4v", ".mov", ".3gp", ".webm", ".mkv", ".avi", ".ts", ".mts", ".m2ts"})
AUDIO_EXTENSIONS = frozenset({".wav", ".mp3", ".flac", ".ogg", ".oga", ".opus", ".m4a", ".aac", ".aif", ".aiff", ".mka"})

HEAD_BYTES = 1024  # enough for every signature below (MPEG-TS needs three 204-byte packets)


@dataclass(frozen=True)
class Limits:
    """What a file may declare before anything is decoded, and how long decoding may take.

    The defaults are for feature extraction and ``deccm recommend``; the demo uses
    :data:`UPLOAD`, which is tighter on length and time.
    """

    max_pixels: int = 4096 * 2160  # DCI 4K
    max_aspect: float = 4.0  # long side / short side
    min_side: int = 16
    max_fps: float = 240.0  # nominal frame rate
    max_seconds: float = 3600.0  # stated duration
    max_frames: int = 3600 * 60  # stated (or duration x rate) frame count
    max_streams: int = 16
    max_sample_rate: int = 384_000
    max_channels: int = 32
    budget_s: float = 120.0  # one decode call, when no tighter deadline is set (:func:`budget`)
    open_timeout_s: float = 10.0  # opening the container and reading its stream headers

    def frame_budget(self, span: float) -> int:
        """Most frames one pass over ``span`` seconds may decode: the rate cap over the span, plus seek slack."""
        return int(math.ceil(self.max_fps * (max(span, 0.0) + 10.0))) + 256


CLIP = Limits()
UPLOAD = Limits(max_seconds=600.0, max_frames=600 * 60, budget_s=4.0, open_timeout_s=2.0)
TRACK = Limits(max_seconds=4 * 3600.0)


@dataclass(frozen=True)
class MediaInfo:
    """What an admitted file declares (before decoding)."""

    path: Path
    demuxer: str  # forced by name when the file is opened again
    duration: float | None  # seconds, None when the container does not say
    width: int | None = None
    height: int | None = None
    fps: float | None = None
    frames: int | None = None  # stated, or duration x rate; None when unknown
    has_audio: bool = False
    video_stream: int | None = None  # index of the video stream in use (never a cover picture); ffmpeg's -map 0:<index>

    def ffmpeg_input(self) -> list[str]:
        """Arguments that make an ffmpeg subprocess open this file exactly as deccm did: demuxer and protocol forced."""
        return ["-protocol_whitelist", "file", "-f", self.demuxer, "-i", f"file:{self.path}"]


# -- what the content is --------------------------------------------------------------------------

def _is_text(head: bytes) -> bool:
    try:
        head.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return all(b >= 0x20 or b in b"\t\r\n" for b in head)


def _ts_sync(head: bytes) -> bool:
    """MPEG-TS: a sync byte 0x47 every 188 (or 192 / 204) bytes, three packets in a row."""
    for size, offset in ((188, 0), (192, 4), (204, 0)):
        if len(head) >= offset + 2 * size + 1 and all(head[offset + k * size] == 0x47 for k in range(3)):
            return True
    return False


def sniff(head: bytes) -> tuple[str | None, str]:
    """(allowed demuxer or None, what the content looks like) for the first bytes of a file."""
    if head[:4] == b"RIFF":
        kind = head[8:12]
        return {b"AVI ": ("avi", "AVI"), b"WAVE": ("wav", "WAV"), b"WEBP": (None, "a WebP image")}.get(kind, (None, "a RIFF file"))
    if head[4:8] in (b"ftyp", b"moov", b"mdat", b"free", b"wide", b"skip", b"pnot"):
        return "mov", "MP4/MOV"
    if head[:4] == b"\x1a\x45\xdf\xa3":
        return "matroska", "Matroska/WebM"
    if head[:4] == b"OggS":
        return "ogg", "Ogg"
    if head[:4] == b"fLaC":
        return "flac", "FLAC"
    if head[:3] == b"ID3":
        return "mp3", "MP3"
    if head[:4] == b"FORM" and head[8:12] in (b"AIFF", b"AIFC"):
        return "aiff", "AIFF"
    if _ts_sync(head):
        return "mpegts", "MPEG-TS"
    if len(head) >= 2 and head[0] == 0xFF and (head[1] & 0xE0) == 0xE0:
        # MPEG audio frame sync: layer bits 00 is AAC in ADTS, anything else MP1/2/3
        return ("aac", "AAC (ADTS)") if head[1] & 0x06 == 0 else ("mp3", "MPEG audio")
    for magic, what in ((b"\x89PNG", "a PNG image"), (b"\xff\xd8\xff", "a JPEG image"), (b"GIF8", "a GIF image"),
                        (b"BM", "a BMP image"), (b"II*\x00", "a TIFF image"), (b"MM\x00*", "a TIFF image"),
                        (b"\x00\x00\x01\xba", "an MPEG program stream"), (b"\x00\x00\x01\xb3", "an MPEG video elementary stream"),
                        (b"FLV", "an FLV file"), (b"\x30\x26\xb2\x75\x8e\x66\xcf\x11", "an ASF/WMV file"),
                        (b"PK\x03\x04", "a zip archive"), (b"%PDF", "a PDF document")):
        if head.startswith(magic):
            return None, what
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n")
    if text.startswith(b"#EXTM3U") or b"#EXT-X-" in head:
        return None, "an HLS playlist (.m3u8)"
    if text.startswith(b"ffconcat"):
        return None, "an ffconcat list"
    if _is_text(head[:256]):
        return None, "text"
    return None, "unrecognised content"


def accepted(kind: str) -> str:
    """The accepted formats of ``kind`` in words, for messages."""
    names = VIDEO_DEMUXERS if kind == "video" else AUDIO_DEMUXERS
    return ", ".join(dict.fromkeys(names.values()))


def _read_head(path: Path) -> bytes:
    try:
        if not path.exists():
            raise DecodeError("missing file")
        if path.is_dir():
            raise DecodeError("is a directory, not a file")
        if not path.is_file():
            raise DecodeError("not a regular file (a device, pipe or socket)")
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(HEAD_BYTES)
    except OSError as e:
        raise DecodeError(f"unreadable: {e.strerror or e}") from e
    if size == 0:
        raise DecodeError("empty file")
    return head


def ffmpeg_message(e: av.error.FFmpegError) -> str:
    """FFmpeg's reason in words."""
    return getattr(e, "strerror", None) or str(e)


# -- opening and checking ---------------------------------------------------------------------------

@contextlib.contextmanager
def open_media(path: str | os.PathLike, kind: str = "video", limits: Limits = CLIP) -> Iterator[tuple[Any, MediaInfo]]:
    """The opened container and what it declares, if ``path`` passes the rule for ``kind`` ("video" or "audio").

    For "audio", any container of either list is accepted when it has an audio stream
    (music extraction reads a video's soundtrack). Raises :class:`DecodeError` otherwise;
    nothing has been decoded when it does (FFmpeg's stream probe runs under the pixel cap and
    the open timeout).
    """
    if kind not in ("video", "audio"):
        raise ValueError(f"kind must be video or audio, got {kind!r}")
    path = Path(os.path.abspath(path))
    head = _read_head(path)
    demuxer, looks = sniff(head)
    allowed = VIDEO_DEMUXERS if kind == "video" else {**VIDEO_DEMUXERS, **AUDIO_DEMUXERS}
    if demuxer not in allowed:
        if demuxer in AUDIO_DEMUXERS:
            raise DecodeError(f"no video stream ({looks} audio; accepted video: {accepted(kind)})")
        if looks == "text":
            raise DecodeError("not a media file (looks like text)")
        if looks == "unrecognised content":
            raise DecodeError(f"not a media file (unrecognised content; accepted: {accepted(kind)})")
        if looks.endswith("image"):
            raise DecodeError(f"{looks} (a still image; accepted: {accepted(kind)})")
        raise DecodeError(f"{looks}, not an accepted format (accepted: {accepted(kind)})")
    pixels = str(limits.max_pixels)
    try:
        container = av.open(f"file:{path}", mode="r", format=demuxer,
                            # max_streams: probing sets up a decoder per stream (991 AAC streams in a 9 MB file took
                            # 0.5 s and 700 MB), so the demuxer stops one past the cap and _check refuses the file
                            options={"protocol_whitelist": "file", "max_pixels": pixels, "enable_drefs": "0",
                                     "max_streams": str(limits.max_streams + 1)},
                            metadata_errors="replace",  # a tag that is not UTF-8 must not stop the file
                            timeout=(min(limits.open_timeout_s, max(time_left(), 0.05)), None))
    except av.error.MemoryError as e:  # what MP4/MOV answers past max_streams
        raise DecodeError(f"more than {limits.max_streams} streams, or a {looks} file that asks for more memory than an "
                          f"upload may take (at most {limits.max_streams} streams are accepted; {ffmpeg_message(e)})") from e
    except av.error.FFmpegError as e:
        raise DecodeError(f"truncated or corrupt {looks} file (cannot parse container: {ffmpeg_message(e)})") from e
    try:
        info = _check(container, path, demuxer, kind, limits)
        yield container, info
    finally:
        container.close()


def check(path: str | os.PathLike, kind: str = "video", limits: Limits = CLIP) -> MediaInfo:
    """What ``path`` declares if it passes the rule (:func:`open_media`); opens and closes it, decodes nothing."""
    with open_media(path, kind, limits) as (_, info):
        return info


def _check(container: Any, path: Path, demuxer: str, kind: str, limits: Limits) -> MediaInfo:
    if len(container.streams) > limits.max_streams:  # the demuxer keeps at most one more (max_streams at open)
        raise DecodeError(f"more than {limits.max_streams} streams (at most {limits.max_streams} are accepted)")
    duration = _duration(container)
    if duration is not None and duration > limits.max_seconds:
        raise DecodeError(f"{_clock(duration)} long: at most {_clock(limits.max_seconds)} is accepted")
    has_audio = bool(container.streams.audio)
    if kind == "audio":
        if not has_audio:
            raise DecodeError("no audio stream")
        a = container.streams.audio[0]
        if (a.rate or 0) > limits.max_sample_rate or (a.channels or 0) > limits.max_channels:
            raise DecodeError(f"audio of {a.rate} Hz x {a.channels} channels: at most {limits.max_sample_rate} Hz "
                              f"and {limits.max_channels} channels are accepted")
        if not a.rate or not a.channels:
            raise DecodeError("the audio stream states no sample rate or channels: truncated or corrupt?")
        return MediaInfo(path, demuxer, duration, has_audio=True)
    moving = [s for s in container.streams.video if not s.disposition & _NOT_MOVING]
    if not moving:
        raise DecodeError("no video stream (only a cover picture)" if container.streams.video else "no video stream")
    v = moving[0]
    w, h = int(v.codec_context.width or 0), int(v.codec_context.height or 0)
    if not w or not h:
        raise DecodeError("the video stream states no frame size: truncated or corrupt?")
    if min(w, h) < limits.min_side:
        raise DecodeError(f"frames of {w}x{h} pixels: the shorter side must be at least {limits.min_side}")
    if w * h > limits.max_pixels:
        raise DecodeError(f"frames of {w}x{h} pixels: at most {limits.max_pixels / 1e6:.1f} megapixels (4K) are accepted")
    if max(w, h) > limits.max_aspect * min(w, h):
        raise DecodeError(f"frames of {w}x{h} pixels: an aspect ratio beyond {limits.max_aspect:g}:1 is not accepted")
    fps = max((float(r) for r in (v.average_rate, v.guessed_rate, v.base_rate) if r), default=None)
    if fps is not None and fps > limits.max_fps:
        raise DecodeError(f"{fps:g} frames per second: at most {limits.max_fps:g} are accepted")
    frames = int(v.frames) if v.frames else (int(round(duration * fps)) if duration and fps else None)
    if frames is not None and frames > limits.max_frames:
        raise DecodeError(f"{frames} frames: at most {limits.max_frames} are accepted")
    v.codec_context.options = {"max_pixels": str(limits.max_pixels)}  # frames past the cap never decode, even mid-stream
    return MediaInfo(path, demuxer, duration, w, h, fps, frames, has_audio, v.index)


# video streams that are pictures, not motion: album art in an M4A, a still or a thumbnail track
_NOT_MOVING = av.stream.Disposition.attached_pic | av.stream.Disposition.still_image | av.stream.Disposition.timed_thumbnails


def _duration(container: Any) -> float | None:
    """The longest length the container or any stream states (a short container length cannot hide a long stream)."""
    spans = [float(s.duration * s.time_base) for s in container.streams if s.duration and s.time_base and s.duration > 0]
    if container.duration is not None and container.duration > 0:
        spans.append(container.duration / av.time_base)
    return max(spans) if spans else None


def _clock(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.1f} s"
    m, s = divmod(int(round(seconds)), 60)
    return f"{m // 60} h {m % 60:02d} min" if m >= 60 else f"{m} min {s:02d} s"


# -- deadlines ------------------------------------------------------------------------------------

_DEADLINE: contextvars.ContextVar[float | None] = contextvars.ContextVar("deccm_decode_deadline", default=None)


@contextlib.contextmanager
def budget(seconds: float) -> Iterator[None]:
    """Every decode in this block (this thread or task) ends by ``seconds`` from now; nested budgets keep the earlier end."""
    end = time.monotonic() + seconds
    outer = _DEADLINE.get()
    token = _DEADLINE.set(end if outer is None else min(outer, end))
    try:
        yield
    finally:
        _DEADLINE.reset(token)


def time_left() -> float:
    """Seconds left under the innermost :func:`budget`, or infinity outside any."""
    end = _DEADLINE.get()
    return math.inf if end is None else end - time.monotonic()


class Clock:
    """One decode pass: stops it when the innermost :func:`budget` or the pass's own ``limits.budget_s`` runs out,
    or when it has decoded more frames than ``max_frames``."""

    def __init__(self, limits: Limits, max_frames: int | None = None):
        self.end = time.monotonic() + min(limits.budget_s, time_left())
        self.budget_s = limits.budget_s
        self.max_frames = max_frames
        self.frames = 0

    def tick(self) -> None:
        """Count one decoded frame; raise :class:`DecodeError` past the deadline or the frame budget."""
        self.frames += 1
        if self.max_frames is not None and self.frames > self.max_frames:
            raise DecodeError(f"more than {self.max_frames} frames decoded for the part in use: the stream holds far more "
                              "frames than its stated rate allows")
        if time.monotonic() > self.end:
            raise DecodeError("decoding took longer than its time budget: upload a shorter or smaller clip")


# -- subprocesses ---------------------------------------------------------------------------------

FFMPEG_TIMEOUT_S = 120.0


def run_ffmpeg(args: list[str], *, timeout: float = FFMPEG_TIMEOUT_S, input: bytes | None = None) -> None:
    """Run imageio-ffmpeg's binary quietly with a timeout; raise :class:`DecodeError` with its last error line.

    Inputs from outside must come from :meth:`MediaInfo.ffmpeg_input` (demuxer and protocol forced).
    """
    import imageio_ffmpeg

    timeout = max(0.5, min(timeout, time_left()))
    cmd = [imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-nostdin", "-y", *args]
    try:
        proc = subprocess.run(cmd, input=input, capture_output=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise DecodeError(f"ffmpeg took longer than its {timeout:.0f} s limit") from None
    if proc.returncode != 0:
        err = proc.stderr.decode(errors="replace").strip()
        raise DecodeError(f"ffmpeg failed: {err.splitlines()[-1] if err else 'no reason given'}")
